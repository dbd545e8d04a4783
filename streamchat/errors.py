"""Why a reply did not come, or stopped: the error tree every layer speaks.

Every failure of an upstream model is one of these, raised by the providers
and mapped from ``requests``/``urllib3`` exceptions in exactly one place
(``streamchat.transport.failures.translate_errors``)::

    ProviderError                  any failure; ``reason`` is the X-Terminal-Reason
    ├── ProviderUnavailable        worth retrying later: the circuit breaker skips the provider a while
    │   ├── RateLimited            429; ``retry_after`` in seconds when the provider said
    │   ├── UpstreamTimeout        connect timeout, no first text in time, silence, maximum duration
    │   ├── UpstreamUnreachable    connection refused, DNS failure, connection dropped
    │   └── UpstreamServerError    500/502/503/529, or an error event inside the stream
    ├── ProviderRejected           our request or key is wrong (400/401/403/404/413, or an in-stream
    │                              error about this request): log loudly, never cool the provider down
    ├── BadStream                  a body that is not the SSE we expected, or that ends with no text
    └── FollowedReplyBroke         the identical question's reply this one followed (the reply cache's
                                   join) ended cut short or stopped, or its producer died

    ClientDisconnected             not the provider's failure: the client went away (thrown into the
                                   request's greenlet by ``streamchat.server.disconnect``)
    ReplyStopped                   nobody's failure: someone asked to stop the reply (the stop endpoint)
    ServiceRestarting              nobody's failure: the worker is shutting down and its drain time is up
                                   (``streamchat.server.drain``); the reply is cut short with a notice
    HedgeLost                      nobody's failure: the other upstream of a hedged pair wrote first
                                   (``streamchat.domain.hedging``); this one's request is closed

The view never shows these to the user: before the first byte it tries the
next provider and then the rules responder; after it, the body ends with a
short notice. Anything else a provider raises is a bug: the relay treats it
the same way (reason ``internal_error``) and logs its traceback.
"""

from __future__ import annotations


class ProviderError(Exception):
    """A provider failed; ``reason`` is the short slug sent as X-Terminal-Reason."""

    reason = "upstream_error"

    def __init__(self, message: str, *, provider: str = "", status: int | None = None):
        super().__init__(message)
        self.provider = provider
        self.status = status


class ProviderUnavailable(ProviderError):
    """The provider cannot answer now; skip it for a cool-down."""

    #: Seconds the circuit breaker should skip the provider, when known.
    retry_after: float | None = None


class RateLimited(ProviderUnavailable):
    """The provider answered 429."""

    reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class UpstreamTimeout(ProviderUnavailable):
    """No connection, no first text, or no next chunk within its deadline."""

    reason = "timeout"


class UpstreamUnreachable(ProviderUnavailable):
    """The connection was refused, the name did not resolve, or the connection dropped."""


class UpstreamServerError(ProviderUnavailable):
    """A 5xx/529 answer, or an error event inside a 200 stream."""


class ProviderRejected(ProviderError):
    """The provider refused our request: a bad key (401/403) or a bad request (400/404/413)."""

    def __init__(self, message: str, **kwargs):
        super().__init__(message, **kwargs)
        if self.status in (401, 403):
            self.reason = "auth_rejected"


class ClientDisconnected(Exception):
    """The client closed its connection before the reply was complete."""


class ReplyStopped(Exception):
    """The reply was asked to stop (``POST /api/chat/streams/<id>/stop``): it ends here, cleanly."""


class ServiceRestarting(Exception):
    """The worker is restarting and the reply ran past its drain time: it is cut short here, with a notice."""


class HedgeLost(Exception):
    """Another upstream answered this reply first (a hedged first token): this upstream's request is closed."""


class BadStream(ProviderError):
    """The body was not the stream the protocol promises, or it ended before any text."""

    reason = "bad_stream"


class FollowedReplyBroke(ProviderError):
    """The reply this one followed (an identical question in flight) ended before its end."""
