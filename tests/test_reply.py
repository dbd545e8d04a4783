"""The relay's seams, in process: an injected fake provider, the reply-finished listeners, the breaker."""

import pytest

from app import create_app
from streamchat.domain.relay import ReplyRecord
from streamchat.errors import ProviderRejected, UpstreamTimeout
from streamchat.testing.fake_provider import FakeProvider
from streamchat.web.service import service
from streamchat.web.streaming import CUT_SHORT_NOTICE

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
    app = create_app({"CHAT_RATE_LIMIT": "off", "LLM_COOLDOWN": "30"}, providers=[fake_provider])
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
    assert record.tags["request_id"] == "done-1" and record.tags["path"] == "/api/chat"
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
    assert body["providers"] == [{"name": "fake", "model": "fake-1", "base_url": "in-process"}]
    assert body["rules"] == relay.rules.health()
    assert body["status"] == "ok"
