"""The pooled HTTP session a provider sends through, and the one call that sends.

``new_session()`` builds one ``requests`` session per provider, its adapter
keeping connections open for reuse; ``send_json()`` posts a request body on it
and returns once the response's headers are in, leaving the body to read
(``body.py``).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import ssl
from typing import Any

import requests
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from .pool import POOL_CLASSES
from .tls import verifying_context

USER_AGENT = "streamchat/1.0"


class StreamedResponse(requests.Response):
    """A ``requests.Response`` without a cookie jar and history list of its own, as long as its stream lasts.

    ``Response()`` makes an empty cookie jar (its policy, its lock) and lists for each response: 1.5 KB an open
    stream keeps to its end. Only a ``Session`` ever writes to them (its cookies, its redirects), and
    ``send_json`` sends through the adapter alone: every response shares one empty jar, read-only in effect.
    """

    _NO_COOKIES = requests.cookies.RequestsCookieJar()

    def __init__(self) -> None:  # requests.Response.__init__'s attributes, the two shared
        self._content = False
        self._content_consumed = False
        self._next = None
        self.status_code = None  # type: ignore[assignment]
        self.raw = None
        self.url = None  # type: ignore[assignment]
        self.encoding = None
        self.history = ()  # type: ignore[assignment]
        self.reason = None  # type: ignore[assignment]
        self.cookies = self._NO_COOKIES
        self.elapsed = _NO_TIME
        self.request = None  # type: ignore[assignment]


_NO_TIME = datetime.timedelta(0)


class StreamingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, building each response without its cookies, a second copy of its headers or its request.

    ``build_response`` is the hook requests documents for subclasses. Its own parses the upstream's
    ``Set-Cookie`` headers into the response's jar, copies every header into a new dict and keeps the
    request sent, and an open stream keeps all three to its end: with OpenAI's ~25 response headers, 500
    streams took 6 KB more each, and the request (its headers) another 1.2 KB (measured). urllib3's headers
    are already case-insensitive, upstream cookies are never used (``send_json``), and nothing reads
    ``response.request``. The response itself is a ``StreamedResponse``, with no jar of its own.
    """

    def __init__(self, tls_context: ssl.SSLContext, **kwargs: Any):
        self.tls_context = tls_context  # before HTTPAdapter.__init__, which makes the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        # A documented hook: every pool, hence every connection, wraps its socket with the one context.
        super().init_poolmanager(connections, maxsize, block, ssl_context=self.tls_context, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A documented hook: through HTTPS_PROXY too, connections share the context and peek to check liveness.
        fresh = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, ssl_context=self.tls_context, **proxy_kwargs)
        if fresh and not proxy.lower().startswith("socks"):  # SOCKS managers bring pools of their own
            manager.pool_classes_by_scheme = POOL_CLASSES
        return manager

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # A documented hook. requests' own names the CA bundle on the pool, and urllib3 would load it into
        # the shared context again on every new connection: the context already trusts it.
        super().cert_verify(conn, url, verify, cert)
        conn.ca_certs = conn.ca_cert_dir = None

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = StreamedResponse()
        response.status_code = resp.status
        response.reason = resp.reason
        response.headers = resp.headers
        response.raw = resp
        response.url = req.url
        response.connection = self
        return response


def new_session(pool_size: int, base_url: str) -> requests.Session:
    """Return a session that keeps up to ``pool_size`` connections per host open for reuse.

    The environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``...) and CA
    bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are resolved for
    ``base_url`` once, here: ``send_json`` sends through the session's
    adapter, which reads them from the session. The bundle (certifi's
    without them) is loaded once, into the adapter's TLS context.
    """
    session = requests.Session()
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH
    adapter = StreamingAdapter(verifying_context(ca_bundle), pool_connections=4, pool_maxsize=pool_size,
                               max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = POOL_CLASSES
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.proxies = requests.utils.get_environ_proxies(base_url)
    session.verify = True  # against the context's bundle: a path here would reach urllib3 and be loaded again
    session.trust_env = False
    return session


@functools.lru_cache(maxsize=16)
def _prepared_head(url: str, headers: tuple[tuple[str, str], ...]) -> requests.PreparedRequest:
    # A provider's URL and headers never change: parse and check them once (see send_json).
    request = requests.PreparedRequest()
    request.prepare_method("POST")
    request.prepare_url(url, None)
    request.prepare_headers(dict(headers))
    return request


def json_body(body: dict[str, Any]) -> bytes:
    """Return ``body`` as compact UTF-8 JSON, as the providers' own SDKs send it (httpx).

    ``requests``' ``json=`` escapes every non-ASCII character as ``\\uXXXX``: six
    bytes for a character that UTF-8 sends in two or three, on every request of
    a conversation in French, Russian or Japanese.
    """
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def send_json(session: requests.Session, url: str, headers: dict[str, str], body: dict[str, Any],
              timeout: tuple[float, float]) -> requests.Response:
    """POST ``body`` as JSON and return the response once its headers are in; the body is left to read.

    This is ``session.post(url, data=json_body(body), stream=True)`` without the
    work that would be done again on every call for nothing (a fifth of a chat
    request's CPU): merging the environment, re-parsing the constant URL and
    headers, and the session's cookie jar. No cookies are kept or sent, so one
    user's upstream cookies never ride on another user's request.
    """
    request = _prepared_head(url, tuple({"Accept": "text/event-stream", "Accept-Encoding": "identity",
                                         "Content-Type": "application/json", "User-Agent": USER_AGENT,
                                         **headers}.items())).copy()
    request.prepare_body(data=json_body(body), files=None)
    return session.get_adapter(url).send(request, stream=True, timeout=timeout, verify=session.verify,
                                         cert=session.cert, proxies=session.proxies)
