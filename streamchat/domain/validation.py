"""Check a chat request body before anything streams.

``parse_chat_request()`` turns the raw body into a clean list of messages
or raises ``InvalidRequest`` with the HTTP status, a stable error code for
programs and a sentence for people. It takes the service's own body,
``{"messages": [{role, content}]}``, and the AI SDK's ``useChat`` body of UI
messages (``ui_messages``). Pure: no Flask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

ROLES = ("user", "assistant")
#: Joins consecutive messages of one role for APIs that want roles to alternate (Anthropic's). The
#: characters it adds count toward CHAT_MAX_CHARS, so the limit holds for what is actually sent.
SAME_ROLE_SEPARATOR = "\n\n"


class InvalidRequest(ValueError):
    """The request cannot be answered as sent; ``status``, ``code`` and message say why."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param  # the request field at fault, when one is (OpenAI's errors name it)


@dataclass(frozen=True)
class Limits:
    max_messages: int
    max_chars: int


def json_body(body: bytes, content_type: str | None, wrong_type_status: int = 415) -> Any:
    """Return the JSON in a request body, or raise InvalidRequest: not JSON, not UTF-8, nested too deeply.

    ``wrong_type_status``: the status for a Content-Type that is not JSON (the OpenAI-compatible API
    answers 400 there, which its SDKs expect).
    """
    mimetype = (content_type or "").split(";")[0].strip().lower()
    if mimetype != "application/json":
        raise InvalidRequest(wrong_type_status, "unsupported_media_type",
                             f"Send the request as JSON with Content-Type: application/json "
                             f"(got {mimetype or 'no content type'}).")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise InvalidRequest(400, "invalid_json", "The body is not valid UTF-8.") from None
    except RecursionError:
        raise InvalidRequest(400, "invalid_json", "The JSON is nested too deeply.") from None
    except ValueError as exc:
        raise InvalidRequest(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None


#: A chat id the service keeps (the AI SDK's are 16 characters of [A-Za-z0-9_-]): it names a record in Redis.
CHAT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class ChatBody:
    """A chat request's conversation, and the AI SDK's chat id when it sent one."""

    messages: list[dict[str, str]]
    chat_id: str | None = None


def parse_chat_request(body: bytes, content_type: str | None, limits: Limits) -> list[dict[str, str]]:
    """Return the conversation's messages, or raise InvalidRequest naming the first problem."""
    return parse_chat_body(body, content_type, limits).messages


def parse_chat_body(body: bytes, content_type: str | None, limits: Limits) -> ChatBody:
    """Return the conversation and its chat id, or raise InvalidRequest naming the first problem."""
    payload = json_body(body, content_type)
    if not isinstance(payload, dict):
        raise InvalidRequest(400, "invalid_body", 'The body must be a JSON object like {"messages": [...]}.')
    from .ui_messages import is_ui_body, messages_of_ui_body  # here: ui_messages raises this module's errors

    chat_id = None
    if is_ui_body(payload):  # the AI SDK's: its fields and the app's own extra ones are no error
        messages = messages_of_ui_body(payload)
        chat_id = payload.get("id")
        if chat_id is not None and not (isinstance(chat_id, str) and CHAT_ID.fullmatch(chat_id)):
            raise InvalidRequest(400, "invalid_chat_id", "id (the chat's) must be 1 to 128 characters of letters, "
                                                         "digits and . _ : -.")
    else:
        unknown = sorted(set(payload) - {"messages"})
        if unknown:
            raise InvalidRequest(400, "unknown_field", f"Unknown field {unknown[0]!r}: only 'messages' is accepted.")
        messages = payload.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest(400, "invalid_messages", "'messages' must be a list of {role, content} objects.")
    if not messages:
        raise InvalidRequest(400, "empty_conversation", "'messages' must hold at least one message.")
    if len(messages) > limits.max_messages:
        raise InvalidRequest(400, "too_many_messages",
                             f"The conversation has {len(messages)} messages; the limit is {limits.max_messages}.")
    clean = [_message(index, message) for index, message in enumerate(messages)]
    total = sent_chars(clean)
    if total > limits.max_chars:
        raise InvalidRequest(400, "too_many_characters",
                             f"The conversation has {total} characters (with two for each break between "
                             f"consecutive messages of one role); the limit is {limits.max_chars}.")
    if clean[-1]["role"] != "user":
        raise InvalidRequest(400, "last_message_not_user", "The last message must be the user's.")
    return ChatBody(clean, chat_id)


def parse_rating(body: bytes, content_type: str | None) -> str:
    """Return a reply's rating from ``{"rating": "up"|"down"}``, or raise InvalidRequest."""
    payload = json_body(body, content_type)
    rating = payload.get("rating") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or set(payload) != {"rating"} or rating not in ("up", "down"):
        raise InvalidRequest(400, "invalid_rating", 'The body must be {"rating": "up"} or {"rating": "down"}.')
    return rating


def sent_chars(messages: list[dict[str, str]]) -> int:
    """Return the characters the conversation may take upstream: its messages, and the separators that
    join consecutive messages of one role."""
    joins = sum(1 for before, after in zip(messages, messages[1:]) if before["role"] == after["role"])
    return sum(len(m["content"]) for m in messages) + joins * len(SAME_ROLE_SEPARATOR)


def _message(index: int, message: Any) -> dict[str, str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(400, "invalid_message", f"{where} must be an object with 'role' and 'content'.")
    extra = sorted(set(message) - {"role", "content"})
    if extra:
        raise InvalidRequest(400, "invalid_message", f"{where} has an unknown field {extra[0]!r}.")
    role = message.get("role")
    if role == "system":
        raise InvalidRequest(400, "system_role_forbidden",
                             f"{where}: the system prompt is set by the server; clients cannot send one.")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(400, "unknown_role", f"{where}: role must be 'user' or 'assistant' (got {role!r}).")
    content = message.get("content")
    if not isinstance(content, str):
        raise InvalidRequest(400, "invalid_content", f"{where}: content must be a string.")
    if not content.strip():
        raise InvalidRequest(400, "empty_content", f"{where}: content must not be empty.")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(400, "invalid_content", f"{where}: content holds an unpaired surrogate.") from None
    if "\x00" in content:
        raise InvalidRequest(400, "invalid_content", f"{where}: content must not contain NUL characters.")
    return {"role": role, "content": content}
