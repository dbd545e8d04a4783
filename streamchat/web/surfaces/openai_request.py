"""The OpenAI chat-completions request, parsed: the parser in front of the ``/v1`` reply path.

``parse_completion_request()`` accepts what the official SDKs send and turns
anything the service cannot honour (tools, several choices, a JSON response
format, images or audio, log probabilities, sampling knobs it does not pass on)
into a 400 naming the field, never a silent difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...domain.validation import InvalidRequest, Limits, sent_chars

#: Accepted and without effect on the reply (bookkeeping the SDKs and frameworks send).
IGNORED_FIELDS = {"metadata", "store", "service_tier", "seed", "prompt_cache_key", "safety_identifier",
                  "parallel_tool_calls", "modalities"}
#: Accepted only at the value that asks for nothing: anything else changes the reply in a way not offered here.
ONLY_DEFAULT = {"n": (1, None), "logprobs": (False, None), "top_logprobs": (0, None), "top_p": (1, 1.0, None),
                "frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "stop": (None, []),
                "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []),
                "tool_choice": (None, "none"), "function_call": (None, "none")}
KNOWN_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                "temperature", "user", "response_format"} | IGNORED_FIELDS | set(ONLY_DEFAULT)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class CompletionRequest:
    messages: list[dict[str, str]]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float | None
    user: str | None


def bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(400, code, message, param)


def parse_completion_request(payload: Any, limits: Limits) -> CompletionRequest:
    """Return the request, or raise ``InvalidRequest`` (400, with the field at fault) for the first problem."""
    if not isinstance(payload, dict):
        raise bad("The body must be a JSON object.", None, "invalid_body")
    unknown = sorted(set(payload) - KNOWN_FIELDS)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    for field, allowed in ONLY_DEFAULT.items():
        if field in payload and payload[field] not in allowed:
            raise bad(f"'{field}' is not supported by this service: leave it out.", field, "unsupported_parameter")
    response_format = payload.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise bad("Only the text response format is supported here.", "response_format", "unsupported_parameter")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad("'model' is required: a configured model, or any name to use the configured chain.", "model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad("'stream' must be true or false.", "stream")
    options = payload.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}
                                or not isinstance(options.get("include_usage", False), bool)):
        raise bad("'stream_options' may only hold include_usage (true or false).", "stream_options")
    if options is not None and not stream:
        raise bad("'stream_options' is only allowed with \"stream\": true.", "stream_options")
    return CompletionRequest(
        messages=_messages(payload.get("messages"), limits), model=model.strip(), stream=bool(stream),
        include_usage=bool(options and options.get("include_usage")), max_tokens=_max_tokens(payload),
        temperature=_temperature(payload.get("temperature")), user=_user(payload.get("user")))


def _max_tokens(payload: dict) -> int | None:
    chosen = None
    for field in ("max_completion_tokens", "max_tokens"):
        value = payload.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(f"'{field}' must be a positive whole number.", field)
        chosen = value if chosen is None else min(chosen, value)
    return chosen


def _temperature(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 2:
        raise bad("'temperature' must be a number from 0 to 2.", "temperature")
    return float(value)


def _user(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise bad("'user' must be a string of at most 256 characters.", "user")
    return value


def _messages(messages: Any, limits: Limits) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of messages.", "messages")
    if len(messages) > limits.max_messages:
        raise bad(f"The conversation has {len(messages)} messages; the limit is {limits.max_messages}.", "messages",
                  "too_many_messages")
    clean = [_message(index, message) for index, message in enumerate(messages)]
    total = sent_chars(clean)
    if total > limits.max_chars:
        raise bad(f"The conversation has {total} characters; the limit is {limits.max_chars}.", "messages",
                  "too_many_characters")
    if clean[-1]["role"] != "user":
        raise bad("The last message must be the user's.", f"messages[{len(clean) - 1}]", "last_message_not_user")
    return clean


def _message(index: int, message: Any) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(f"{where} must be an object with 'role' and 'content'.", where)
    role = message.get("role")
    if role == "tool" or message.get("tool_calls") or message.get("function_call"):
        raise bad(f"{where}: tool calls are not supported by this service.", where, "unsupported_parameter")
    if role not in ROLES:
        raise bad(f"{where}: role must be system, developer, user or assistant (got {role!r}).", f"{where}.role")
    extra = sorted(set(message) - {"role", "content", "name"})
    if extra:
        raise bad(f"{where} has an unsupported field {extra[0]!r}.", f"{where}.{extra[0]}", "unsupported_parameter")
    content = _content(message.get("content"), f"{where}.content")
    if not content.strip():
        raise bad(f"{where}: content must not be empty.", f"{where}.content")
    if "\x00" in content:
        raise bad(f"{where}: content must not contain NUL characters.", f"{where}.content")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(f"{where}: content holds an unpaired surrogate.", f"{where}.content") from None
    return {"role": ROLES[role], "content": content}


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or a list of text parts.", where)
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise bad(f"{where}[{index}]: only text parts are supported here (got {kind!r}).", f"{where}[{index}]",
                      "unsupported_content")
        if not isinstance(part.get("text"), str):
            raise bad(f"{where}[{index}].text must be a string.", f"{where}[{index}].text")
        texts.append(part["text"])
    return "".join(texts)
