"""The TLS context every upstream connection of a provider shares: certificates checked, sessions resumed.

``verifying_context(ca_bundle)`` makes it once per provider. It checks
certificates and host names exactly as urllib3's own context does, and adds
one thing: a new connection to a host offers the TLS session of an earlier
connection to that host (a TLS 1.3 ticket, or a TLS 1.2 ticket or session id),
so that the server may resume it instead of doing a full handshake. A full
handshake costs the worker a certificate chain check and a signature check; a
burst of new streams did one per connection (``bench/run --only tls``).

Resuming never weakens the checks: a session is only ever the result of a
handshake that passed them, it is offered only to the host name it was made
with, and a server that does not know it answers with a full handshake, which
is checked as any other. Sessions come from responses, not handshakes: with
TLS 1.3 the server sends its tickets after the handshake, and the client has
them once it has read the response's headers (``pool.HTTPSConnection``).
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import sys
import time
from typing import Any

import urllib3.util.ssl_

log = logging.getLogger("streamchat")


@functools.cache
def _resuming_class(base: type[ssl.SSLContext]) -> type[ssl.SSLContext]:
    # Built on the class urllib3 instantiates: under gevent that is gevent's cooperative SSLContext,
    # patched in before urllib3 was imported, and elsewhere the standard one.
    class ResumingContext(base):  # type: ignore[valid-type, misc]
        """An SSLContext that offers each host the last resumable session it had with it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()
            self.sessions: dict[str | None, ssl.SSLSession] = {}

        def wrap_socket(self, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                        suppress_ragged_eofs: bool = True, server_hostname: str | None = None,
                        session: ssl.SSLSession | None = None) -> Any:
            if session is None and not server_side:
                session = self.sessions.get(server_hostname)
            return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                       suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                       session=session)

        def remember(self, tls_socket: Any) -> None:
            """Keep ``tls_socket``'s session for the next connection to its host, if the server made it resumable.

            Reading a socket's session is dear (for TLS 1.3 CPython copies it, certificates and all, through
            its serialized form: 0.2 ms), so a resumed connection leaves the kept session in place until it
            is half way through the lifetime the server gave it.
            """
            host = getattr(tls_socket, "server_hostname", None)
            kept = self.sessions.get(host)
            if kept is not None and tls_socket.session_reused and time.time() < kept.time + kept.timeout / 2:
                return
            session = getattr(tls_socket, "session", None)  # None through a TLS-in-TLS proxy tunnel
            if session is not None and (session.has_ticket or session.id):
                self.sessions[host] = session

    return ResumingContext


def verifying_context(ca_bundle: str) -> ssl.SSLContext:
    """Return the TLS context every upstream connection of a session shares, trusting ``ca_bundle``.

    The context urllib3 would make itself, made once: given none, urllib3 makes a context for each new
    connection and loads the CA bundle into it. With certifi's bundle that is 40 ms of CPU and 0.7 MB a
    connection (measured), and under gevent those 40 ms stop every stream of the worker: 1,000 streams
    starting against an HTTPS upstream cost 55.6 s of CPU instead of 14.5 (``bench/run --only tls``).
    """
    context = _resuming_class(urllib3.util.ssl_.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
    # urllib3's settings (create_urllib3_context; tests/test_tls_resumption.py compares the two) but one:
    # urllib3 sets OP_NO_TICKET, which stops a TLS 1.2 server from giving the client a ticket to resume with.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_COMPRESSION
    context.options &= ~ssl.OP_NO_TICKET
    if sys.version_info >= (3, 13):
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    context.post_handshake_auth = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.hostname_checks_common_name = False
    if os.environ.get("SSLKEYLOGFILE"):  # as urllib3: lets Wireshark read the streams when debugging
        context.keylog_filename = os.path.expandvars(os.environ["SSLKEYLOGFILE"])
    try:
        if os.path.isdir(ca_bundle):
            context.load_verify_locations(capath=ca_bundle)
        else:
            context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        # Never down: the context trusts nothing, every HTTPS upstream fails over to the rules, and this says why.
        log.error("the CA bundle %s could not be loaded (%s): HTTPS upstreams will fail", ca_bundle, exc)
    return context
