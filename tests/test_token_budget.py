"""Token budgets: reserved before a model is called, settled on what the reply used, shared through Redis."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from servers import Gunicorn, OpenStream, chat_body, eventually, request
from streamchat.shared import redis as shared_redis
from streamchat.shared.token_budget import TokenBudgets


# -- the store, in memory and in Redis ----------------------------------------------------------------------

def test_a_reply_of_30_tokens_under_a_reservation_of_130_gives_100_back():
    budgets = TokenBudgets("1000/day", "5000/day")
    reservation, left = budgets.reserve("client-a", 130)
    assert reservation is not None and left == 870
    budgets.settle(reservation, 30)
    budgets.settle(reservation, 30)  # once only
    assert budgets.remaining("client-a") == 970 and budgets.health()["global_remaining"] == 4970
    assert budgets.remaining("client-b") == 1000  # its own budget untouched; the global one is everyone's


def test_reservations_in_redis_are_atomic_and_settle_in_the_window_they_were_charged(redis_server):
    budgets = TokenBudgets("1000/day", "", shared_redis.connect(f"redis://127.0.0.1:{redis_server.port}/0", 1.0))
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: budgets.reserve("client-a", 110), range(50)))
    granted = [reservation for reservation, _ in results if reservation is not None]
    assert len(granted) == 9 and all(left >= 0 for _, left in results)  # 9 x 110 <= 1000 < 10 x 110
    for reservation in granted:
        budgets.settle(reservation, 10)
    assert budgets.remaining("client-a") == 1000 - 9 * 10
    key = granted[0].keys[0]
    assert 0 < redis_server.client().pttl(key) <= 86_400_000  # the window's key expires with the window
    assert budgets.health() == {"per_client": "1000/day", "global": None, "store": "redis", "healthy": True}


# -- real instances ------------------------------------------------------------------------------------------

def spent_upstream(fake, prefix: str) -> int:
    """Tokens the fake upstream really spent on the requests tagged ``prefix``: their prompts and replies."""
    return sum(r.prompt_tokens + r.tokens_sent for r in fake.records if r.id.startswith(prefix))


def test_fifty_concurrent_requests_through_two_instances_stay_within_the_budget(fake, log_dir, redis_server):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt", REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
               LLM_TOKEN_BUDGET_PER_CLIENT="1000/day", LLM_MAX_TOKENS="100", CHAT_RATE_LIMIT="off", LLM_COOLDOWN="0")
    with Gunicorn(log_dir, **env) as one, Gunicorn(log_dir, **env) as two:
        def ask(n: int):
            server = (one, two)[n % 2]
            return request(server.url, "POST", "/api/chat", chat_body("budget", id=f"tb50-{n}", tokens=40,
                                                                      interval_ms=20), timeout=30)

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(ask, range(50)))
    assert all(status == 200 for status, _, _ in answers)  # nobody sees an error
    modes = [(headers["X-Terminal-Mode"], headers.get("X-Terminal-Reason")) for _, headers, _ in answers]
    assert ("live", None) in modes and ("fallback", "budget") in modes
    assert {mode for mode in modes} <= {("live", None), ("fallback", "budget")}
    assert all(int(headers["X-Token-Budget-Remaining"]) >= 0 for _, headers, _ in answers)
    assert spent_upstream(fake, "tb50-") <= 1000 + 100  # within the budget plus one request's max_tokens


@pytest.mark.processes
def test_a_stopped_reply_settles_on_what_it_produced_and_health_shows_the_rest(fake, log_dir):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt", RESUME_GRACE="0",
                  LLM_TOKEN_BUDGET_GLOBAL="100000/day", LLM_MAX_TOKENS="500") as server:
        stream = OpenStream(server.url, "tb-stop", {"tokens": 400, "interval_ms": 30})
        assert stream.started.wait(10)
        head = stream.raw.partition(b"\r\n\r\n")[0].decode()
        reserved_left = int(next(line.split(": ")[1] for line in head.split("\r\n")
                                 if line.lower().startswith("x-token-budget-remaining")))
        assert reserved_left < 100000 - 500  # the reply's max_tokens and its prompt are set aside
        stream_id = next(line.split(": ")[1] for line in head.split("\r\n") if line.lower().startswith("x-stream-id"))
        assert eventually(lambda: stream.raw.count(b"\r\n") > 20)  # some tokens through
        status, _, _ = request(server.url, "POST", f"/api/chat/streams/{stream_id}/stop")
        assert status == 202 and stream.done.wait(10)
        line = eventually(lambda: next((l for l in server.access_lines() if "ended=stopped" in l), None))
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        used = int(fields["input_tokens"]) + int(fields["output_tokens"])
        assert fields["tokens_estimated"] == "true" and int(fields["output_tokens"]) < 100  # what it produced
        health = json.loads(request(server.url, "GET", "/healthz")[2])["token_budget"]
        assert health["global"] == "100000/day" and health["global_remaining"] == 100000 - used


def test_with_redis_gone_budgets_count_in_memory_and_nothing_fails(fake, log_dir, redis_server):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt",
                  REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0", LLM_TOKEN_BUDGET_PER_CLIENT="5000/day",
                  REDIS_TIMEOUT="0.3") as server:
        assert request(server.url, "POST", "/api/chat", chat_body("before"))[0] == 200
        redis_server.stop()
        for _ in range(3):
            status, headers, _ = request(server.url, "POST", "/api/chat", chat_body("during"))
            assert status == 200 and headers["X-Terminal-Mode"] == "live"
            assert int(headers["X-Token-Budget-Remaining"]) > 0
        health = json.loads(request(server.url, "GET", "/healthz")[2])
        assert health["status"] == "degraded" and health["token_budget"]["healthy"] is False
        assert server.log().count("token budgets (Redis) unreachable") == 1
        assert "Traceback" not in server.log()


@pytest.mark.processes
def test_fallback_and_api_answers_carry_the_remaining_budget_too(log_dir):
    key = "budget-service-key-0123456789"
    with Gunicorn(log_dir, LLM_TOKEN_BUDGET_PER_CLIENT="2000/day", SERVICE_API_KEYS=key) as server:
        _, headers, _ = request(server.url, "POST", "/api/chat", chat_body("hello"))
        assert headers["X-Terminal-Mode"] == "fallback" and headers["X-Token-Budget-Remaining"] == "2000"
        _, headers, _ = request(server.url, "POST", "/v1/chat/completions",
                                {"model": "m", "messages": chat_body("hello")["messages"]},
                                headers={"Authorization": f"Bearer {key}"})
        assert headers["X-Token-Budget-Remaining"] == "2000"  # the key is its own client


def test_with_redis_the_count_outlives_a_restart(fake, log_dir, redis_server):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt",
               REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0", LLM_TOKEN_BUDGET_GLOBAL="100000/day")
    with Gunicorn(log_dir, **env) as server:
        assert request(server.url, "POST", "/api/chat", chat_body("spend some"))[0] == 200
        line = eventually(lambda: next((l for l in server.access_lines() if "output_tokens=" in l), None))
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        spent = int(fields["input_tokens"]) + int(fields["output_tokens"])  # settled on the upstream's usage
        assert eventually(lambda: json.loads(request(server.url, "GET", "/healthz")[2])["token_budget"][
            "global_remaining"] == 100000 - spent)
    with Gunicorn(log_dir, **env) as restarted:  # a new process: its memory knows nothing of the first
        left = json.loads(request(restarted.url, "GET", "/healthz")[2])["token_budget"]["global_remaining"]
        assert left == 100000 - spent
