"""The Vercel AI SDK's chat request body (``useChat``), as the conversation the service answers.

The SDK's transports POST ``{id, messages, trigger, messageId, ...}``, where each
message is a UI message, ``{id, role, parts: [...]}``, and the app may add fields
of its own through the transport's ``body`` option (ignored here). What each kind
of part becomes:

- ``text``: the message's content (several text parts joined by a blank line);
- ``reasoning``, ``step-start``, ``source-url``, ``source-document`` and ``data-*``:
  only presentation: ignored (an assistant message with nothing else is skipped);
- ``file``, ``tool-*``, ``dynamic-tool`` and any other kind: the service cannot
  honour them, a 400 ``unsupported_part`` naming the part.

``trigger: "regenerate-message"`` answers the conversation before the assistant
message ``messageId`` names again. The SDK's ``regenerate()`` sends the conversation
already cut before that message, so a ``messageId`` not among the messages means
"as sent"; with none, a conversation ending with an assistant message is answered
without it.

``messages_of_ui_body()`` returns plain ``{role, content}`` messages, which
``validation.parse_chat_request`` checks like any others (limits, roles, the last
message the user's). Pure: no Flask.
"""

from __future__ import annotations

from typing import Any

from .validation import InvalidRequest

#: Parts that only present something in the page: no content for the model.
PRESENTATION_PARTS = ("reasoning", "step-start", "source-url", "source-document")
TRIGGERS = ("submit-message", "regenerate-message")
TEXT_PARTS_JOINED_BY = "\n\n"


def is_ui_body(payload: dict[str, Any]) -> bool:
    """Whether a chat body is the SDK's (a ``trigger``, a chat ``id``, or messages made of parts)."""
    messages = payload.get("messages")
    return ("trigger" in payload or "id" in payload
            or (isinstance(messages, list) and any(isinstance(m, dict) and "parts" in m for m in messages)))


def messages_of_ui_body(payload: dict[str, Any]) -> list[Any]:
    """Return the SDK body's conversation as ``{role, content}`` messages (unchecked beyond the parts)."""
    trigger = payload.get("trigger", "submit-message")
    if trigger not in TRIGGERS:
        raise InvalidRequest(400, "invalid_trigger", f"trigger must be one of {', '.join(TRIGGERS)} (got {trigger!r}).")
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest(400, "invalid_messages", "'messages' must be a list of UI messages {id, role, parts}.")
    if trigger == "regenerate-message":
        messages = _before_regenerated(messages, payload.get("messageId"))
    converted = []
    for index, message in enumerate(messages):
        plain = _plain(index, message)
        if plain is not None:
            converted.append(plain)
    return converted


def _before_regenerated(messages: list[Any], message_id: Any) -> list[Any]:
    """The messages before the assistant message to answer again."""
    def assistant(message: Any) -> bool:
        return isinstance(message, dict) and message.get("role") == "assistant"

    if message_id is not None:
        named = [i for i, m in enumerate(messages) if assistant(m) and m.get("id") == message_id]
        return messages[:named[0]] if named else messages  # not there: the SDK cut the conversation already
    return messages[:-1] if messages and assistant(messages[-1]) else messages


def _plain(index: int, message: Any) -> dict[str, Any] | None:
    """A UI message as ``{role, content}``; None for an assistant message with no text (reasoning only)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict) or "parts" not in message:
        return message  # the plain shape: validation checks it
    parts = message["parts"]
    if not isinstance(parts, list):
        raise InvalidRequest(400, "invalid_message", f"{where}.parts must be a list of parts.")
    texts = []
    for number, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(400, "invalid_content", f"{where}.parts[{number}].text must be a string.")
            texts.append(text)
        elif kind in PRESENTATION_PARTS or (isinstance(kind, str) and kind.startswith("data-")):
            continue
        else:
            raise InvalidRequest(400, "unsupported_part",
                                 f"{where}.parts[{number}] is a {kind!r} part: this service answers text only "
                                 "(no files, images or tool calls).")
    role = message.get("role")
    if not texts and role == "assistant":
        return None
    return {"role": role, "content": TEXT_PARTS_JOINED_BY.join(texts)}
