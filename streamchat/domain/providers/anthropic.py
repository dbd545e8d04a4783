"""Anthropic Messages API."""

from __future__ import annotations

from typing import Any

from ...transport.failures import in_stream_error
from ..provider_facts import ANTHROPIC
from ..sse import ServerSentEvent
from ..usage import Usage, token_count
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
        if message["role"] == "system":
            continue  # the API takes the system prompt apart: see _system
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

    facts = ANTHROPIC

    def build_request(self, messages, options, api_key):
        body: dict[str, Any] = {"model": self.model, "stream": True, "max_tokens": self.max_tokens_for(options),
                                "messages": _alternating(messages)}
        system = _system(self.system_prompt, messages)
        if system:
            body["system"] = system
        temperature = self.temperature_for(options)
        if temperature is not None:
            body["temperature"] = min(temperature, 1.0)  # Anthropic's range is 0-1
        headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
        return f"{self.base_url}/v1/messages", headers, body

    def parse_event(self, event: ServerSentEvent, usage: Usage) -> str:
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
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                # Its output_tokens is a placeholder (1): the count comes with message_delta.
                _note_usage(message["usage"], usage, output=False)
            return ""
        if kind == "message_delta":
            if isinstance(payload.get("usage"), dict):
                _note_usage(payload["usage"], usage)  # the running total so far
            return ""
        if kind == "message_stop":
            raise EndOfStream
        if kind == "error" or event.event == "error":
            raise in_stream_error(self.name, payload.get("error", payload))
        return ""  # content_block_stop, ping, unknown events

    def parse_json_body(self, payload, usage):
        if payload.get("type") == "error":
            raise in_stream_error(self.name, payload.get("error"))
        if isinstance(payload.get("usage"), dict):
            _note_usage(payload["usage"], usage)
        return "".join(block.get("text", "") for block in payload["content"] if block.get("type") == "text")


def _system(configured: str, messages: list[dict[str, str]]) -> str:
    """Return the system prompt: the configured one first, then any an API client sent, in order."""
    parts = [configured] if configured else []
    parts += [m["content"] for m in messages if m["role"] == "system"]
    return SAME_ROLE_SEPARATOR.join(parts)


def _note_usage(reported: dict, usage: Usage, output: bool = True) -> None:
    # Input: the prompt's tokens, cached ones included (they are billed too, at their own rate).
    parts = [token_count(reported.get(key)) for key in
             ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    if parts[0] is not None:
        usage.input_tokens = sum(part or 0 for part in parts)
    if output and token_count(reported.get("output_tokens")) is not None:
        usage.output_tokens = reported["output_tokens"]
