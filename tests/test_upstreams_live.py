"""Named upstreams through a real gunicorn worker and the fake upstream speaking both wire formats."""

from __future__ import annotations

import json

import pytest

from servers import Gunicorn, chat_body, eventually, request

pytestmark = pytest.mark.processes

UPSTREAMS = """
upstreams:
  - name: claude
    protocol: anthropic
    base_url: {url}
    model: fake-claude
    api_key: "${{CLAUDE_KEY}}"
  - name: groq
    protocol: openai
    base_url: {url}/v1
    model: fake-llama
    api_keys: ["${{GROQ_KEY_A}}", "${{GROQ_KEY_B}}"]
    headers: {{x-team: support}}
    tier: 2
"""
SERVICE_KEY = "upstreams-test-service-key-0123"


@pytest.fixture(scope="module")
def routed(fake, log_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("upstreams") / "upstreams.yaml"
    path.write_text(UPSTREAMS.format(url=fake.url))
    with Gunicorn(log_dir, UPSTREAMS_PATH=str(path), CLAUDE_KEY="claude-key-0001", GROQ_KEY_A="groq-key-aaaa",
                  GROQ_KEY_B="groq-key-bbbb", LLM_FIRST_TOKEN_TIMEOUT="3", LLM_COOLDOWN="0", RESUME_GRACE="0",
                  SERVICE_API_KEYS=SERVICE_KEY) as server:
        yield server


def ask(server, tag, **directive):
    status, headers, body = request(server.url, "POST", "/api/chat", chat_body(f"hi {tag}", id=tag, **directive))
    return status, headers, body.decode()


def test_the_first_tier_answers_and_its_name_and_model_are_in_the_headers(routed, fake):
    status, headers, body = ask(routed, "u-first", text="from claude")
    assert (status, body) == (200, "from claude")
    assert (headers["X-Terminal-Provider"], headers["X-Terminal-Model"]) == ("claude", "fake-claude")
    assert fake.find("u-first").key_end == "0001"


def test_a_429_on_a_key_is_answered_live_by_the_next_key_without_the_visitor_noticing(routed, fake):
    # The first tier fails over to the second; there the first key tried is rate-limited, the other answers.
    directive = {"anthropic": {"status": 500}, "text": "from groq",
                 "keys": {"groq-key-aaaa": {"status": 429, "retry_after_ms": 200},
                          "groq-key-bbbb": {}}}
    status, headers, body = ask(routed, "u-429", **directive)
    assert (status, body, headers["X-Terminal-Mode"], headers["X-Terminal-Provider"]) == (
        200, "from groq", "live", "groq")
    tried = [(r.protocol, r.key_end) for r in fake.records if r.id == "u-429"]
    # groq's first request in this worker: its turn starts at key A.
    assert tried == [("anthropic", "0001"), ("openai", "aaaa"), ("openai", "bbbb")]
    answered = [r for r in fake.records if r.id == "u-429"][-1]
    assert answered.headers.get("x-team") == "support"  # the file's extra headers go with the request
    line = eventually(lambda: next((l for l in routed.access_lines() if "claude:upstream_error" in l), None))
    assert line and "mode=live" in line and "provider=groq" in line
    assert "failures=claude:upstream_error,groq#1:rate_limited" in line


def test_health_lists_every_upstream_and_never_a_key(routed):
    status, _, body = request(routed.url, "GET", "/healthz")
    health = json.loads(body)
    upstreams = {u["name"]: u for u in health["providers"]}
    assert (upstreams["claude"]["protocol"], upstreams["claude"]["keys"]) == ("anthropic", 1)
    assert (upstreams["groq"]["protocol"], upstreams["groq"]["keys"], upstreams["groq"]["tier"]) == ("openai", 2, 2)
    assert "key-" not in body.decode() and "groq-key" not in routed.log()


def test_the_openai_api_may_name_an_upstream_or_its_model(routed, fake):
    for model in ("groq", "fake-llama"):
        tag = f"u-v1-{model}"
        body = {"model": model, "messages": chat_body(f"hi {tag}", id=tag, text="chosen")["messages"]}
        status, headers, answer = request(routed.url, "POST", "/v1/chat/completions", body,
                                          {"Authorization": f"Bearer {SERVICE_KEY}"})
        assert status == 200 and headers["X-Terminal-Provider"] == "groq"
        assert json.loads(answer)["choices"][0]["message"]["content"] == "chosen"
    status, _, models = request(routed.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert [(m["id"], m["owned_by"]) for m in json.loads(models)["data"]] == [
        ("fake-claude", "claude"), ("fake-llama", "groq"), ("rules", "streamchat")]


def groq_health(server) -> dict:
    health = json.loads(request(server.url, "GET", "/healthz")[2])
    return next(u for u in health["providers"] if u["name"] == "groq")


def test_a_key_reporting_nothing_left_is_skipped_until_its_reset(routed, fake):
    assert eventually(lambda: groq_health(routed)["keys_cooling"] == 0)  # the 429 of an earlier test is over
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    directive = {"anthropic": {"status": 500}, "text": "ok", "keys": {"groq-key-aaaa": {"headers": spent},
                                                                      "groq-key-bbbb": {"headers": spent}}}
    for n in range(2):  # each key answers once and says it is spent
        assert ask(routed, f"u-spent-{n}", **directive)[1]["X-Terminal-Provider"] == "groq"
    status, headers, _ = ask(routed, "u-spent-after", **directive)
    assert headers["X-Terminal-Mode"] == "fallback" and headers["X-Terminal-Reason"] == "upstream_error"
    assert [r.protocol for r in fake.records if r.id == "u-spent-after"] == ["anthropic"]  # no 429 was suffered
    groq = groq_health(routed)
    assert (groq["keys_cooling"], groq["state"]) == (2, "cooling_down")


HEDGED = """
upstreams:
  - name: slow
    protocol: anthropic
    base_url: {url}
    api_key: "${{CLAUDE_KEY}}"
  - name: fast
    protocol: openai
    base_url: {url}/v1
    tier: 2
"""


def test_a_slow_first_token_is_hedged_and_the_loser_s_request_closed_at_once(fake, log_dir, tmp_path):
    path = tmp_path / "hedged.yaml"
    path.write_text(HEDGED.format(url=fake.url))
    with Gunicorn(log_dir, UPSTREAMS_PATH=str(path), CLAUDE_KEY="claude-key-0002", LLM_HEDGE_AFTER="0.3",
                  LLM_FIRST_TOKEN_TIMEOUT="8", RESUME_GRACE="0") as server:
        status, headers, body = ask(server, "u-hedge", text="quick answer", anthropic={"first_token_ms": 6000})
        assert (status, body, headers["X-Terminal-Provider"]) == (200, "quick answer", "fast")
        slow = next(r for r in fake.records if r.id == "u-hedge" and r.protocol == "anthropic")
        # Closed by the service long before its first token was due, with nothing of its reply written.
        assert fake.wait_for(lambda: slow.peer_closed is not None, 3) and slow.tokens_sent == 0
        line = eventually(lambda: next((l for l in server.access_lines() if "hedge=" in l), None))
        assert "hedge=fast:won" in line and "provider=fast" in line and "failures=-" in line
        # The chosen upstream answering before the hedge is due: no hedge at all.
        status, headers, body = ask(server, "u-no-hedge", text="in time")
        assert headers["X-Terminal-Provider"] == "slow" and [r.protocol for r in fake.records
                                                             if r.id == "u-no-hedge"] == ["anthropic"]
