"""The benchmark's documented command runs end to end (quick mode) and reports every scenario.

Speed is judged by the benchmark itself, never here: these assertions are about
behaviour only (every stream completed in the mode expected, every abort seen
and every connection closed, the targets table written).
"""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # runs bench/run, which starts the service, the fake upstream and more

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_every_scenario_and_writes_its_report(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    result = subprocess.run([str(ROOT / "bench" / "run"), "--quick", "--out", str(report)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(report.with_suffix(".json").read_text())
    for name in ("streams_200", "streams_1000"):
        streams = figures[name]
        assert (streams["completed"], streams["errors"], streams["modes"]) == (streams["streams"], 0, ["live"])
        assert streams["upstream_chunks"] >= streams["chunks_forwarded"] > 0
    assert figures["one_client"]["errors"] == 0 and figures["bursts"]["errors"] == 0
    # The floor proxy carried the same streams to the end, so the table's floor figures measure a real run.
    assert figures["one_client"]["floor_errors"] == 0 and figures["one_client"]["floor_requests"] > 0
    assert figures["streams_1000"]["floor_completed"] == 1000
    assert figures["streams_1000"]["floor_cpu_us_per_upstream_chunk"] > 0
    assert (figures["fallback"]["completed"], figures["fallback"]["modes"]) == (200, ["fallback"])
    routing = figures["routing"]  # through three weighted upstreams as through one: every stream live
    assert routing["routed1_live"] == routing["single1_live"] == routing["streams"]
    hedge = figures["hedge"]  # one request in five is slow: hedging answers those from the second upstream
    assert hedge["off_live"] == hedge["on_live"] == hedge["streams"] and hedge["off_hedges"] == 0
    assert hedge["on_hedges"] >= hedge["streams"] // 5
    suggestions = figures["suggestions"]  # three questions, 200 visitors at once: three upstream calls
    assert (suggestions["on_upstream_calls"], suggestions["on_completed"]) == (3, suggestions["visitors"])
    assert suggestions["off_upstream_calls"] == suggestions["visitors"] == suggestions["hits_hit"]
    assert suggestions["crowd_upstream_calls"] == 3 and suggestions["crowd_joined"] == 197
    misses = figures["cache_miss"]  # every distinct question a miss, and still a live reply
    assert all(misses[f"{mode}{turn}_live"] == misses["streams"] for mode in ("redis_on", "memory_on")
               for turn in (1, 2))
    ui = figures["ui_stream"]  # the AI SDK's stream and text/plain: every stream live in both
    assert ui["ui1_live"] == ui["text1_live"] == ui["streams"] == ui["ui2_completed"]
    tls = figures["tls"]  # every stream live from the HTTPS upstream too, none failed over
    assert (tls["tls_live"], tls["plain_live"]) == (tls["streams"], tls["streams"])
    aborts = figures["aborts"]
    assert aborts["hung_up"] == 200
    assert (aborts["generating_never_closed"], aborts["silent_never_closed"]) == (0, 0)
    assert (aborts["open_streams_after"], aborts["upstream_requests_still_open"]) == (0, 0)
    assert aborts["worker_sockets_after"] == aborts["worker_sockets_before"] > 0
    text = report.read_text()
    assert "## Targets" in text and "1,000 streams: all complete | 1000 | yes | 1000 |" in text
    assert "aborts: no socket left open in the worker | 0 | yes" in text


def test_abuse_scenarios_leave_nothing_open(tmp_path):
    # Quick mode: 100 random hang-ups, 50 clients that never read, 500 trickled heads (about a minute).
    report = tmp_path / "ABUSE.md"
    result = subprocess.run([str(ROOT / "bench" / "run"), "--quick", "--only", "random_aborts,never_read,slow_heads",
                             "--out", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(report.with_suffix(".json").read_text())
    aborts = figures["random_aborts"]
    # Some replies end before their hang-up point (a write may carry several tokens): most hang up.
    assert aborts["hung_up"] > aborts["streams"] // 2 and aborts["served_afterwards"] == 3
    assert aborts["open_streams_back_to_0"] and aborts["upstream_requests_back_to_baseline"]
    assert aborts["worker_fds_leaked"] == 0
    never = figures["never_read"]
    assert never["streams_held_then"] == never["clients"]  # they did fill every buffer and wait
    assert never["all_let_go_after_s"] is not None and never["client_connections_left"] == 0
    assert never["upstream_requests_left_open"] == 0 and never["held_ttfb_errors"] == 0
    heads = figures["slow_heads"]
    assert heads["slow_open_when_normal_started"] == heads["slow_clients"]
    assert heads["slow_connections_cut_by_worker"] >= heads["slow_clients"]  # each cut once at least
    assert heads["attacked_ttfb_errors"] == 0 and heads["idle_ttfb_errors"] == 0


def test_a_quick_run_never_replaces_the_recorded_figures():
    recorded = (ROOT / "BENCHMARKS.md").read_bytes(), (ROOT / "BENCHMARKS.json").read_bytes()
    result = subprocess.run([str(ROOT / "bench" / "run"), "--quick", "--only", "fallback"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ((ROOT / "BENCHMARKS.md").read_bytes(), (ROOT / "BENCHMARKS.json").read_bytes()) == recorded
    assert json.loads((ROOT / "bench" / "logs" / "QUICK.json").read_text())["fallback"]["completed"] == 200
