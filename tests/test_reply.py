"""The relay's seams, in process: an injected fake provider, the reply-finished listeners, the breaker."""

import pytest

from app import create_app
from streamchat.domain.breaker import CircuitBreaker
from streamchat.domain.record import ReplyRecord
from streamchat.domain.relay import Relay
from streamchat.domain.rules import RulesStore
from streamchat.errors import ProviderRejected, UpstreamTimeout
from streamchat.testing.fake_provider import FakeProvider
from streamchat.transport.failures import in_stream_error
from streamchat.web.service import service
from streamchat.web.framing.text import CUT_SHORT_NOTICE
from servers import REPO

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def chat(client, **kwargs):
    """POST the conversation, read the whole reply and close the response, as a server does."""
    with client.post("/api/chat", json=HELLO, **kwargs) as response:
        response.body = response.get_data()
    return response


@pytest.fixture
def fake_provider():
    return FakeProvider(model="fake-1")


@pytest.fixture
def records():
    return []


@pytest.fixture
def client(fake_provider, records):
    app = create_app({"CHAT_RATE_LIMIT": "off", "LLM_COOLDOWN": "30", "RESUME_GRACE": "0"}, providers=[fake_provider])
    service_ = app.extensions["streamchat"]
    service_.relay.listeners.append(records.append)
    return app.test_client()


def test_a_view_streams_what_the_injected_provider_yields(client, fake_provider, records):
    fake_provider.enqueue("Hello", " there")
    response = chat(client)
    assert response.status_code == 200
    assert response.body == b"Hello there"
    assert (response.headers["X-Terminal-Mode"], response.headers["X-Terminal-Provider"],
            response.headers["X-Terminal-Model"]) == ("live", "fake", "fake-1")
    [call] = fake_provider.history
    assert call.messages == HELLO["messages"] and call.closed


def test_the_listener_gets_a_complete_reply(client, fake_provider, records):
    fake_provider.enqueue("Hello", " there")
    chat(client, headers={"X-Request-Id": "done-1"})
    [record] = records
    assert isinstance(record, ReplyRecord)
    assert (record.mode, record.provider, record.model, record.ended, record.chunks, record.bytes) == (
        "live", "fake", "fake-1", "complete", 2, len(b"Hello there"))
    assert record.caller.request_id == "done-1" and record.caller.path == "/api/chat"
    assert record.started <= record.first_byte_at <= record.ended_at


def test_the_listener_gets_a_reply_cut_short(client, fake_provider, records):
    fake_provider.enqueue("Half a rep", then=UpstreamTimeout("silent"))
    assert chat(client).body.decode() == "Half a rep" + CUT_SHORT_NOTICE
    [record] = records
    assert (record.mode, record.ended, record.cut_reason, record.bytes) == ("live", "cut_short", "timeout", 10)


def test_the_listener_gets_a_reply_whose_client_left(client, fake_provider, records):
    fake_provider.enqueue("one", "two", "three")
    response = client.post("/api/chat", json=HELLO, buffered=False)
    assert next(iter(response.response)) == b"one"
    response.close()
    [record] = records
    assert (record.ended, record.chunks) == ("client_gone", 1)
    assert fake_provider.history[0].closed  # the upstream is closed with the reply


def test_the_listener_gets_a_fallback_reply_with_each_failure(client, fake_provider, records):
    fake_provider.enqueue(then=ProviderRejected("bad key", status=401))
    response = chat(client)
    assert response.headers["X-Terminal-Mode"] == "fallback"
    assert response.headers["X-Terminal-Reason"] == "auth_rejected"
    [record] = records
    assert (record.mode, record.reason, record.provider, record.ended) == ("fallback", "auth_rejected", "rules",
                                                                          "complete")
    assert record.failures == [("fake", "auth_rejected")] and record.rule == "greeting"
    assert record.bytes == len(response.body)


def test_a_failing_listener_does_not_break_the_reply_or_the_others(client, fake_provider, records):
    def broken(record):
        raise RuntimeError("a listener's bug")

    service_listeners = client.application.extensions["streamchat"].relay.listeners
    service_listeners.insert(0, broken)
    assert chat(client).body == b"Hello from the fake provider."
    assert len(records) == 1


def test_healthz_asks_the_relay(client):
    with client.application.app_context():
        relay = service().relay
    body = client.get("/healthz").get_json()
    assert body["providers"] == [{"name": "fake", "protocol": "-", "model": "fake-1", "base_url": "in-process",
                                  "tier": 1, "weight": 1.0, "keys": 0, "keys_cooling": 0, "state": "ready"}]
    assert body["rules"] == relay.rules.health()
    assert body["status"] == "ok"


# -- the breaker: only availability errors cool a provider down for everyone ------------------------

REQUEST_ERRORS = [
    {"type": "invalid_request_error", "message": "prompt is too long"},  # Anthropic and OpenAI
    {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error",
     "param": "messages", "code": "context_length_exceeded"},  # OpenAI
    {"message": "Failed to call a function", "type": "invalid_request_error", "code": "tool_use_failed"},  # Groq
    {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400},  # vLLM
    {"type": "not_found_error", "message": "model: claude-x"},  # Anthropic
    {"type": "request_too_large", "message": "Request exceeds the maximum size"},  # Anthropic
    {"code": 400, "message": "Provider returned error"},  # OpenRouter
    {"message": "something went wrong"},  # no type, no code: nothing says it is an outage
]
AUTH_ERRORS = [{"type": "authentication_error", "message": "invalid x-api-key"},
               {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"},
               {"type": "permission_error", "message": "not allowed"}]
AVAILABILITY_ERRORS = [
    ({"type": "overloaded_error", "message": "Overloaded"}, "upstream_error"),  # Anthropic
    ({"type": "api_error", "message": "Internal server error"}, "upstream_error"),  # Anthropic
    ({"message": "The server had an error", "type": "server_error", "code": None}, "upstream_error"),  # OpenAI
    ({"type": "rate_limit_error", "message": "Rate limited"}, "rate_limited"),
    ({"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}, "rate_limited"),
    ({"code": 502, "message": "Upstream provider error"}, "upstream_error"),  # OpenRouter
    ({"type": "timeout_error", "message": "Request timed out"}, "timeout"),
]


@pytest.mark.parametrize("error", REQUEST_ERRORS + AUTH_ERRORS)
def test_an_error_about_this_request_does_not_cool_the_provider_down(error):
    fake = FakeProvider()
    relay = Relay([fake], RulesStore(str(REPO / "rules.yaml")), CircuitBreaker(30))
    fake.enqueue(then=in_stream_error("fake", error))
    assert relay.open(HELLO["messages"]).record.mode == "fallback"
    assert relay.breaker.state() == {}
    reply = relay.open(HELLO["messages"])  # the next user's request tries the provider again
    assert reply.record.mode == "live" and len(fake.history) == 2


@pytest.mark.parametrize("error, reason", AVAILABILITY_ERRORS)
def test_an_availability_error_cools_the_provider_down(error, reason):
    fake = FakeProvider()
    relay = Relay([fake], RulesStore(str(REPO / "rules.yaml")), CircuitBreaker(30))
    fake.enqueue(then=in_stream_error("fake", error))
    first = relay.open(HELLO["messages"])
    assert (first.record.mode, first.record.reason) == ("fallback", reason)
    assert relay.breaker.state()["fake"]["reason"] == reason
    second = relay.open(HELLO["messages"])
    assert second.record.mode == "fallback" and len(fake.history) == 1
    assert second.record.failures == [("fake", "cooling_down")]


def test_auth_errors_in_a_stream_say_so():
    for error in AUTH_ERRORS:
        assert in_stream_error("p", error).reason == "auth_rejected"
