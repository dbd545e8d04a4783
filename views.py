"""The chat blueprint: the page, the streaming chat endpoint and the health check."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, stream_with_context
from werkzeug.exceptions import RequestEntityTooLarge

from protection import limit_chat, storage_health
from streamchat.disconnect import ClientTimeout, read_body_within, watch_client
from streamchat.validation import InvalidRequest, Limits, parse_chat_request

bp = Blueprint("chat", __name__)

STREAM_HEADERS = {
    "Cache-Control": "no-store",
    # nginx and other proxies must pass each chunk on at once, and never compress it.
    "X-Accel-Buffering": "no",
    "Content-Encoding": "identity",
}


class StreamingResponse(Response):
    """A response whose body generator the WSGI server iterates itself, with nothing in between.

    werkzeug hands a server the body through ``ClosingIterator`` and a generator that
    encodes ``str`` items: for a body that is bytes already, two more Python layers per
    chunk, and two more C frames in the stack gevent saves for every open stream
    (5,720 -> 4,632 bytes a stream, measured). ``direct_passthrough`` makes werkzeug
    give the body itself, but then nothing would call the response's ``close()``, which
    closes the body and runs the ``call_on_close`` callbacks (the access log): the
    server gets the body for ``iter()`` and the response's ``close()`` for closing.
    The body must yield bytes: nothing encodes ``str`` items on the way any more.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, direct_passthrough=True, **kwargs)

    def get_app_iter(self, environ):
        app_iter = super().get_app_iter(environ)
        if app_iter is self.response:  # the body itself: there is one to send (not HEAD, 204, 304)
            return _UnwrappedBody(iter(app_iter), self.close)
        return app_iter  # werkzeug's empty body, which closes the response


class _UnwrappedBody:
    """A WSGI iterable: ``__iter__`` returns the body's own iterator; ``close`` is the response's."""

    __slots__ = ("_iterator", "close")

    def __init__(self, iterator, close):
        self._iterator = iterator
        self.close = close

    def __iter__(self):
        return self._iterator


def service():
    return current_app.extensions["streamchat"]


@bp.get("/")
def index():
    """Serve the chat page, with the conversation limits it must keep to."""
    settings = service().settings
    return render_template("index.html", max_messages=settings.chat_max_messages, max_chars=settings.chat_max_chars)


@bp.post("/api/chat")
@limit_chat
def chat():
    """Stream the assistant's reply to the conversation in the request body."""
    svc = service()
    settings = svc.settings
    # No name keeps the body once it is parsed: while the first token is awaited, a stream holds the
    # conversation once, not also as the JSON it came in (up to six bytes a character: "\u00e9").
    messages = parse_chat_request(_request_body_within(settings.client_timeout), request.content_type,
                                  Limits(settings.chat_max_messages, settings.chat_max_chars))
    g.user_text = messages[-1]["content"]
    watch = watch_client(request.environ)
    try:
        reply = svc.relay.open(messages, watch, live_denied=svc.budget.live_denied())
    except BaseException:
        watch.stop()  # no body will stop it: the watcher must not outlive this request on a kept-alive socket
        raise
    g.stats = stats = reply.stats  # the access log reads it when the stream closes
    response = StreamingResponse(stream_with_context(reply.body()), content_type="text/plain; charset=utf-8",
                                 headers=STREAM_HEADERS)
    response.headers["X-Terminal-Mode"] = stats.mode
    response.headers["X-Terminal-Provider"] = stats.provider
    if stats.model:
        response.headers["X-Terminal-Model"] = stats.model
    if stats.mode == "fallback":
        response.headers["X-Terminal-Reason"] = stats.reason
    return response


def _request_body_within(seconds: float) -> bytes:
    try:
        return read_body_within(request.environ, _request_body, seconds)
    except ClientTimeout:
        raise InvalidRequest(408, "request_timeout", f"The request body did not arrive within {seconds:g} s.") from None


def _request_body() -> bytes:
    body = request.get_data(cache=False)
    # A chunked body has no Content-Length: werkzeug stops reading it at MAX_CONTENT_LENGTH without a word,
    # and the cut JSON would be reported as malformed. One more byte on the wire means it was too large.
    if request.content_length is None and len(body) >= current_app.config["MAX_CONTENT_LENGTH"]:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return body


@bp.get("/healthz")
def healthz():
    """Report whether the service is up and which providers and rules it uses (never a key)."""
    svc = service()
    rules = svc.relay.rules
    loaded = rules.current() is not None  # also picks up an edit made since the last request
    body = {
        "status": "ok",
        "providers": [{"name": p.name, "model": p.model, "base_url": p.base_url} for p in svc.relay.chain],
        "cooling_down": svc.relay.breaker.state(),
        "open_streams": svc.relay.open_streams.count,
        "rules": {"path": rules.path, "loaded": loaded,
                  "error": [str(p) for p in rules.error.problems] if rules.error else None},
    }
    body["rate_limit"] = storage_health()
    if rules.error or not body["rate_limit"]["healthy"]:
        body["status"] = "degraded"
    return jsonify(body)


@bp.errorhandler(InvalidRequest)
def invalid_request(error: InvalidRequest):
    return jsonify({"error": {"code": error.code, "message": error.message}}), error.status
