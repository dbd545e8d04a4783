"""The OpenAI-compatible API, driven by the official ``openai`` SDK against real gunicorn workers."""

from __future__ import annotations

import json

import openai
import pytest

from servers import Gunicorn, chat_body, eventually, request
from streamchat.domain.providers import OpenAIChat, Timeouts
from streamchat.domain.providers import base as provider_base
from streamchat.domain.record import ReplyRecord
from streamchat.domain.relay import Reply
from streamchat.domain.usage import Usage
from streamchat.transport.session import new_session
from streamchat.web.framing.openai_sse import chunks
from streamchat.web.framing.text import CUT_SHORT_NOTICE

KEY, OTHER_KEY = "test-service-key-0123456789", "other-service-key-0123456789"
FAKE_TEXT = "Streaming keeps a chat responsive: the first words arrive while the model "  # the fake's 12 tokens


@pytest.fixture(scope="module")
def api(fake, log_dir):
    """Two workers with the fake upstream as their one provider, and the API on."""
    with Gunicorn(log_dir, workers=2, SERVICE_API_KEYS=f"{KEY},{OTHER_KEY}", OPENAI_BASE_URL=f"{fake.url}/v1",
                  OPENAI_MODEL="fake-gpt", LLM_FIRST_TOKEN_TIMEOUT="1", LLM_IDLE_TIMEOUT="2", LLM_COOLDOWN="0",
                  LLM_MAX_TOKENS="50") as server:
        yield server


@pytest.fixture(scope="module")
def keyless(log_dir):
    """No provider configured, and a tight API rate limit."""
    with Gunicorn(log_dir, SERVICE_API_KEYS=f"{KEY},{OTHER_KEY}", API_RATE_LIMIT="4/minute") as server:
        yield server


def sdk(server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=20)


def ask(prompt: str, **fake) -> list[dict]:
    return chat_body(prompt, **fake)["messages"]


@pytest.mark.processes
def test_streaming_live_reply_is_shaped_as_openai_shapes_it(api, fake):
    with sdk(api).chat.completions.with_streaming_response.create(
            model="fake-gpt", messages=ask("stream me", id="v1-stream"), stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Terminal-Mode"] == "live" and response.headers["X-Terminal-Model"] == "fake-gpt"
        events = list(response.parse())
    assert events[0].choices[0].delta.role == "assistant"
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == FAKE_TEXT
    last, usage = events[-2], events[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["x_terminal"] == {"mode": "live", "reason": None, "ended": "complete",
                                              "usage_estimated": False}
    assert usage.choices == [] and {e.id for e in events} == {events[0].id} and events[0].model == "fake-gpt"
    record = fake.find("v1-stream")  # the upstream's own count, as its usage chunk said
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (record.prompt_tokens, record.tokens_sent)
    assert record.body["stream_options"] == {"include_usage": True}


@pytest.mark.processes
def test_whole_reply_with_usage_and_the_request_options_passed_on(api, fake):
    completion = sdk(api).chat.completions.create(
        model="anything-else", messages=[{"role": "developer", "content": "Answer in French."},
                                         {"role": "user", "content": [{"type": "text", "text": "whole "},
                                                                      {"type": "text", "text": "reply\nfake: {\"id\": \"v1-whole\"}"}]}],
        max_completion_tokens=500, temperature=0.3, user="visitor-7", metadata={"a": "b"}, store=False, n=1)
    assert completion.object == "chat.completion" and completion.choices[0].message.content == FAKE_TEXT
    sent = fake.find("v1-whole").body
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.3  # capped at LLM_MAX_TOKENS
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert completion.usage.completion_tokens == 12 and completion.model_extra["x_terminal"]["mode"] == "live"
    line = eventually(lambda: next((l for l in api.access_lines() if "path=/v1/chat/completions" in l
                                    and "input_tokens=" in l and "output_tokens=12 " in l), None))
    assert "tokens_estimated=false" in line and "service_key=key-" in line and KEY not in api.log()


@pytest.mark.processes
@pytest.mark.parametrize("directive, reason", [
    ({"status": 429}, "rate_limited"),
    ({"first_token_ms": 3000}, "timeout"),
])
def test_fallback_replies_are_complete_completions_labelled_fallback(api, directive, reason):
    with sdk(api).chat.completions.with_streaming_response.create(
            model="fake-gpt", messages=ask("hello there", **directive), stream=True) as response:
        assert response.headers["X-Terminal-Mode"] == "fallback" and response.headers["X-Terminal-Reason"] == reason
        events = list(response.parse())
    assert events[0].model == "rules" and "".join(e.choices[0].delta.content or "" for e in events)
    assert events[-1].model_extra["x_terminal"] == {"mode": "fallback", "reason": reason, "ended": "complete",
                                                    "usage_estimated": False}


@pytest.mark.processes
def test_no_provider_and_the_rules_model_answer_from_the_rules(keyless, api):
    completion = sdk(keyless).chat.completions.create(model="gpt-4o", messages=ask("hello"))
    assert completion.model == "rules" and completion.model_extra["x_terminal"]["reason"] == "no_provider"
    assert completion.usage.total_tokens == 0  # a rules reply costs nothing
    asked = sdk(api).chat.completions.create(model="rules", messages=ask("hello"))
    assert asked.model == "rules" and asked.model_extra["x_terminal"]["reason"] == "requested"
    assert [m.id for m in sdk(keyless).models.list()] == ["rules"]
    assert [m.id for m in sdk(api).models.list()] == ["fake-gpt", "rules"]


@pytest.mark.processes
def test_a_stream_that_breaks_ends_normally_with_the_notice_and_every_byte_so_far(api):
    stream = sdk(api).chat.completions.create(model="fake-gpt", stream=True,
                                             messages=ask("break", fault="drop_after", after=4))
    events = list(stream)  # the SDK's iterator ends normally
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text.endswith(CUT_SHORT_NOTICE)
    assert text[: -len(CUT_SHORT_NOTICE)] == " ".join(FAKE_TEXT.split(" ")[:4]) + " "
    assert events[-1].choices[0].finish_reason == "stop"
    assert events[-1].model_extra["x_terminal"]["ended"] == "cut_short"


@pytest.mark.processes
def test_closing_the_sdks_stream_closes_the_upstream(api, fake):
    stream = sdk(api).chat.completions.create(model="fake-gpt", stream=True,
                                             messages=ask("long", id="v1-close", tokens=2000, interval_ms=20))
    pieces = iter(stream)
    next(pieces), next(pieces)
    stream.close()
    assert fake.wait_for(lambda: fake.find("v1-close").peer_closed), "the upstream kept generating"
    assert fake.find("v1-close").finished is None


@pytest.mark.processes
@pytest.mark.parametrize("call, error", [
    (lambda c: c.chat.completions.create(model="m", messages=ask("x"), tools=[
        {"type": "function", "function": {"name": "f", "parameters": {}}}]), openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="m", messages=ask("x"), n=2), openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="m", messages=ask("x"), response_format={"type": "json_object"}),
     openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="m", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]), openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="m", messages=ask("x"), logprobs=True), openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="m", messages=ask("x"), extra_body={"frobnicate": 1}),
     openai.BadRequestError),
    (lambda c: c.chat.completions.create(model="m", messages=[{"role": "assistant", "content": "hi"}]),
     openai.BadRequestError),
    (lambda c: c.models.retrieve("fake-gpt"), openai.NotFoundError),
])
def test_what_cannot_be_honoured_is_a_clear_error_of_the_sdks_class(api, call, error):
    with pytest.raises(error) as raised:
        call(sdk(api))
    body = raised.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["message"]


@pytest.mark.processes
def test_keys_sizes_methods_and_limits_give_the_statuses_the_sdk_maps(api, keyless):
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(api, key="not-a-key-of-this-service").models.list()
    assert raised.value.body["code"] == "invalid_api_key" and "not-a-key" not in json.dumps(raised.value.body)
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(api).chat.completions.create(model="m", messages=ask("x" * 300_000))
    assert raised.value.status_code == 413
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(api).get("/chat/completions", cast_to=object)
    assert raised.value.status_code == 405 and raised.value.body["type"] == "invalid_request_error"
    statuses = []
    for _ in range(6):  # 4/minute for this key; the other key has its own count
        try:
            sdk(keyless, OTHER_KEY).chat.completions.create(model="m", messages=ask("hello"))
            statuses.append(200)
        except openai.RateLimitError as exc:
            statuses.append(429)
            assert int(exc.response.headers["Retry-After"]) > 0 and exc.body["type"] == "rate_limit_error"
    assert statuses == [200] * 4 + [429] * 2
    assert sdk(keyless).chat.completions.create(model="m", messages=ask("hello")).model == "rules"


def test_without_service_keys_the_api_is_not_there():
    from app import create_app

    client = create_app({}).test_client()
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
        response = client.open(path, method=method, json={"model": "m", "messages": ask("x")},
                               headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 404 and response.get_json()["error"]["type"] == "not_found_error"


def test_a_silent_upstream_becomes_sse_comments_not_a_timed_out_proxy(fake, monkeypatch):
    monkeypatch.setattr(provider_base, "HEARTBEAT_EVERY", 0.2)
    base_url = f"{fake.url}/v1"
    provider = OpenAIChat(model="m", base_url=base_url, api_keys=("k",), session=new_session(2, base_url),
                          timeouts=Timeouts(1, 3, 2, 10), max_tokens=5, temperature=None, system_prompt="")
    usage = Usage()
    texts = list(provider.stream(ask("slow", tokens=3, interval_ms=700), usage=usage))
    assert "".join(texts) == "Streaming keeps a " and "" in texts[1:]  # heartbeats between the tokens
    reply = Reply(ReplyRecord(), texts[0], iter(texts[1:]), None, _relay_stub(), usage)
    framed = b"".join(chunks(reply, "chatcmpl-x", include_usage=False))
    assert b"\n\n: keep-alive\n\n" in framed and framed.endswith(b"data: [DONE]\n\n")


@pytest.mark.processes
def test_a_server_that_refuses_stream_options_is_asked_again_without_it(api, fake):
    # Last in this module: the worker that was refused stops asking for usage, as it would in production.
    completion = sdk(api).chat.completions.create(model="fake-gpt", messages=ask("refuse", id="v1-refuse",
                                                                                 reject_stream_options=True))
    assert completion.choices[0].message.content == FAKE_TEXT
    assert completion.model_extra["x_terminal"]["usage_estimated"] is True  # estimated from the characters
    assert "stream_options" not in fake.find("v1-refuse").body


def _relay_stub():
    from streamchat.domain.relay import Relay

    class Rules:
        def reply(self, messages):
            return "x", "x"

        def health(self):
            return {"loaded": True, "error": None}

    from streamchat.domain.breaker import CircuitBreaker

    return Relay([], Rules(), CircuitBreaker(0))


def test_anthropic_usage_reaches_the_access_line(live_anthropic, fake):
    status, _, body = request(live_anthropic.url, "POST", "/api/chat", chat_body("count me", id="v1-anthropic"))
    assert status == 200
    record = fake.find("v1-anthropic")
    line = eventually(lambda: next((l for l in live_anthropic.access_lines() if "output_tokens=" in l
                                    and f"input_tokens={record.prompt_tokens} " in l), None))
    assert f"output_tokens={record.tokens_sent} " in line and "tokens_estimated=false" in line
