"""OpenAI-compatible chat completions: OpenAI, Groq, OpenRouter, Mistral, DeepSeek, vLLM, Ollama, llama.cpp."""

from __future__ import annotations

from typing import Any

from ...transport.failures import in_stream_error
from ..sse import ServerSentEvent
from .base import EndOfStream, HTTPProvider, load_json_event


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # Mistral sends content parts for some models
        return "".join(part["text"] for part in content if isinstance(part, dict)
                       and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


class OpenAIChat(HTTPProvider):
    """``POST {base}/chat/completions`` with ``"stream": true``; text in ``choices[0].delta.content``."""

    name = "openai"
    title = "an OpenAI-compatible API"
    key_env_var = "OPENAI_API_KEY"
    base_url_env_var = "OPENAI_BASE_URL"
    model_env_var = "OPENAI_MODEL"
    default_model = "gpt-4o-mini"
    default_base_url = "https://api.openai.com/v1"
    base_url_doc = ("Base URL including `/v1`. Setting it without a key enables keyless local servers "
                    "(Ollama `http://127.0.0.1:11434/v1`, llama.cpp, vLLM).")
    keyless = True

    def build_request(self, messages):
        body: dict[str, Any] = {"model": self.model, "stream": True, "max_tokens": self.max_tokens}
        body["messages"] = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + messages
        if self.temperature is not None:
            body["temperature"] = self.temperature
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return f"{self.base_url}/chat/completions", headers, body

    def parse_event(self, event: ServerSentEvent) -> str:
        data = event.data
        if data == "[DONE]":
            raise EndOfStream
        chunk = load_json_event(self.name, data)
        if not isinstance(chunk, dict):
            return ""
        if chunk.get("error") or event.event == "error":
            raise in_stream_error(self.name, chunk.get("error", chunk))
        # Reasoning, tool calls, usage-only and content-filter chunks carry no content: skipped.
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return ""
        delta = choices[0].get("delta")
        return _text_of(delta.get("content")) if isinstance(delta, dict) else ""

    def parse_json_body(self, payload):
        if isinstance(payload, dict) and payload.get("error"):
            raise in_stream_error(self.name, payload["error"])
        return _text_of(payload["choices"][0]["message"]["content"])
