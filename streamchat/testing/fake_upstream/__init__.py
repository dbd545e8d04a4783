"""A fake LLM API speaking OpenAI chat completions and Anthropic Messages over real HTTP.

``server`` (the HTTP server, its directives and faults), ``wires`` (one class per wire format) and
``__main__`` (``python -m streamchat.testing.fake_upstream --port N``).
"""

from .server import DEFAULTS, FakeUpstream, Record, burst_bytes, directive_of, http_chunk, tokens_of
from .wires import WIRES, AnthropicWire, OpenAIWire, Wire, sse_event

__all__ = ["DEFAULTS", "WIRES", "AnthropicWire", "FakeUpstream", "OpenAIWire", "Record", "Wire", "burst_bytes",
           "directive_of", "http_chunk", "sse_event", "tokens_of"]
