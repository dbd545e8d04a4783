"""Warm connections: an idle connection ready for each upstream, so a quiet site's next visitor skips the handshake.

Providers close a keep-alive connection left idle for about a minute, so on a
quiet site every visitor's request found its pooled connection closed and paid
a TCP and TLS handshake (one to three round trips) before the model saw the
question. Here each worker looks at every upstream's pool every ``every``
seconds: if no idle connection went back to the pool within the last ``every``
seconds and is still open, it opens one (TCP and TLS, nothing sent) and puts
it in the pool, where the next request finds it. An idle connection is thus
never older than twice ``every`` when it is used, younger than providers keep
them, and an idle site costs one handshake per upstream per ``every`` seconds.

Bounded: at most one handshake per upstream per round; only into a free slot
of the pool (the slot a request would take); none while ``may_open()`` says
no (the upstream cools down, or the worker drains). A busy site's pool always
holds a fresh connection, and the rounds open nothing. No request is sent, so
nothing is logged or counted as one and no token is spent.

This reaches into urllib3's pool (``HTTPConnectionPool.pool``, the queue of
idle connections and free slots; ``_new_conn``; ``_get_conn`` and
``_put_conn``, the calls a request makes to take and give back a slot;
``_prepare_proxy``): see the package's list.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests

log = logging.getLogger("streamchat")


@dataclass(frozen=True)
class WarmTarget:
    """An upstream to keep a connection ready for: its name, the session it sends through, and its URL."""

    name: str
    session: requests.Session
    url: str
    may_open: Callable[[], bool] = lambda: True  # False: open nothing now (cooling down, draining)


class WarmConnections:
    """Keeps an idle connection ready in each target's pool; ``start()`` runs the rounds in the background."""

    def __init__(self, targets: list[WarmTarget], every: float, connect_timeout: float):
        self.targets = targets
        self.every = every
        self.connect_timeout = connect_timeout
        self.observers: list[Callable[[str, str], None]] = []  # each told (upstream, "opened" or "failed")

    def start(self) -> None:
        """Run a round now and then every ``every`` seconds, in a daemon thread (a greenlet under gevent)."""
        if self.targets and self.every > 0:
            threading.Thread(target=self._rounds, name="streamchat-warm", daemon=True).start()

    def _rounds(self) -> None:
        while True:
            for target in self.targets:
                try:
                    result = self.tend(target)
                    if result in ("opened", "failed"):
                        for observer in self.observers:
                            observer(target.name, result)
                except Exception:  # a round must never end the rounds
                    log.exception("warm connections: %s", target.name)
            time.sleep(self.every)

    def tend(self, target: WarmTarget) -> str:
        """Open a connection for ``target`` if it has none ready; say what was done (``ready``, ``opened``...)."""
        if not target.may_open():
            return "held"
        pool = _pool_for(target.session, target.url)
        queue = pool.pool
        if queue is None:
            return "closed"
        now = time.monotonic()
        idle = [conn for conn in list(queue.queue) if conn is not None and conn.sock is not None]
        if any(now - conn.idle_since < self.every and conn.is_connected for conn in idle):
            return "ready"
        if queue.empty():
            return "full"  # every slot carries a stream: the first to end gives its connection back
        conn = pool._new_conn()
        conn.timeout = self.connect_timeout
        try:
            if getattr(pool, "proxy", None) is not None and pool.scheme == "https":
                pool._prepare_proxy(conn)  # the CONNECT tunnel, then TLS through it, as a request would
            else:
                conn.connect()
        except Exception as exc:  # refused, timed out, a certificate not trusted...: the next round tries again
            conn.close()
            log.debug("warm connections: could not open one to %s: %s", target.name, exc)
            return "failed"
        # Only now, ready, does it take a slot: the idle connection it replaces (closed), or a free one. Taken
        # before the handshake, the pool's one idle connection would be missing for a request meanwhile.
        if queue.empty():
            conn.close()
            return "full"
        replaced = pool._get_conn(timeout=0)  # no switch to another greenlet between this and the next line
        pool._put_conn(conn)
        replaced.close()  # an old idle connection, or an unopened one standing for a free slot
        return "opened"


def _pool_for(session: requests.Session, url: str) -> Any:
    """The urllib3 pool a request to ``url`` on ``session`` goes through (proxy settings included)."""
    request = requests.Request("POST", url).prepare()
    adapter = session.get_adapter(url)
    return adapter.get_connection_with_tls_context(request, verify=session.verify, proxies=session.proxies,
                                                   cert=session.cert)
