"""Anthropic Messages API."""

from __future__ import annotations

from typing import Any

from ...transport.failures import in_stream_error
from ..sse import ServerSentEvent
from ..validation import SAME_ROLE_SEPARATOR
from .base import EndOfStream, HTTPProvider, load_json_event

ANTHROPIC_VERSION = "2023-06-01"


def _alternating(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Return the conversation as the Messages API wants it: the user first, roles alternating.

    Consecutive messages of one role are joined with ``SAME_ROLE_SEPARATOR`` (validation counts it
    toward CHAT_MAX_CHARS); assistant messages before the first user message (a greeting the page
    showed) are left out: the API refuses a conversation that does not start with the user.
    """
    merged: list[dict[str, str]] = []
    for message in messages:
        if not merged and message["role"] != "user":
            continue
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {"role": message["role"],
                          "content": merged[-1]["content"] + SAME_ROLE_SEPARATOR + message["content"]}
        else:
            merged.append({"role": message["role"], "content": message["content"]})
    return merged


class AnthropicMessages(HTTPProvider):
    """``POST {base}/v1/messages`` with ``"stream": true``; text in ``text_delta`` content blocks."""

    name = "anthropic"
    title = "the Anthropic Messages API"
    key_env_var = "ANTHROPIC_API_KEY"
    base_url_env_var = "ANTHROPIC_BASE_URL"
    model_env_var = "ANTHROPIC_MODEL"
    default_model = "claude-haiku-4-5"
    default_base_url = "https://api.anthropic.com"
    base_url_doc = "Base URL, without `/v1`."

    def build_request(self, messages):
        body: dict[str, Any] = {"model": self.model, "stream": True, "max_tokens": self.max_tokens,
                                "messages": _alternating(messages)}
        if self.system_prompt:
            body["system"] = self.system_prompt
        if self.temperature is not None:
            body["temperature"] = min(self.temperature, 1.0)  # Anthropic's range is 0-1
        headers = {"x-api-key": self.api_key, "anthropic-version": ANTHROPIC_VERSION}
        return f"{self.base_url}/v1/messages", headers, body

    def parse_event(self, event: ServerSentEvent) -> str:
        if event.event == "ping":
            return ""
        payload = load_json_event(self.name, event.data)
        if not isinstance(payload, dict):
            return ""
        # Some gateways drop the "event:" line; the JSON "type" says the same.
        kind = payload.get("type") or event.event
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                return text if isinstance(text, str) else ""
            return ""  # thinking, signature and tool-input deltas are not reply text
        if kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                return block["text"]
            return ""
        if kind == "message_stop":
            raise EndOfStream
        if kind == "error" or event.event == "error":
            raise in_stream_error(self.name, payload.get("error", payload))
        return ""  # message_start, message_delta, content_block_stop, ping, unknown events

    def parse_json_body(self, payload):
        if payload.get("type") == "error":
            raise in_stream_error(self.name, payload.get("error"))
        return "".join(block.get("text", "") for block in payload["content"] if block.get("type") == "text")
