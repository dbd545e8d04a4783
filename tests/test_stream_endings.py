"""However a stream ends, every delta parsed before its end reaches the client, whatever the network splits.

One real provider call per cut: the fake upstream replays the body with one cut at the given
byte, so the end (an error event, the end marker, malformed JSON, the connection closing) may
arrive in the same read as the text before it, or in the next one.
"""

import json

import pytest

from servers import chat_body, raw_exchange, parse_chunked
from streamchat.domain.providers import AnthropicMessages, OpenAIChat, Timeouts
from streamchat.errors import BadStream, ProviderError, RateLimited, UpstreamServerError
from streamchat.transport.session import new_session
from streamchat.web.framing.text import CUT_SHORT_NOTICE

TEXT = "Héllo, wörld"


def openai_event(data) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


def openai_delta(text: str) -> str:
    return openai_event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


def anthropic_event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def anthropic_delta(text: str) -> str:
    return anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": text}})


OPENAI_TEXT = openai_delta("Héllo") + openai_delta(", wörld")
ANTHROPIC_TEXT = (anthropic_event("message_start", {"type": "message_start", "message": {"id": "m", "content": []}})
                  + anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                            "content_block": {"type": "text", "text": ""}})
                  + anthropic_delta("Héllo") + anthropic_event("ping", {"type": "ping"}) + anthropic_delta(", wörld"))

#: (provider class, body, the error the stream must end with, or None for a complete reply)
ENDINGS = {
    "openai error event then [DONE]": (OpenAIChat, OPENAI_TEXT + openai_event(
        {"error": {"message": "The server had an error", "type": "server_error", "code": None}})
        + openai_event("[DONE]"), UpstreamServerError),
    "openai rate-limit error event": (OpenAIChat, OPENAI_TEXT + openai_event(
        {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}), RateLimited),
    "openai malformed event": (OpenAIChat, OPENAI_TEXT + 'data: {"choices": [\n\n', BadStream),
    "openai [DONE]": (OpenAIChat, OPENAI_TEXT + openai_event("[DONE]"), None),
    "openai stream that just stops": (OpenAIChat, OPENAI_TEXT, None),
    "anthropic error event": (AnthropicMessages, ANTHROPIC_TEXT + anthropic_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        UpstreamServerError),
    "anthropic message_stop": (AnthropicMessages, ANTHROPIC_TEXT + anthropic_event(
        "message_stop", {"type": "message_stop"}), None),
}


def provider_for(cls, fake):
    base_url = f"{fake.url}/v1" if cls is OpenAIChat else fake.url
    return cls(model="m", base_url=base_url, api_keys=("k",), session=new_session(4, base_url),
               timeouts=Timeouts(1, 3, 2, 10), max_tokens=5, temperature=None, system_prompt="")


def run_stream(provider, body_file, cut: int | None) -> tuple[str, ProviderError | None]:
    directive = {"body_file": str(body_file), "split_ms": 1}
    if cut is not None:
        directive["cuts"] = [cut]
    texts = []
    try:
        for text in provider.stream(chat_body("hi", **directive)["messages"]):
            texts.append(text)
    except ProviderError as exc:
        return "".join(texts), exc
    return "".join(texts), None


@pytest.mark.parametrize("name", ENDINGS)
def test_every_delta_before_the_end_arrives_at_every_cut(name, fake, tmp_path):
    cls, body, error = ENDINGS[name]
    body_file = tmp_path / "stream.sse"
    data = body.encode()
    body_file.write_bytes(data)
    provider = provider_for(cls, fake)
    for cut in [None, *range(1, len(data))]:
        text, raised = run_stream(provider, body_file, cut)
        assert text == TEXT, f"cut at byte {cut}: got {text!r} and {raised!r}"
        assert type(raised) is error if error else raised is None, f"cut at byte {cut}: {raised!r}"


def test_text_and_an_error_in_one_read_answer_live_and_end_with_the_notice(live, tmp_path):
    # Before the first byte: the text arrived, so the reply is live; the error then cuts it short.
    body_file = tmp_path / "text-then-error.sse"
    body_file.write_bytes((openai_delta("Short reply.") + openai_event(
        {"error": {"message": "boom", "type": "server_error"}})).encode())
    head, chunks, terminated = parse_chunked(raw_exchange(live.url, chat_body("hi", body_file=str(body_file))))
    assert b"X-Terminal-Mode: live" in head and terminated
    assert b"".join(chunks).decode() == "Short reply." + CUT_SHORT_NOTICE
