"""What instances share through REDIS_URL: one circuit breaker, on real gunicorn instances and a real Redis."""

import json

import pytest

from servers import Gunicorn, chat_body, eventually, free_port, request

# Every test here starts gunicorn, redis-server, nginx or Chromium.
pytestmark = [pytest.mark.processes, pytest.mark.redis]



def chat(server, **fake):
    status, headers, _ = request(server.url, "POST", "/api/chat", chat_body("hi", **fake))
    return status, headers.get("X-Terminal-Mode"), headers.get("X-Terminal-Reason")


def test_a_provider_one_instance_finds_unavailable_is_skipped_by_every_worker_of_the_other(log_dir, redis_server,
                                                                                          fake):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=redis_server.url, LLM_COOLDOWN="120")
    client = redis_server.client()
    with Gunicorn(log_dir, workers=2, **env) as a, Gunicorn(log_dir, workers=2, **env) as b:
        assert eventually(lambda: client.pubsub_numsub("streamchat:breaker")[0][1] == 4)  # every worker listens
        assert chat(a, id="shared-ok") == (200, "live", None)
        assert chat(a, status=429, id="shared-429") == (200, "fallback", "rate_limited")
        # Either worker of either instance now skips openai: its fake would have answered live.
        skipped = [chat(server, id=f"shared-skip-{n}") for n in range(6) for server in (a, b)]
        assert skipped == [(200, "fallback", "rate_limited")] * 12
        assert [fake.find(f"shared-skip-{n}") for n in range(6)] == [None] * 6
        assert 100_000 < client.pttl("streamchat:breaker:openai") <= 120_000
        health = json.loads(request(b.url, "GET", "/healthz")[2])
        assert health["cooling_down"]["openai"]["reason"] == "rate_limited"
        assert health["shared"] == {"redis": redis_server.url, "healthy": True}
        # An instance started during the cool-down loads it from its key.
        with Gunicorn(log_dir, **env) as late:
            assert chat(late, id="shared-late") == (200, "fallback", "rate_limited")
            assert fake.find("shared-late") is None


def test_without_redis_each_worker_keeps_its_own_breaker_and_says_so(log_dir, fake):
    down = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=down, LLM_COOLDOWN="120") as server:
        assert chat(server, id="alone-ok") == (200, "live", None)
        assert chat(server, status=503, id="alone-503") == (200, "fallback", "upstream_error")
        assert chat(server, id="alone-skip") == (200, "fallback", "upstream_error")  # its own breaker
        assert fake.find("alone-skip") is None
        status, _, body = request(server.url, "GET", "/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "degraded"
        assert health["shared"]["healthy"] is False
        assert "skips only the providers it saw fail" in health["shared"]["error"]
        log = server.log()
        assert log.count("shared circuit breaker (Redis) unreachable") == 1 and "Traceback" not in log
    with Gunicorn(log_dir, workers=2) as server:  # no REDIS_URL at all: fine, and said
        health = json.loads(request(server.url, "GET", "/healthz")[2])
        assert health["status"] == "ok" and health["shared"]["redis"] == "none"
        assert "set REDIS_URL to share them" in health["shared"]["note"]


def test_a_rate_limited_key_of_a_named_upstream_is_skipped_by_every_worker_of_both_instances(
        log_dir, redis_server, fake, tmp_path):
    upstreams = tmp_path / "upstreams.yaml"
    upstreams.write_text(f"""
upstreams:
  - name: groq
    protocol: openai
    base_url: {fake.url}/v1
    api_keys: ["${{KEY_A}}", "${{KEY_B}}"]
""")
    env = dict(UPSTREAMS_PATH=str(upstreams), KEY_A="shared-key-aaaa", KEY_B="shared-key-bbbb",
               REDIS_URL=redis_server.url, LLM_COOLDOWN="120")
    client = redis_server.client()
    with Gunicorn(log_dir, workers=2, **env) as a, Gunicorn(log_dir, workers=2, **env) as b:
        assert eventually(lambda: client.pubsub_numsub("streamchat:breaker")[0][1] == 4)
        limited = {"keys": {"shared-key-aaaa": {"status": 429, "retry_after": 100}}}
        # Each worker's turn starts at key A: the first request to reach a worker meets its 429.
        for _ in range(4):
            assert chat(a, id="key-429", **limited)[1] == "live"  # answered by key B, unnoticed
            if client.pttl("streamchat:breaker:groq#1") > 0:
                break
        assert 90_000 < client.pttl("streamchat:breaker:groq#1") <= 120_000
        for n in range(8):  # every worker of both instances skips key A now
            server = (a, b)[n % 2]
            assert chat(server, id=f"key-after-{n}", **limited)[1] == "live"
        assert {fake.find(f"key-after-{n}").key_end for n in range(8)} == {"bbbb"}
        health = json.loads(request(b.url, "GET", "/healthz")[2])
        assert health["cooling_down"]["groq#1"]["reason"] == "rate_limited"
        assert health["providers"][0]["keys_cooling"] == 1 and health["providers"][0]["state"] == "ready"


THREE_UPSTREAMS = """
upstreams:
  - name: groq
    protocol: openai
    base_url: {groq}/v1
    weight: 3
  - name: mistral
    protocol: openai
    base_url: {mistral}/v1
  - name: claude
    protocol: anthropic
    base_url: {claude}
    api_key: "${{CLAUDE_KEY}}"
    tier: 2
"""


def test_three_upstreams_tiers_and_weights_across_two_instances_and_a_failing_one_skipped_by_all(
        log_dir, redis_server, tmp_path):
    from streamchat.testing.fake_upstream import FakeUpstream

    fakes = {name: FakeUpstream(defaults={"first_token_ms": 5, "interval_ms": 0, "tokens": 3}).start_in_thread()
             for name in ("groq", "mistral", "claude")}
    try:
        upstreams = tmp_path / "upstreams.yaml"
        upstreams.write_text(THREE_UPSTREAMS.format(**{name: fake.url for name, fake in fakes.items()}))
        env = dict(UPSTREAMS_PATH=str(upstreams), CLAUDE_KEY="claude-key-0003", REDIS_URL=redis_server.url,
                   LLM_COOLDOWN="120")
        client = redis_server.client()
        with Gunicorn(log_dir, workers=2, **env) as a, Gunicorn(log_dir, workers=2, **env) as b:
            assert eventually(lambda: client.pubsub_numsub("streamchat:breaker")[0][1] == 4)

            def answered_by(n: int, tag: str) -> list[str]:
                return [request((a, b)[i % 2].url, "POST", "/api/chat", chat_body(f"{tag} {i}", id=f"{tag}-{i}"))[1]
                        ["X-Terminal-Provider"] for i in range(n)]

            first = answered_by(80, "w")
            assert set(first) == {"groq", "mistral"}  # tier 2 is never needed while tier 1 answers
            assert 45 <= first.count("groq") <= 75  # weight 3 against 1: three first picks in four
            fakes["groq"].defaults["status"] = 500  # groq breaks
            assert set(answered_by(10, "x")) == {"mistral"}  # the request that met groq's 500 went on to mistral
            assert 100_000 < client.pttl("streamchat:breaker:groq") <= 120_000
            asked = len(fakes["groq"].records)
            assert set(answered_by(12, "y")) == {"mistral"}  # every worker of both instances skips groq
            assert len(fakes["groq"].records) == asked
            fakes["mistral"].defaults["status"] = 503  # the whole first tier down: the second tier answers
            assert set(answered_by(6, "z")) == {"claude"}
    finally:
        for fake in fakes.values():
            fake.stop()
