"""Never down: every upstream failure ends in a rules answer or a clean cut-short notice."""

import json
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from servers import REPO, Gunicorn, chat_body, eventually, parse_chunked, raw_exchange, request
from streamchat.errors import UpstreamUnreachable
from streamchat.domain.providers import OpenAIChat, Timeouts
from streamchat.transport.session import new_session
from streamchat.domain.breaker import CircuitBreaker
from streamchat.domain.relay import Relay
from streamchat.domain.rules import RulesStore, load_rules
from streamchat.web.framing.text import CUT_SHORT_NOTICE, plain_text

RULES = load_rules(str(REPO / "rules.yaml"))
GREETINGS = set(next(r for r in RULES.rules if r.name == "greeting").replies)
# The `live` fixture's deadlines (tests/conftest.py).
CONNECT, FIRST_TOKEN, IDLE = 1.0, 3.0, 2.0


def assert_fallback(status, headers, body, reason):
    assert status == 200
    assert headers["X-Terminal-Mode"] == "fallback"
    assert headers["X-Terminal-Reason"] == reason
    assert headers["X-Terminal-Provider"] == "rules"
    assert body.decode() in GREETINGS


@pytest.mark.parametrize("fault, reason", [
    ({"status": 401}, "auth_rejected"),
    ({"status": 403}, "auth_rejected"),
    ({"status": 429}, "rate_limited"),
    ({"status": 400}, "upstream_error"),
    ({"status": 404}, "upstream_error"),
    ({"status": 413}, "upstream_error"),
    ({"status": 500}, "upstream_error"),
    ({"status": 502}, "upstream_error"),
    ({"status": 503}, "upstream_error"),
    ({"status": 529}, "upstream_error"),
    ({"first_token_ms": 60000}, "timeout"),
    ({"fault": "keepalive", "interval_ms": 100}, "timeout"),
    ({"fault": "hang"}, "timeout"),
    ({"fault": "not_sse"}, "bad_stream"),
    ({"fault": "bad_json"}, "bad_stream"),
    ({"fault": "error_after"}, "upstream_error"),
    ({"fault": "no_text"}, "bad_stream"),
    ({"fault": "close_before_headers"}, "upstream_error"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else v)
def test_failures_before_the_first_byte_fall_back(live, fault, reason):
    started = time.monotonic()
    status, headers, body = request(live.url, "POST", "/api/chat", chat_body("Hello", **fault))
    elapsed = time.monotonic() - started
    assert_fallback(status, headers, body, reason)
    assert elapsed < CONNECT + FIRST_TOKEN + 1.0  # bounded by the configured deadlines


@pytest.mark.processes
def test_no_provider_configured(log_dir):
    with Gunicorn(log_dir) as server:
        raw = raw_exchange(server.url, chat_body("hello"))
        head, chunks, terminated = parse_chunked(raw)
        assert b"X-Terminal-Mode: fallback" in head and b"X-Terminal-Reason: no_provider" in head
        assert terminated and len(chunks) > 1  # streamed in small word groups
        assert b"".join(chunks).decode() in GREETINGS
        assert "reason=no_provider" in eventually(lambda: "\n".join(server.access_lines()))


@pytest.mark.processes
def test_connection_refused(log_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with Gunicorn(log_dir, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1") as server:
            assert_fallback(*request(server.url, "POST", "/api/chat", chat_body("hi")), "upstream_error")


@pytest.mark.processes
def test_connect_timeout(log_dir):
    # A listener that never accepts, with its one-slot backlog already full: new SYNs go unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        with Gunicorn(log_dir, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", LLM_CONNECT_TIMEOUT="0.5") as server:
            started = time.monotonic()
            assert_fallback(*request(server.url, "POST", "/api/chat", chat_body("hi")), "timeout")
            assert time.monotonic() - started < 0.5 + 12  # the connect timeout, not the first-token one
            assert "connect timed out" in server.log()
    finally:
        for s in fillers + [listener]:
            s.close()


def test_dns_failure(monkeypatch):
    # No resolver may be reached from the tests, so name resolution is the one seam we stub.
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    provider = OpenAIChat(model="m", base_url="http://llm.example.invalid/v1", api_keys=("k",),
                          session=new_session(2, "http://llm.example.invalid/v1"), timeouts=Timeouts(1, 1, 1, 5), max_tokens=5,
                          temperature=None, system_prompt="")
    with pytest.raises(UpstreamUnreachable):
        next(provider.stream([{"role": "user", "content": "hi"}]))
    relay = Relay([provider], RulesStore(str(REPO / "rules.yaml")), CircuitBreaker(0))
    reply = relay.open([{"role": "user", "content": "hello"}])
    assert (reply.record.mode, reply.record.reason) == ("fallback", "upstream_error")
    assert b"".join(plain_text(reply)).decode() in GREETINGS


class BuggyProvider(OpenAIChat):
    """A provider whose event parsing raises a bug's exception on the event carrying ``fail_on``.

    A bug has no real counterpart to trigger it with, so this is the one test double here;
    the upstream is the real fake upstream.
    """

    def __init__(self, fail_on: str, **options):
        super().__init__(**options)
        self.fail_on = fail_on

    def parse_event(self, event, usage):
        text = super().parse_event(event, usage)
        if text == self.fail_on:
            raise RuntimeError("a bug in parse_event")
        return text


def open_buggy_reply(fake, fail_on: str, tag: str):
    url = f"{fake.url}/v1"
    provider = BuggyProvider(fail_on, model="m", base_url=url, api_keys=(), session=new_session(2, url),
                             timeouts=Timeouts(1, 3, 2, 10), max_tokens=5, temperature=None, system_prompt="")
    relay = Relay([provider], RulesStore(str(REPO / "rules.yaml")), CircuitBreaker(0))
    # A read per token, so the first one is sent before the bug is reached.
    directive = json.dumps({"text": "hello there world", "first_token_ms": 0, "interval_ms": 50, "id": tag})
    return relay.open([{"role": "user", "content": f"hello\nfake: {directive}"}])


def test_a_bug_before_the_first_text_falls_back_and_is_logged(fake, caplog):
    reply = open_buggy_reply(fake, "hello ", "bug-first")
    assert (reply.record.mode, reply.record.reason, reply.record.failures) == (
        "fallback", "internal_error", [("openai", "internal_error")])
    assert b"".join(plain_text(reply)).decode() in GREETINGS
    assert "RuntimeError: a bug in parse_event" in caplog.text  # the traceback, for the site owner
    assert eventually(lambda: fake.find("bug-first").peer_closed)  # and the upstream was closed


def test_a_bug_after_the_first_text_ends_the_reply_with_the_notice(fake, caplog):
    reply = open_buggy_reply(fake, "there ", "bug-later")
    assert reply.record.mode == "live"
    assert b"".join(plain_text(reply)).decode() == "hello " + CUT_SHORT_NOTICE
    assert (reply.record.ended, reply.record.cut_reason) == ("cut_short", "internal_error")
    assert "RuntimeError: a bug in parse_event" in caplog.text
    assert eventually(lambda: fake.find("bug-later").peer_closed)


@pytest.mark.parametrize("fault, why", [
    ({"fault": "drop_after", "after": 3}, "dropped connection"),
    ({"fault": "error_after", "after": 3}, "error event"),
    ({"fault": "bad_json", "after": 3}, "malformed event"),
    ({"fault": "stall_after", "after": 3}, "stall longer than the idle timeout"),
    ({"fault": "stall_after", "after": 3, "framing": "close"}, "stall in a body that ends at close"),
])
def test_failures_after_the_first_byte_end_with_a_notice(live, fault, why):
    text = "one two three four five six"
    started = time.monotonic()
    raw = raw_exchange(live.url, chat_body("hi", text=text, first_token_ms=0, **fault))
    head, chunks, terminated = parse_chunked(raw)
    assert b"X-Terminal-Mode: live" in head
    assert terminated, "the chunked body must end with its terminating chunk"
    body = b"".join(chunks).decode()
    assert body.endswith(CUT_SHORT_NOTICE), why
    received = body[: -len(CUT_SHORT_NOTICE)]
    assert received and text.startswith(received)
    assert time.monotonic() - started < FIRST_TOKEN + IDLE + 1.0


@pytest.mark.processes
def test_maximum_duration_cuts_a_reply_short(log_dir, fake):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", LLM_MAX_DURATION="1") as server:
        raw = raw_exchange(server.url, chat_body("hi", tokens=1000, interval_ms=20, first_token_ms=0))
        head, chunks, terminated = parse_chunked(raw)
        body = b"".join(chunks).decode()
        assert terminated and body.endswith(CUT_SHORT_NOTICE)
        assert "ended=cut_short" in eventually(lambda: "\n".join(server.access_lines()))


@pytest.fixture
def chain(log_dir, fake):
    """OpenAI first, then Anthropic, both on the fake; a provider that fails cools down for 30 s."""
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=fake.url,
                  LLM_COOLDOWN="30", LLM_FIRST_TOKEN_TIMEOUT="1") as server:
        yield server


def requests_for(fake, tag):
    return [r.protocol for r in fake.records if r.id == tag]


@pytest.mark.processes
def test_next_provider_answers_when_the_first_fails(chain, fake):
    status, headers, body = request(chain.url, "POST", "/api/chat",
                                    chat_body("hi", text="from claude", id="chain1", openai={"status": 500}))
    assert (status, headers["X-Terminal-Mode"], headers["X-Terminal-Provider"], body) == (
        200, "live", "anthropic", b"from claude")
    assert requests_for(fake, "chain1") == ["openai", "anthropic"]


@pytest.mark.processes
def test_circuit_breaker_skips_a_rate_limited_provider(chain, fake):
    request(chain.url, "POST", "/api/chat", chat_body("hi", id="cb1", openai={"status": 429, "retry_after": 60}))
    status, headers, body = request(chain.url, "POST", "/api/chat", chat_body("hi", text="still here", id="cb2"))
    assert headers["X-Terminal-Provider"] == "anthropic" and body == b"still here"
    assert requests_for(fake, "cb2") == ["anthropic"]  # openai was not even tried
    health = json.loads(request(chain.url, "GET", "/healthz")[2])
    assert health["cooling_down"]["openai"]["reason"] == "rate_limited"
    assert health["cooling_down"]["openai"]["retry_in"] > 30  # retry-after: 60 beats the 30 s cool-down
    # With both providers down, the rules answer, naming the first failure.
    status, headers, body = request(chain.url, "POST", "/api/chat",
                                    chat_body("Hello", id="cb3", anthropic={"status": 503}))
    assert_fallback(status, headers, body, "rate_limited")
    assert requests_for(fake, "cb3") == ["anthropic"]


def test_circuit_breaker_tries_again_after_the_cool_down():
    now = [100.0]
    breaker = CircuitBreaker(30, clock=lambda: now[0])
    from streamchat.errors import RateLimited, ProviderRejected

    breaker.record("openai", RateLimited("429", retry_after=45))
    assert breaker.skip_reason("openai") == "rate_limited"
    now[0] += 44
    assert breaker.skip_reason("openai") == "rate_limited"
    now[0] += 1
    assert breaker.skip_reason("openai") is None
    breaker.record("openai", ProviderRejected("bad key", status=401))  # a bad key does not cool down
    assert breaker.skip_reason("openai") is None


def rewrite(path, text):
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.mark.processes
def test_rules_hot_reload_in_every_worker(log_dir, tmp_path):
    rules = tmp_path / "rules.yaml"
    shutil.copy(REPO / "rules.yaml", rules)
    with Gunicorn(log_dir, workers=2, RULES_PATH=str(rules)) as server:
        def answer(text="What is your pricing?"):
            return request(server.url, "POST", "/api/chat", chat_body(text))[2].decode()

        def answers(count=32):
            # Many at once, so that both workers answer some: one at a time, one worker may take them all
            # (and the other, never having seen the second version, rightly keeps the first).
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(lambda _: answer(), range(count)))

        assert "pricing page" in answer()
        rewrite(rules, rules.read_text().replace("Our pricing is on the pricing page.", "Plans start at 9 EUR."))
        assert all("Plans start at 9 EUR." in a for a in answers())  # both workers see it
        rewrite(rules, rules.read_text() + "\n  - name: broken\n    patterns: ['(unclosed']\n    replies: [x]\n")
        answers = answers()
        assert all("Plans start at 9 EUR." in a for a in answers), answers  # the last good rules stay
        health = json.loads(request(server.url, "GET", "/healthz")[2])
        assert health["status"] == "degraded"
        assert "regular expression" in health["rules"]["error"][0] and "line" in health["rules"]["error"][0]
        assert "keeping the last good rules" in server.log()
