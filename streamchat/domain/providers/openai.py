"""OpenAI-compatible chat completions: OpenAI, Groq, OpenRouter, Mistral, DeepSeek, vLLM, Ollama, llama.cpp."""

from __future__ import annotations

import logging
from typing import Any

from ...errors import ProviderRejected
from ...transport.failures import in_stream_error
from ..provider_facts import OPENAI
from ..sse import ServerSentEvent
from ..usage import Usage, token_count
from .base import EndOfStream, HTTPProvider, load_json_event

log = logging.getLogger("streamchat")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Mistral sends content parts for some models
        return "".join(part["text"] for part in content if isinstance(part, dict)
                       and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


class OpenAIChat(HTTPProvider):
    """``POST {base}/chat/completions`` with ``"stream": true``; text in ``choices[0].delta.content``."""

    facts = OPENAI
    #: Ask for the usage chunk; set to False for a server that refused the field (some compatibles do).
    include_usage = True

    def ask_again_without_extras(self, error):
        # Some compatible servers answer 400 to a field they do not know: then go without the usage chunk.
        if not (self.include_usage and isinstance(error, ProviderRejected) and error.status == 400
                and "stream_options" in str(error)):
            return False
        self.include_usage = False
        log.info("%s refused stream_options: usage will be estimated for its replies", self.name)
        return True

    def build_request(self, messages, options, api_key):
        body: dict[str, Any] = {"model": self.model, "stream": True, "max_tokens": self.max_tokens_for(options)}
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        body["messages"] = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + messages
        temperature = self.temperature_for(options)
        if temperature is not None:
            body["temperature"] = temperature
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return f"{self.base_url}/chat/completions", headers, body

    def parse_event(self, event: ServerSentEvent, usage: Usage) -> str:
        data = event.data
        if data == "[DONE]":
            raise EndOfStream
        chunk = load_json_event(self.name, data)
        if not isinstance(chunk, dict):
            return ""
        if chunk.get("error") or event.event == "error":
            raise in_stream_error(self.name, chunk.get("error", chunk))
        if chunk.get("usage"):
            _note_usage(chunk["usage"], usage)
        # Reasoning, tool calls, usage-only and content-filter chunks carry no content: skipped.
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return ""
        delta = choices[0].get("delta")
        return _text_of(delta.get("content")) if isinstance(delta, dict) else ""

    def parse_json_body(self, payload, usage):
        if isinstance(payload, dict) and payload.get("error"):
            raise in_stream_error(self.name, payload["error"])
        if payload.get("usage"):
            _note_usage(payload["usage"], usage)
        return _text_of(payload["choices"][0]["message"]["content"])


def _note_usage(reported: Any, usage: Usage) -> None:
    if isinstance(reported, dict):
        usage.input_tokens = token_count(reported.get("prompt_tokens"))
        usage.output_tokens = token_count(reported.get("completion_tokens"))
