"""Hostile input and awkward deployments: secrets never shown or logged, forged log lines, broken framing."""

import json
import logging
import socket

import pytest
from hypothesis import given, settings, strategies as st

from app import create_app
from servers import Gunicorn, chat_body, eventually, request
from streamchat.domain.providers.anthropic import _alternating
from streamchat.domain.validation import InvalidRequest, Limits, parse_chat_request
from streamchat.redaction import url_without_secrets
from streamchat.web.operations.access import SafeFormatter
from streamchat.web.guards.counters import ExpiringCounters

KEY = "sk-test-0123456789abcdef"


# -- /healthz shows no credential --------------------------------------------------------------------

def test_healthz_never_shows_credentials_in_urls():
    app = create_app({"OPENAI_BASE_URL": "http://user:hunter2secret@127.0.0.1:9/v1?api-key=qqqsecret#frag",
                      "RATELIMIT_STORAGE_URI": "redis://:redispassword@127.0.0.1:9/0",
                      "CHAT_RATE_LIMIT": "10/minute"})
    response = app.test_client().get("/healthz")
    text = response.get_data(as_text=True)
    for secret in ("hunter2secret", "user:", "qqqsecret", "redispassword", "frag"):
        assert secret not in text
    body = response.get_json()
    assert body["providers"][0]["base_url"] == "http://127.0.0.1:9/v1"
    assert body["rate_limit"]["storage"] == "redis://127.0.0.1:9/0"


@pytest.mark.parametrize("url, shown", [
    ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ("http://a:b@[::1]:8080/v1?x=1", "http://[::1]:8080/v1"),
    ("memory://", "memory://"),
    ("rediss://default:pw@cache.example:6380/2", "rediss://cache.example:6380/2"),
])
def test_url_without_secrets(url, shown):
    assert url_without_secrets(url) == shown


# -- what is logged -----------------------------------------------------------------------------------

def log_line(logger_name: str, message: str, *args, exc_info=None) -> str:
    record = logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, args, exc_info)
    return SafeFormatter("%(levelname)s %(name)s %(message)s").format(record)


def test_logged_messages_stay_on_one_line_and_carry_no_credential():
    create_app({"OPENAI_API_KEY": KEY})  # the configured key is remembered for redaction
    line = log_line("streamchat", "upstream said: %s", f"Incorrect API key provided: {KEY}\nINFO forged")
    assert KEY not in line and "\n" not in line and "[redacted]" in line
    assert "Bearer [redacted]" in log_line("streamchat", "echo: Authorization: Bearer abc.def-ghi")
    try:
        raise RuntimeError(f"a bug holding {KEY}")
    except RuntimeError:
        import sys
        traced = log_line("streamchat", "unexpected error", exc_info=sys.exc_info())
    assert "Traceback" in traced and KEY not in traced


@pytest.fixture(scope="module")
def keyed(fake, log_dir):
    """A server with a key, whose upstream echoes it back in an error message."""
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_API_KEY=KEY, LLM_COOLDOWN="0") as server:
        yield server


@pytest.mark.processes
def test_an_upstream_that_echoes_the_key_does_not_put_it_in_the_log(keyed):
    echo = f"Incorrect API key provided: Bearer {KEY}. You can find your API key at ..."
    status, headers, _ = request(keyed.url, "POST", "/api/chat", chat_body("hi", status=401, error_message=echo))
    assert (status, headers["X-Terminal-Reason"]) == (200, "auth_rejected")
    assert eventually(lambda: "Incorrect API key provided" in keyed.log())
    assert KEY not in keyed.log() and KEY[8:] not in keyed.log()


@pytest.mark.processes
def test_a_percent_encoded_newline_in_the_path_cannot_forge_a_log_line(keyed):
    forged = "2026-12-01 10:00:00,000 INFO streamchat.access request_id=FORGED status=200"
    path = "/x%0a" + forged.replace(" ", "%20")
    status, _, _ = request(keyed.url, "GET", path)
    assert status == 404
    line = eventually(lambda: next((l for l in keyed.access_lines() if "FORGED" in l), None))
    assert line and not line.startswith("2026-12-01 10:00:00,000")
    assert 'path="/x\\n2026-12-01 10:00:00,000 INFO' in line and " status=404 " in line
    assert not any(l.startswith(forged) for l in keyed.log().splitlines())


# -- a malformed chunked request body is the client's fault -----------------------------------------

@pytest.mark.processes
@pytest.mark.parametrize("framing", [b"zz\r\n{}\r\n0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n", b"0x3a\r\n{}\r\n0\r\n\r\n",
                                     b"2\r\n{}0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n"])
def test_a_malformed_chunked_body_is_a_400_json_error(keyed, framing):
    host, port = keyed.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + framing)
        received = b""
        while chunk := sock.recv(65536):  # the server closes: the rest of the stream cannot be trusted
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), received[:200]
    assert b'"code":"invalid_body_framing"' in body.replace(b" ", b"")
    assert "Traceback" not in keyed.log() and " ERROR " not in keyed.log()


# -- CHAT_MAX_CHARS holds for what is actually sent ---------------------------------------------------

def test_merged_turns_count_toward_the_limit():
    # 50 user messages of 20 characters under a 1,000 limit reached Anthropic as 1,098 characters.
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 20}] * 50}).encode()
    with pytest.raises(InvalidRequest) as raised:
        parse_chat_request(body, "application/json", Limits(100, 1000))
    assert raised.value.code == "too_many_characters" and "1098" in raised.value.message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(min_size=1, max_size=40)),
                min_size=1, max_size=30), st.integers(20, 600))
def test_what_is_accepted_reaches_anthropic_within_the_limit(turns, max_chars):
    messages = [{"role": role, "content": content + "!"} for role, content in turns] + [
        {"role": "user", "content": "?"}]
    try:
        clean = parse_chat_request(json.dumps({"messages": messages}).encode(), "application/json",
                                   Limits(100, max_chars))
    except InvalidRequest:
        return
    sent = _alternating(clean)
    assert sum(len(m["content"]) for m in sent) <= max_chars
    assert sent[0]["role"] == "user" and all(a["role"] != b["role"] for a, b in zip(sent, sent[1:]))


# -- in-memory rate-limit counts: no timer walking every key -------------------------------------------

def test_counters_expire_without_a_scan():
    now = [1000.0]
    counters = ExpiringCounters()
    counters.clock = lambda: now[0]
    for n in range(10_000):  # a day of distinct visitors, each with a one-day window
        counters.incr(f"client-{n}", 86400)
    counters.incr("short", 60)
    assert counters.incr("short", 60) == 2 and counters.key_count() == 10_001
    now[0] += 61
    assert counters.get("short") == 0 and counters.key_count() == 10_000
    now[0] += 86400
    assert counters.incr("next-day", 60) == 1 and counters.key_count() == 1


def test_the_app_counts_memory_limits_in_expiring_counters():
    app = create_app({"CHAT_RATE_LIMIT": "2/minute", "RATELIMIT_STORAGE_URI": "memory://"})
    from streamchat.web.guards.limits import limiter

    assert isinstance(limiter.storage, ExpiringCounters)
    client = app.test_client()
    statuses = [client.post("/api/chat", json={"messages": [{"role": "user", "content": "hi"}]}).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert app.test_client().get("/healthz").get_json()["rate_limit"]["storage"] == "memory://"


# -- slow request heads cannot hold the worker ---------------------------------------------------------

@pytest.fixture(scope="module")
def few_slots(log_dir):
    """A worker with 40 connection slots, giving a request head 1 s from its first byte."""
    with Gunicorn(log_dir, WORKER_CONNECTIONS="40", CLIENT_HEADER_TIMEOUT="1") as server:
        yield server


@pytest.mark.processes
def test_clients_trickling_their_heads_are_let_go_and_others_are_served(few_slots):
    import threading
    import time

    host, port = few_slots.url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)), timeout=10)  # connects, then sends nothing for a while
    slow = []
    for _ in range(45):  # more than the worker's slots
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((host, int(port)))
        slow.append(sock)
    answered = {}

    def normal_request():
        answered["status"] = request(few_slots.url, "GET", "/healthz", timeout=30)[0]

    closed_by_server = set()
    started = None
    deadline = time.monotonic() + 20  # bounded: the trickle stops by itself
    while len(closed_by_server) < len(slow) and time.monotonic() < deadline:
        for index, sock in enumerate(slow):
            if index in closed_by_server:
                continue
            try:
                sock.send(b"GET /healthz HTTP/1.1\r\nX-Slow: " if started is None else b"a")
                if sock.recv(1) == b"":
                    closed_by_server.add(index)
            except BlockingIOError:
                pass
            except OSError:  # reset, or not connected yet
                if started is not None:
                    closed_by_server.add(index)
        if started is None:
            started = time.monotonic()
            threading.Thread(target=normal_request, daemon=True).start()
        time.sleep(0.2)
    assert len(closed_by_server) == len(slow), "every trickling head is cut off"
    assert eventually(lambda: answered.get("status"), 30) == 200
    # A kept-alive idle connection is not a slow head: it may still send a request.
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
    for sock in slow + [idle]:
        sock.close()
