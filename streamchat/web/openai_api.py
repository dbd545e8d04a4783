"""The OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``, for site owners' backends.

The same engine as ``/api/chat`` (the relay, its provider chain, breaker and
rules, the budgets and the access log) behind a second wire format
(``openai_wire``). Off unless ``SERVICE_API_KEYS`` is set: then every route
answers 404, so the service never becomes an open proxy to a paid model. A
request needs ``Authorization: Bearer <a service key>``; each key is its own
client for ``API_RATE_LIMIT`` and the budgets, and ``user`` in the body, when
sent, is the end user for the per-client budget. Errors come in OpenAI's shape
(``errors.error_response`` sees the ``/v1/`` path), so the SDKs raise their own
exception classes.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, g, jsonify, request

from ..domain.providers.base import Options
from ..domain.relay import ReplyRecord
from ..domain.validation import InvalidRequest, Limits, json_body
from ..server.disconnect import watch_client
from .access import request_started, request_tags
from .api_keys import key_id
from .limits import limit_api, release_tokens, reserve_tokens
from .openai_wire import RULES_MODEL, chunks, completion, new_completion_id, parse_completion_request
from .request_body import request_body_within
from .service import service
from .streaming import drainable, reply_headers, reply_response

bp = Blueprint("openai", __name__, url_prefix="/v1")

#: The X-Terminal-Reason of a reply the rules wrote because the request asked for the "rules" model.
RULES_REQUESTED = "requested"


@bp.before_request
def _authenticate():
    settings = service().settings
    if not settings.service_api_keys:
        raise InvalidRequest(404, "not_found", "Not found: this service's API is off (SERVICE_API_KEYS is not set).")
    key = key_id(request.headers.get("Authorization"), settings.service_api_keys)
    if key is None:
        raise InvalidRequest(401, "invalid_api_key", "Incorrect API key provided: send Authorization: Bearer "
                                                     "<one of this service's keys>.")
    g.service_key = key  # its id, a digest: never the key itself


@bp.post("/chat/completions")
@limit_api
def chat_completions():
    """Answer a chat completion, streamed or whole, from the first provider that can, else from the rules."""
    svc = service()
    settings = svc.settings
    payload = json_body(request_body_within(settings.client_timeout), request.content_type, wrong_type_status=400)
    parsed = parse_completion_request(payload, Limits(settings.chat_max_messages, settings.chat_max_chars))
    # The budgets' client: the key, or the key's end user when the request names one.
    g.client = f"{g.service_key}:{parsed.user}" if parsed.user else g.service_key
    record = ReplyRecord(started=request_started(),
                         tags=request_tags(parsed.messages[-1]["content"] if settings.log_user_text else None))
    record.tags["service_key"] = g.service_key
    live_denied = RULES_REQUESTED if parsed.model == RULES_MODEL else svc.budget.live_denied()
    live_denied = reserve_tokens(svc.tokens, record, parsed.messages, settings, parsed.max_tokens,
                                 live_possible=live_denied is None and bool(svc.relay.chain)) or live_denied
    prefer = next((p.name for p in svc.relay.chain if parsed.model in (p.model, p.name)), None)
    options = Options(max_tokens=parsed.max_tokens, temperature=parsed.temperature)
    watch = watch_client(request.environ)
    try:
        reply = svc.relay.open(parsed.messages, on_close=watch.stop, live_denied=live_denied, record=record,
                               options=options, prefer=prefer)
    except BaseException:
        release_tokens(svc.tokens, record)
        raise
    g.reply_record = record  # logged by its listener when the reply closes
    completion_id = new_completion_id()
    if parsed.stream:
        return reply_response(reply, lambda r: chunks(r, completion_id, parsed.include_usage),
                              "text/event-stream; charset=utf-8")
    try:
        # Read here, in the request: a restart's drain must be able to end it as it ends a stream.
        body = completion(reply, completion_id, drainable(reply.text(), record))
    finally:
        reply.close()
    return Response(json.dumps(body), content_type="application/json", headers=reply_headers(reply))


@bp.get("/models")
def models():
    """List the configured models, then the rules responder, in OpenAI's list shape."""
    chain = service().relay.chain
    data = [{"id": p.model, "object": "model", "created": 0, "owned_by": p.name} for p in chain]
    data.append({"id": RULES_MODEL, "object": "model", "created": 0, "owned_by": "streamchat"})
    return jsonify({"object": "list", "data": data})

