"""The OpenAI-compatible API: ``POST /v1/chat/completions`` and ``GET /v1/models``, for site owners' backends.

The same engine as ``/api/chat`` (the reply path in ``opening``: the relay, its
provider chain, breaker and rules, the budgets and the access log) behind a
second wire format: the parser ``openai_request`` and the framers
``framing.openai_sse``. Off unless ``SERVICE_API_KEYS`` is set: until then every route
answers 404, so the service never becomes an open proxy to a paid model. A
request needs ``Authorization: Bearer <a service key>``; each key is its own
client for ``API_RATE_LIMIT`` and the budgets, and ``user`` in the body, when
sent, is the end user for the per-client budget. Errors come in OpenAI's shape
(``errors.error_response`` sees the ``/v1/`` path), so the SDKs raise their own
exception classes.
"""

from __future__ import annotations

import json

from flask import Blueprint, g, jsonify, request

from ...domain.providers.base import Options
from ...domain.validation import InvalidRequest, json_body
from ..framing import openai_sse
from ..framing.openai_sse import RULES_MODEL, chunks, completion, new_completion_id
from ..guards.api_keys import key_id
from ..guards.limits import limit_api
from ..guards.request_body import request_body_within
from ..opening import ChatRequest, chat_limits, open_reply
from ..service import service
from .openai_request import parse_completion_request

bp = Blueprint("openai", __name__, url_prefix="/v1")

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
    payload = json_body(request_body_within(service().settings.client_timeout), request.content_type,
                        wrong_type_status=400)
    parsed = parse_completion_request(payload, chat_limits())
    opened = open_reply(ChatRequest(
        parsed.messages,
        # The budgets' client: the key, or the key's end user when the request names one.
        client=f"{g.service_key}:{parsed.user}" if parsed.user else g.service_key,
        options=Options(max_tokens=parsed.max_tokens, temperature=parsed.temperature),
        service_key=g.service_key, model=parsed.model, rules_requested=parsed.model == RULES_MODEL, api="v1",
        fresh=wants_fresh_answer(request.headers.get("Cache-Control"))))
    completion_id = new_completion_id()
    if parsed.stream:
        return opened.stream(lambda reply: chunks(reply, completion_id, parsed.include_usage), openai_sse.CONTENT_TYPE)
    return opened.whole(lambda reply, texts: json.dumps(completion(reply, completion_id, texts)), "application/json")


def wants_fresh_answer(cache_control: str | None) -> bool:
    """Whether the client asked for a new answer (``Cache-Control: no-cache`` or ``no-store``), not a cached one."""
    directives = {part.strip().split("=", 1)[0].lower() for part in (cache_control or "").split(",")}
    return bool(directives & {"no-cache", "no-store"})


@bp.get("/models")
def models():
    """List the configured models, then the rules responder, in OpenAI's list shape."""
    chain = service().relay.chain
    data = [{"id": p.model, "object": "model", "created": 0, "owned_by": p.name} for p in chain]
    data.append({"id": RULES_MODEL, "object": "model", "created": 0, "owned_by": "streamchat"})
    return jsonify({"object": "list", "data": data})

