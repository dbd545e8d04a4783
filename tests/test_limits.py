"""Rate limits, the live-model budget, client identity, CORS and headers, on real gunicorn and Redis."""

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from limits.storage import storage_from_string

from servers import Gunicorn, chat_body, eventually, request
from streamchat.web.guards import failsoft

pytestmark = pytest.mark.processes  # every test here starts gunicorn, redis-server, nginx or Chromium


def chat(server, headers=None, **fake):
    status, response_headers, body = request(server.url, "POST", "/api/chat", chat_body("hi", **fake), headers)
    return status, response_headers, body


def statuses(server, count, headers=None):
    return [chat(server, headers)[0] for _ in range(count)]


def test_over_the_limit_is_a_429_with_retry_after_and_json(log_dir):
    with Gunicorn(log_dir, CHAT_RATE_LIMIT="2/minute") as server:
        first = chat(server)
        assert first[0] == 200
        assert first[1]["X-RateLimit-Limit"] == "2" and first[1]["X-RateLimit-Remaining"] == "1"
        assert "Retry-After" not in first[1]  # it says "wait": on a 429 only
        assert chat(server)[0] == 200
        status, headers, body = chat(server)
        assert status == 429
        wait = int(headers["Retry-After"])
        assert 0 < wait <= 60
        error = json.loads(body)["error"]
        assert error["code"] == "rate_limited" and f"{wait} seconds" in error["message"]
        assert headers["Content-Type"] == "application/json"
        # The health check, the page and its static files are never limited.
        for path in ["/healthz", "/", "/static/chat.js", "/static/chat.css"] * 3:
            assert request(server.url, "GET", path)[0] == 200


@pytest.mark.redis
def test_with_the_limit_off_and_no_budget_nothing_is_counted(log_dir):
    with Gunicorn(log_dir, CHAT_RATE_LIMIT="off") as server:
        replies = [chat(server) for _ in range(5)]
        assert [status for status, _, _ in replies] == [200] * 5
        assert not any("X-RateLimit-Limit" in headers for _, headers, _ in replies)
        health = json.loads(request(server.url, "GET", "/healthz")[2])
        assert health["status"] == "ok" and health["rate_limit"]["storage"].startswith("none")


def test_redis_shares_one_count_across_processes_and_memory_does_not(log_dir, redis_server):
    # Two gunicorn masters stand for two machines (or workers) behind one load balancer.
    shared = {"CHAT_RATE_LIMIT": "3/minute", "RATELIMIT_STORAGE_URI": redis_server.url}
    with Gunicorn(log_dir, **shared) as a, Gunicorn(log_dir, **shared) as b:
        assert statuses(a, 2) + statuses(b, 1) == [200, 200, 200]
        assert statuses(b, 1) + statuses(a, 1) == [429, 429]
        health = json.loads(request(a.url, "GET", "/healthz")[2])
        assert health["rate_limit"] == {"storage": redis_server.url, "shared": True, "healthy": True}
    apart = {"CHAT_RATE_LIMIT": "3/minute"}
    with Gunicorn(log_dir, **apart) as a, Gunicorn(log_dir, **apart) as b:
        assert statuses(a, 3) + statuses(b, 3) == [200] * 6  # memory:// counts per process
        assert statuses(a, 1) == [429]


@pytest.mark.redis
def test_one_redis_call_per_chat_request_for_its_limits_and_budgets(log_dir, redis_server, fake):
    # A chat request counts its rate limit and both budgets in one script: one round trip, no read-back.
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", CHAT_RATE_LIMIT="100/minute", LLM_BUDGET_PER_CLIENT="50/minute",
                  LLM_BUDGET_GLOBAL="1000/minute", RATELIMIT_STORAGE_URI=redis_server.url) as server:
        assert statuses(server, 2) == [200, 200]  # scripts loaded, connections made
        client = redis_server.client()
        client.config_resetstat()
        # The headers are written once the model has answered: 0.7 s after the hit here, seconds on a busy worker.
        replies = [chat(server, first_token_ms=700) for _ in range(5)]
        assert [(status, headers["X-Terminal-Mode"]) for status, headers, _ in replies] == [(200, "live")] * 5
        assert [headers["X-RateLimit-Remaining"] for _, headers, _ in replies] == ["97", "96", "95", "94", "93"]
        assert all(0 < int(headers["X-RateLimit-Reset"]) - time.time() <= 61 for _, headers, _ in replies)
        commands = client.info("commandstats")  # the scripts' own incrby/expire/pttl are listed too
        assert commands["cmdstat_evalsha"]["calls"] == 5  # one script a request...
        assert commands["cmdstat_incrby"]["calls"] == 5 * 3  # ... counting the limit and the two budgets
        assert set(commands) <= {"cmdstat_config|resetstat", "cmdstat_evalsha", "cmdstat_incrby", "cmdstat_expire",
                                 "cmdstat_pttl"}, commands  # no GET or TTL sent to read a window back


@pytest.mark.redis
def test_the_reply_cache_looks_in_the_same_call_as_the_counts_and_junk_is_counted(log_dir, redis_server, fake):
    # With the counts and the cache in one Redis (REDIS_URL), a chat request's only call before its model is
    # asked is one script: its rate limit, its budget and the cache's look for its question.
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", CHAT_RATE_LIMIT="4/minute", LLM_BUDGET_GLOBAL="100/day",
                  REDIS_URL=redis_server.url, REPLY_CACHE_TTL="600", RESUME_TTL="0") as server:
        import redis as redis_client
        seen: list[str] = []
        monitor_client = redis_client.Redis.from_url(redis_server.url)
        with monitor_client.monitor() as monitor, ThreadPoolExecutor(1) as pool:
            def listen():
                for command in monitor.listen():
                    if command.get("client_type") != "lua":  # what a script runs is listed too
                        seen.append(command["command"])
                    if "STOP-MONITOR" in command["command"]:
                        return
            listening = pool.submit(listen)
            time.sleep(0.2)  # MONITOR is on before the requests
            first, again = chat(server, id="count-and-look"), chat(server, id="count-and-look")
            request(server.url, "POST", "/api/chat", b"{not json")  # junk: counted too
            over = chat(server, id="count-and-look")  # the fourth of 4/minute
            fifth = chat(server, id="count-and-look")
            monitor_client.get("STOP-MONITOR")
            listening.result(10)
        # "joined" when the first answer's end is not written yet (the records' writes are batched).
        assert first[1]["X-Terminal-Cache"] == "miss" and again[1]["X-Terminal-Cache"] in ("hit", "joined")
        assert [first[0], again[0], over[0], fifth[0]] == [200, 200, 200, 429]
        assert first[1]["X-RateLimit-Remaining"] == "3" and over[1]["X-RateLimit-Remaining"] == "0"
        # One script call a request (its first ever is sent twice: NOSCRIPT, then again once loaded), the four
        # valid ones with their look (the last one's skipped in the script: past the limit), the junk's without.
        looks = {c for c in seen if "streamchat:reply-cache:" in c}
        assert len(looks) == 4 and all(c.startswith("EVALSHA") and "LIMITS:" in c for c in looks), seen
        counts = {c for c in seen if c.startswith("EVALSHA") and "LIMITS:" in c}
        assert len(counts - looks) == 1, seen  # the junk's
    monitor_client.close()


@pytest.mark.redis
def test_two_workers_of_one_server_share_the_redis_count(log_dir, redis_server):
    with Gunicorn(log_dir, workers=2, CHAT_RATE_LIMIT="5/minute", RATELIMIT_STORAGE_URI=redis_server.url) as server:
        assert statuses(server, 7) == [200] * 5 + [429] * 2


@pytest.mark.redis
def test_redis_going_away_and_back_is_one_warning_each_and_health_tells_the_truth(log_dir, redis_server):
    with Gunicorn(log_dir, CHAT_RATE_LIMIT="100/minute", LLM_BUDGET_PER_CLIENT="100/minute",
                  RATELIMIT_STORAGE_URI=redis_server.url) as server:
        assert statuses(server, 2) == [200, 200]
        redis_server.stop()
        with ThreadPoolExecutor(10) as pool:  # requests in flight as it goes
            assert list(pool.map(lambda _: chat(server)[0], range(20))) == [200] * 20
        status, _, body = request(server.url, "GET", "/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "degraded"
        assert health["rate_limit"]["healthy"] is False and "its own memory" in health["rate_limit"]["error"]

        redis_server.start()  # empty: no count survived
        assert eventually(lambda: json.loads(request(server.url, "GET", "/healthz")[2])["status"] == "ok")
        # "healthy" is the truth about this worker: its very next request is counted in Redis.
        assert chat(server)[0] == 200
        assert len(redis_server.client().keys("*")) == 2  # the rate limit and the budget
        log = server.log()
        assert log.count("rate-limit storage unreachable") == 1 and log.count("reachable again") == 1
        assert "Traceback" not in log and "Swallowing" not in log and "budget unavailable" not in log


@pytest.mark.redis
def test_while_redis_is_down_it_is_tried_once_a_second_not_per_request(redis_server, caplog):
    storage = storage_from_string(failsoft.PREFIX + redis_server.url, socket_connect_timeout=0.5)
    now = [100.0]
    storage.outage.clock = lambda: now[0]
    tries = []  # both ways an incr reaches Redis: the script while it is up, limits' own incr to probe
    script, shared_incr = storage._incr_with_expiry, storage.shared.incr
    storage._incr_with_expiry = lambda *args: tries.append(now[0]) or script(*args)
    storage.shared.incr = lambda *args: tries.append(now[0]) or shared_incr(*args)
    assert [storage.incr("k", 60) for _ in range(2)] == [1, 2]
    redis_server.stop()
    with caplog.at_level(logging.WARNING, "streamchat"):
        assert [storage.incr("k", 60) for _ in range(50)] == list(range(1, 51))  # in memory, from 0
        now[0] += 1.0
        storage.incr("k", 60)
    assert tries == [100.0] * 3 + [101.0]
    assert storage.check() is False
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["rate-limit storage unreachable"]


def test_spoofed_forwarded_for_does_not_reset_the_count(log_dir):
    with Gunicorn(log_dir, CHAT_RATE_LIMIT="2/minute") as server:
        got = [chat(server, {"X-Forwarded-For": f"203.0.113.{n}"})[0] for n in range(3)]
        assert got == [200, 200, 429]


def test_trusted_proxy_identifies_clients_by_forwarded_for(log_dir):
    with Gunicorn(log_dir, CHAT_RATE_LIMIT="2/minute", TRUSTED_PROXIES="1") as server:
        # Heroku's router appends the real peer: the last address is the client.
        alice = {"X-Forwarded-For": "198.51.100.7"}
        bob = {"X-Forwarded-For": "1.2.3.4, 198.51.100.8"}  # a client-sent first entry is ignored
        assert [chat(server, alice)[0] for _ in range(3)] == [200, 200, 429]
        assert [chat(server, bob)[0] for _ in range(2)] == [200, 200]
        bob_spoofing = {"X-Forwarded-For": "9.9.9.9, 198.51.100.8"}
        assert chat(server, bob_spoofing)[0] == 429


@pytest.mark.parametrize("rate_limit", ["100000/minute", "off"])  # a budget counts with the limit off too
def test_budget_turns_live_answers_into_fallback(log_dir, fake, rate_limit):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", LLM_BUDGET_PER_CLIENT="2/minute",
                  LLM_BUDGET_GLOBAL="1000/day", CHAT_RATE_LIMIT=rate_limit) as server:
        modes = []
        for n in range(3):
            status, headers, body = chat(server, text="live text", id=f"budget-{rate_limit}-{n}")
            modes.append((status, headers["X-Terminal-Mode"], headers.get("X-Terminal-Reason")))
        assert modes == [(200, "live", None), (200, "live", None), (200, "fallback", "budget")]
        assert fake.find(f"budget-{rate_limit}-2") is None  # the model was not called
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", LLM_BUDGET_GLOBAL="1/minute",
                  TRUSTED_PROXIES="1") as server:
        first = chat(server, {"X-Forwarded-For": "198.51.100.1"})[1]["X-Terminal-Mode"]
        second = chat(server, {"X-Forwarded-For": "198.51.100.2"})[1]
        assert (first, second["X-Terminal-Mode"], second["X-Terminal-Reason"]) == ("live", "fallback", "budget")


def test_cors_is_closed_by_default_and_opens_to_configured_origins(log_dir):
    origin = {"Origin": "https://shop.example"}
    with Gunicorn(log_dir) as server:
        assert "Access-Control-Allow-Origin" not in chat(server, origin)[1]
    with Gunicorn(log_dir, CORS_ORIGINS="https://shop.example") as server:
        headers = chat(server, origin)[1]
        assert headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert "X-Terminal-Mode" in headers["Access-Control-Expose-Headers"]
        status, preflight, _ = request(server.url, "OPTIONS", "/api/chat", headers={
            **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        # GET too: the AI SDK's resume request (GET /api/chat/<chatId>/stream) comes from the same sites.
        assert status == 200 and preflight["Access-Control-Allow-Methods"] == "GET, POST"
        assert "Access-Control-Allow-Origin" not in chat(server, {"Origin": "https://evil.example"})[1]


def test_security_headers_on_every_response(live):
    for method, path, body in [("GET", "/", None), ("GET", "/healthz", None), ("GET", "/static/chat.js", None),
                               ("POST", "/api/chat", chat_body("hi")), ("POST", "/api/chat", {"bad": 1}),
                               ("GET", "/nope", None)]:
        status, headers, _ = request(live.url, method, path, body)
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "same-origin", path
        assert "default-src 'none'" in headers["Content-Security-Policy"], path


def test_an_untrusted_forwarded_for_is_said_once_and_the_access_line_names_the_client(log_dir):
    with Gunicorn(log_dir) as server:
        for n in range(3):
            chat(server, {"X-Forwarded-For": f"203.0.113.{n}"})
        request(server.url, "GET", "/healthz")
        assert eventually(lambda: server.log().count("X-Forwarded-For but TRUSTED_PROXIES is 0") == 1)
        assert all(" client=127.0.0.1 " in line for line in server.access_lines())
    with Gunicorn(log_dir, TRUSTED_PROXIES="1") as server:
        chat(server, {"X-Forwarded-For": "203.0.113.9"})
        assert eventually(lambda: " client=203.0.113.9 " in server.log())
        assert "TRUSTED_PROXIES is 0" not in server.log()
