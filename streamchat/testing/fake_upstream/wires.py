"""The fake upstream's wire formats: one class per protocol, each the JSON of its events and errors."""

from __future__ import annotations

import json
from typing import Any


class Wire:
    """The events of one protocol: a preamble, one event per token, the ending, errors and a JSON reply."""

    protocol: str

    def __init__(self, model: str, prompt_tokens: int = 1, include_usage: bool = True):
        self.model = model
        self.prompt_tokens = prompt_tokens  # what the usage events report as the input
        self.include_usage = include_usage  # OpenAI sends its usage chunk only when asked

    def preamble(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def token(self, text: str) -> tuple[str, Any]:
        raise NotImplementedError

    def ending(self, done: bool, sent: int = 1) -> list[tuple[str, Any]]:
        """The events after the last token (``sent`` of them, the usage's output); ``done``: with the end marker."""
        raise NotImplementedError

    def stream_error(self) -> list[tuple[str, Any]]:
        """The events of an error inside a 200 stream."""
        raise NotImplementedError

    def error_body(self, status: int, message: str = "") -> dict[str, Any]:
        """The JSON of an HTTP error answer; ``message`` defaults to ``fake {status}``."""
        raise NotImplementedError

    def json_reply(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def error_type(status: int) -> str:
        return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")


class OpenAIWire(Wire):
    """OpenAI chat completions: ``data: {chat.completion.chunk}`` events, then ``data: [DONE]``."""

    protocol = "openai"

    def preamble(self):
        # The content-filter chunk with no choices is what Azure sends first.
        return [("", {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                      "model": self.model, "choices": [], "prompt_filter_results": []}),
                ("", self._chunk({"role": "assistant", "content": ""}))]

    def token(self, text):
        return ("", self._chunk({"content": text}))

    def ending(self, done, sent=1):
        events = [("", {**self._chunk({}), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})]
        if self.include_usage:
            events.append(("", {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": sent,
                                          "total_tokens": self.prompt_tokens + sent}}))
        return events + ([("", "[DONE]")] if done else [])

    def stream_error(self):
        return [("", {"error": {"message": "The server had an error while processing your request.",
                                "type": "server_error", "code": None}}),
                ("", "[DONE]")]

    def error_body(self, status, message=""):
        return {"error": {"message": message or f"fake {status}", "type": self.error_type(status), "code": None}}

    def json_reply(self, text):
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}]}

    def _chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


class AnthropicWire(Wire):
    """Anthropic Messages: named events from ``message_start`` to ``message_stop``, with pings."""

    protocol = "anthropic"

    def preamble(self):
        return [("message_start", {"type": "message_start", "message": {
                    "id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": None,
                    "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("ping", {"type": "ping"})]

    def token(self, text):
        return ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": text}})

    def ending(self, done, sent=1):
        events = [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                  ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": sent}})]
        return events + ([("message_stop", {"type": "message_stop"})] if done else [])

    def stream_error(self):
        return [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]

    def error_body(self, status, message=""):
        return {"type": "error", "error": {"type": self.error_type(status), "message": message or f"fake {status}"}}

    def json_reply(self, text):
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


#: The wire format of each protocol, by name.
WIRES: dict[str, type[Wire]] = {cls.protocol: cls for cls in (OpenAIWire, AnthropicWire)}


def sse_event(name: str, data: Any, newline: str = "\n") -> bytes:
    """Return one Server-Sent Event: ``event:`` when named, its JSON (or string) ``data``, a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {name}{newline}" if name else ""
    return f"{head}data: {payload}{newline}{newline}".encode()
