"""Prometheus metrics, readiness and JSON logs: in-process, and from a real two-worker gunicorn."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import RedisServer
from servers import Gunicorn, OpenStream, chat_body, eventually, request

TOKEN = "metrics-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(scrape: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in scrape.items()
               if sample == name and set(labels.items()) <= sample_labels)


# -- in-process ----------------------------------------------------------------------------------------

def test_metrics_are_off_without_a_token_and_need_the_token_when_on():
    from app import create_app

    assert create_app({}).test_client().get("/metrics").status_code == 404
    client = create_app({"METRICS_TOKEN": TOKEN}).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["error"]["code"] == "unauthorized"
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=")
    assert ("streamchat_rules_reloads_total", frozenset({("result", "ok")})) in samples(response.get_data(as_text=True))


def test_readyz_is_503_when_no_rules_could_ever_be_loaded(tmp_path):
    from app import create_app

    ready = create_app({}).test_client().get("/readyz")
    assert ready.status_code == 200 and ready.get_json() == {"status": "ready"}
    missing = create_app({"RULES_PATH": str(tmp_path / "none.yaml")}).test_client().get("/readyz")
    assert missing.status_code == 503 and missing.get_json()["status"] == "no_rules"


# -- two real workers ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def metered(fake, log_dir, tmp_path_factory):
    """Two gevent workers counting into one metrics directory, rate limits in a real Redis, JSON logs."""
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    metrics_dir = tmp_path_factory.mktemp("metrics")
    try:
        with Gunicorn(log_dir, workers=2, METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                      LOG_FORMAT="json", OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt",
                      RESUME_GRACE="0", TRUSTED_PROXIES="1", CHAT_RATE_LIMIT="3/minute",
                      RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{redis.port}/0", LLM_COOLDOWN="0",
                      LLM_FIRST_TOKEN_TIMEOUT="3", LLM_IDLE_TIMEOUT="2", REPLY_CACHE_TTL="600") as server:
            yield server, metrics_dir
    finally:
        redis.stop()


def scrape(server) -> dict:
    status, _, body = request(server.url, "GET", "/metrics", headers=AUTH)
    assert status == 200
    return samples(body.decode())


def chat(server, client: str, prompt: str, **fake) -> tuple[int, dict, bytes]:
    return request(server.url, "POST", "/api/chat", chat_body(prompt, **fake), headers={"X-Forwarded-For": client})


def worker_pids(server) -> list[int]:
    master = server.process.pid
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def worker_holding(stream: OpenStream, pids: list[int]) -> int | None:
    """The worker whose socket is the far end of ``stream``'s connection (from /proc)."""
    port = stream.sock.getsockname()[1]
    inodes = {fields[9] for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
              if int(fields[2].split(":")[1], 16) == port}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return pid
            except OSError:
                continue
    return None


@pytest.mark.processes
def test_metrics_add_up_every_workers_replies_and_survive_a_worker_being_replaced(metered):
    server, metrics_dir = metered
    # Each worker opened a connection to the upstream ahead of need at start (warm connections).
    assert eventually(lambda: total(scrape(server), "streamchat_upstream_warm_connections_total",
                                    gen_ai_provider_name="openai", result="opened") >= 2)
    before = scrape(server)
    bodies = []
    for i in range(4):  # live, complete
        status, headers, body = chat(server, f"10.1.0.{i}", f"metrics live {i}", tokens=8)
        assert status == 200 and headers["X-Terminal-Mode"] == "live"
        bodies.append(body.decode())
    for i in range(2):  # the upstream fails before its first text: the rules answer
        status, headers, _ = chat(server, f"10.2.0.{i}", f"metrics fallback {i}", status=500)
        assert headers["X-Terminal-Mode"] == "fallback" and headers["X-Terminal-Reason"] == "upstream_error"
    for i in range(2):  # the upstream breaks after three tokens: cut short
        status, _, body = chat(server, f"10.3.0.{i}", f"metrics cut {i}", tokens=20, fault="drop_after", after=3)
        assert b"[Reply cut short:" in body
    statuses = [chat(server, "10.9.9.9", f"metrics limited {i}", tokens=4)[0] for i in range(5)]
    assert sorted(statuses) == [200, 200, 200, 429, 429]  # 3/minute, counted once in Redis for both workers

    # Streams left open on purpose, until each worker holds two; then one on each is left by its reader.
    pids = worker_pids(server)
    held: dict[int, list[OpenStream]] = {pid: [] for pid in pids}
    for i in range(40):
        if all(len(streams) >= 2 for streams in held.values()):
            break
        stream = OpenStream(server.url, f"metrics-open-{i}", {"tokens": 3000, "interval_ms": 50},
                            extra_headers=f"X-Forwarded-For: 10.4.0.{i}\r\n".encode())
        assert stream.started.wait(10)
        held[worker_holding(stream, pids)].append(stream)
    assert all(len(streams) >= 2 for streams in held.values()), "one worker took every connection"
    opened = sum(len(streams) for streams in held.values())
    assert eventually(lambda: total(scrape(server), "streamchat_open_streams") == opened)
    for streams in held.values():
        streams.pop(0).close()
    assert eventually(lambda: total(scrape(server), "streamchat_open_streams") == opened - 2)

    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("streamchat_replies_total", mode="live", ended="complete") == 7
    assert delta("streamchat_replies_total", mode="fallback", reason="upstream_error", ended="complete") == 2
    assert delta("streamchat_replies_total", mode="live", ended="cut_short") == 2
    assert delta("streamchat_replies_total", mode="live", ended="client_gone") == 2  # one on each worker
    assert delta("streamchat_replies_total", gen_ai_provider_name="openai") == 11
    assert delta("streamchat_requests_total", endpoint="/api/chat", status="429") == 2
    assert delta("streamchat_rate_limited_total", endpoint="/api/chat") == 2
    assert delta("streamchat_upstream_failures_total", gen_ai_provider_name="openai") == 4
    assert delta("streamchat_time_to_first_byte_seconds_count", mode="live") == 11
    assert delta("streamchat_time_to_first_byte_seconds_count", mode="fallback") == 2
    assert delta("streamchat_reply_duration_seconds_count") == 13
    assert total(after, "streamchat_circuit_breaker_open", gen_ai_provider_name="openai") == 0

    # Tokens: the upstream's usage for the replies that got to it, estimated for those that ended before
    # it came (cut short, or their reader left), as the JSON access lines say.
    lines = [json.loads(line) for line in server.access_lines()]
    replies = [line for line in lines if line.get("mode") == "live"]
    complete = [line for line in replies if line["ended"] == "complete"]
    assert all(line["tokens_estimated"] is False for line in complete) and len(complete) == 7
    assert sorted(line["output_tokens"] for line in complete) == [4, 4, 4, 8, 8, 8, 8]  # the fake's tokens
    assert all(line["tokens_estimated"] is True for line in replies if line["ended"] != "complete")
    assert delta("streamchat_tokens_total", gen_ai_token_type="output", estimated="false") == 44
    assert delta("streamchat_tokens_total", gen_ai_token_type="output") == sum(
        line["output_tokens"] for line in replies)
    assert all(line["input_tokens"] > 0 for line in replies)

    # A worker killed mid-reply: its counts stay, its open stream no longer counts.
    victim, survivor = pids
    os.kill(victim, signal.SIGKILL)
    assert eventually(lambda: server.log().count("Booting worker") == 3, timeout=30)
    assert all(stream.done.wait(10) for stream in held[victim])
    assert eventually(lambda: total(scrape(server), "streamchat_open_streams") == len(held[survivor]), timeout=15)
    replaced = scrape(server)
    for name in ("streamchat_replies_total", "streamchat_requests_total", "streamchat_tokens_total"):
        if name == "streamchat_requests_total":  # the scrapes since are requests too
            continue
        assert total(replaced, name) == total(after, name), name
    assert total(replaced, "streamchat_rate_limited_total") == total(after, "streamchat_rate_limited_total")
    for stream in held[survivor]:
        stream.close()
    assert eventually(lambda: total(scrape(server), "streamchat_open_streams") == 0)
    final = scrape(server)
    assert total(final, "streamchat_replies_total", ended="client_gone") == (
        total(after, "streamchat_replies_total", ended="client_gone") + len(held[survivor]))


@pytest.mark.processes
def test_the_reply_cache_counts_hits_misses_and_the_tokens_it_saved(metered):
    server, _ = metered
    before = scrape(server)
    answers = [chat(server, f"10.5.0.{i}", "metrics cached", tokens=6) for i in range(3)]
    assert [headers["X-Terminal-Cache"] for _, headers, _ in answers][0] == "miss"
    assert len({body for _, _, body in answers}) == 1
    after = scrape(server)
    saved = total(after, "streamchat_reply_cache_saved_tokens_total", gen_ai_token_type="output") - total(
        before, "streamchat_reply_cache_saved_tokens_total", gen_ai_token_type="output")
    served = sum(total(after, "streamchat_reply_cache_total", endpoint="/api/chat", result=result)
                 - total(before, "streamchat_reply_cache_total", endpoint="/api/chat", result=result)
                 for result in ("hit", "joined"))
    assert total(after, "streamchat_reply_cache_total", result="miss") - total(
        before, "streamchat_reply_cache_total", result="miss") == 1
    assert (served, saved) == (2, 12)  # the fake's 6 tokens, twice
    assert total(after, "streamchat_tokens_total", gen_ai_token_type="output") - total(
        before, "streamchat_tokens_total", gen_ai_token_type="output") == 6  # spent once
    lines = [json.loads(line) for line in server.access_lines() if "metrics cached" in line or "10.5.0." in line]
    assert sorted(line.get("cache") for line in lines if line.get("client", "").startswith("10.5.0.")) in (
        ["hit", "hit", "miss"], ["hit", "joined", "miss"], ["joined", "joined", "miss"])


@pytest.mark.processes
def test_every_log_line_is_one_json_object_with_the_access_fields(metered):
    server, _ = metered
    status, _, _ = request(server.url, "GET", "/x%0a2026-12-01%20INFO%20streamchat.access%20request_id=FORGED")
    assert status == 404
    status, _, _ = chat(server, "10.5.0.1", "json line", tokens=3)
    assert status == 200
    parsed = [json.loads(line) for line in server.log().splitlines()]  # every line, gunicorn's too, is an object
    assert {"time", "level", "logger", "message"} <= set(parsed[0])
    access = [line for line in parsed if line["logger"] == "streamchat.access"]
    forged = next(line for line in access if "FORGED" in line["path"])
    assert forged["path"].startswith("/x\n") and forged["status"] == 404
    reply = next(line for line in access if line.get("client") == "10.5.0.1")
    for field in ("request_id", "method", "path", "status", "client", "mode", "provider", "model", "reason",
                  "ttfb_ms", "duration_ms", "chunks", "bytes", "ended", "failures", "input_tokens", "output_tokens",
                  "tokens_estimated"):
        assert field in reply, field
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in parsed)
    # (gunicorn's master logs the worker the other test killed as an ERROR: the service itself logs none)
    assert Counter(line["level"] for line in parsed if line["logger"].startswith("streamchat"))["ERROR"] == 0


def test_the_grafana_dashboard_asks_only_for_metrics_the_service_serves():
    import re

    from app import create_app
    from servers import REPO

    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    wanted = {re.sub(r"_(total|bucket|count|sum)$", "", name) for expr in exprs
              for name in re.findall(r"\bstreamchat_[a-z_]+", expr)}
    served = create_app({"METRICS_TOKEN": TOKEN}).test_client().get("/metrics", headers=AUTH).get_data(as_text=True)
    families = {family.name for family in text_string_to_metric_families(served)}
    assert wanted and wanted <= families, wanted - families
