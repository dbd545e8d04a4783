"""End to end: real gunicorn gevent workers streaming from the fake upstream over loopback."""

import http.client
import json
import socket
from pathlib import Path

import pytest

from streamchat.testing.fake_upstream import tokens_of
from servers import Gunicorn, chat_body, eventually, parse_chunked, raw_exchange, request

pytestmark = pytest.mark.processes  # every test here starts gunicorn, redis-server, nginx or Chromium

STREAMS = Path(__file__).parent / "streams"


def open_stream(server, body):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def test_first_chunk_arrives_while_the_upstream_is_still_generating(live, fake):
    # The upstream sends three tokens and then stays silent: the client must already have all three.
    conn, response = open_stream(live, chat_body("hi", text="one two three four", fault="stall_after",
                                                 after=3, first_token_ms=0, id="order"))
    try:
        assert response.headers["X-Terminal-Mode"] == "live"
        received = b""
        while received != b"one two three ":
            piece = response.read1(65536)
            assert piece, "the stream ended early"
            received += piece
            assert b"one two three ".startswith(received)
        record = fake.find("order")
        assert record.finished is None and record.tokens_sent == 3
    finally:
        conn.close()


def test_chats_one_after_another_on_one_kept_alive_connection(live):
    # As the chat page's fetch() does: every reply ends cleanly and the connection carries the next chat,
    # a live one, a rules answer (the upstream refuses) and a live one again.
    host, port = live.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        answers, sockets = [], set()
        for body in (chat_body("hi", text="first reply"), chat_body("hello", openai={"status": 400}),
                     chat_body("hi", text="third reply")):
            conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answers.append((response.headers["X-Terminal-Mode"], response.read().decode()))
            assert not response.will_close
            sockets.add(conn.sock)
        assert len(sockets) == 1
        assert answers[0] == ("live", "first reply") and answers[2] == ("live", "third reply")
        assert answers[1][0] == "fallback" and answers[1][1]
    finally:
        conn.close()


@pytest.mark.parametrize("text", [
    "plain ascii words",
    "héllo wörld — ça va? 你好，世界 🌍🚀 Ünïcödé",
    "line one\nline two\r\n\ttabbed ```code```",
])
def test_body_is_exactly_the_upstream_text(live, text):
    # split=3 cuts every event into 3-byte network pieces, through lines and UTF-8 characters.
    status, headers, body = request(live.url, "POST", "/api/chat", chat_body("hi", text=text, split=3, split_ms=1))
    assert status == 200
    assert body.decode() == text


@pytest.mark.parametrize("framing", ["close", "chunked-close", "gzip"])
@pytest.mark.parametrize("split", [None, 40])
def test_a_body_in_any_framing_arrives_whole(live, fake, framing, split):
    # An upstream that ends its body by closing the connection, one that closes after a chunked body,
    # or a proxy that gzips the stream. Then the next chat still works (the worker is unharmed).
    text = "héllo wörld 🌍 " * 20
    pacing = {"split": split, "split_ms": 1} if split else {}
    status, headers, body = request(live.url, "POST", "/api/chat", chat_body("hi", text=text, framing=framing,
                                                                            **pacing))
    assert status == 200 and headers["X-Terminal-Mode"] == "live"
    assert body.decode() == text
    assert request(live.url, "POST", "/api/chat", chat_body("hi", tokens=3))[0:3:2] == (200, b"".join(
        t.encode() for t in tokens_of({"tokens": 3})))


def test_default_reply_arrives_chunk_by_chunk(live):
    raw = raw_exchange(live.url, chat_body("hi", tokens=12))
    head, chunks, terminated = parse_chunked(raw)
    assert terminated
    assert b"".join(chunks).decode() == "".join(tokens_of({"tokens": 12}))
    assert len(chunks) > 1


def test_headers_of_a_live_answer(live):
    status, headers, _ = request(live.url, "POST", "/api/chat", chat_body("hi"), {"X-Request-Id": "req-123"})
    assert status == 200
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Terminal-Mode"] == "live"
    assert headers["X-Terminal-Provider"] == "openai"
    assert headers["X-Terminal-Model"] == "fake-gpt"
    assert headers["X-Request-Id"] == "req-123"
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in headers
    assert headers.get("Content-Encoding", "identity") == "identity"


def test_request_id_is_generated_when_missing_or_unsafe(live):
    _, headers, _ = request(live.url, "POST", "/api/chat", chat_body("hi"), {"X-Request-Id": "bad id <script>"})
    assert len(headers["X-Request-Id"]) == 32 and " " not in headers["X-Request-Id"]


def test_upstream_request_carries_the_server_system_prompt_and_no_client_key(live, fake):
    request(live.url, "POST", "/api/chat", chat_body("hi", id="shape"), {"Authorization": "Bearer client-key"})
    record = fake.find("shape")
    assert record.path == "/v1/chat/completions"
    assert record.body["stream"] is True and record.body["model"] == "fake-gpt"
    assert record.headers["has-key"] == "False"  # keyless local server: no Authorization is sent
    assert record.headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("prompt, status", [("hi", 200), ("x" * 300_000, 413)])  # the cap is 262,144 bytes
def test_a_chunked_request_body_is_read_whole_or_refused_as_too_large(live, prompt, status):
    # Some clients (a fetch() of a stream, proxies) send the body chunked, with no Content-Length.
    body = json.dumps(chat_body(prompt)).encode()
    host, port = live.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request("POST", "/api/chat", body=(body[i:i + 4096] for i in range(0, len(body), 4096)),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    assert response.status == status
    if status == 413:  # not a JSON error about the body cut at the cap
        assert json.loads(answer)["error"]["code"] == "request_entity_too_large"


def test_upstream_request_is_compact_utf8_json(live, fake):
    text = "Привет, 世界! Ça va ?"
    status, _, _ = request(live.url, "POST", "/api/chat", chat_body(text, id="utf8"))
    record = fake.find("utf8")
    assert status == 200 and record.headers["content-type"] == "application/json"
    assert record.body["messages"][-1]["content"].startswith(text)
    # Exactly the compact UTF-8 encoding of what arrived: no "\\uXXXX" escapes, no padding spaces.
    assert record.body_size == len(json.dumps(record.body, ensure_ascii=False, separators=(",", ":")).encode())


def test_upstream_cookies_are_neither_kept_nor_sent_on(live, fake):
    cookie = "__cf_bm=abc123; path=/; HttpOnly"
    status, _, body = request(live.url, "POST", "/api/chat", chat_body("hi", tokens=2, set_cookie=cookie, id="c1"))
    assert status == 200 and body
    request(live.url, "POST", "/api/chat", chat_body("hi", tokens=2, id="c2"))
    assert fake.find("c1").connection == fake.find("c2").connection  # the same upstream connection...
    assert "cookie" not in fake.find("c2").headers  # ...and no cookie on the next user's request


def test_anthropic_end_to_end(live_anthropic, fake):
    text = "Grüße aus Wien 🇦🇹"
    status, headers, body = request(live_anthropic.url, "POST", "/api/chat",
                                    chat_body("hi", text=text, split=2, split_ms=1, id="anth"))
    assert status == 200 and body.decode() == text
    assert headers["X-Terminal-Provider"] == "anthropic" and headers["X-Terminal-Model"] == "fake-claude"
    record = fake.find("anth")
    assert record.path == "/v1/messages" and record.headers["has-key"] == "True"
    assert record.headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize("name, text", [
    ("openai_official.sse", "Bonjour à tous 👋\n\n```py\nprint(1)\n```"),
    ("azure_content_filter.sse", "Hello world"),
    ("deepseek_reasoning.sse", "Hi!"),
    ("openrouter_crlf.sse", "Ciao ragazzi"),
    ("groq_x_groq.sse", "Fast tokens."),
    ("llamacpp_no_done.sse", "Local model"),
    ("mistral_content_parts.sse", "Answer: 42"),
])
@pytest.mark.parametrize("split", [None, 7])
def test_recorded_openai_compatible_streams(live, name, text, split):
    options = {"body_file": str(STREAMS / name), "split_ms": 1}
    if split:
        options["split"] = split
    status, headers, body = request(live.url, "POST", "/api/chat", chat_body("hi", **options))
    assert (status, headers["X-Terminal-Mode"], body.decode()) == (200, "live", text)


@pytest.mark.parametrize("name, text", [
    ("anthropic_official.sse", "Grüß Gott! 🇦🇹"),
    ("anthropic_no_event_lines.sse", "Via a gateway"),
])
def test_recorded_anthropic_streams(live_anthropic, name, text):
    status, headers, body = request(live_anthropic.url, "POST", "/api/chat",
                                    chat_body("hi", body_file=str(STREAMS / name), split=5, split_ms=1))
    assert (status, headers["X-Terminal-Mode"], body.decode()) == (200, "live", text)


def test_a_proxy_that_ignores_stream_true_still_answers(live):
    status, headers, body = request(live.url, "POST", "/api/chat", chat_body("hi", text="whole reply",
                                                                             fault="json_body"))
    assert (status, headers["X-Terminal-Mode"], body) == (200, "live", b"whole reply")


@pytest.mark.parametrize("silent", [False, True], ids=["generating", "silent"])
def test_client_disconnect_closes_the_upstream(live, fake, silent):
    tag = f"disconnect-{silent}"
    fault = {"fault": "stall_after", "after": 2} if silent else {"tokens": 2000, "interval_ms": 5}
    host, port = live.url.removeprefix("http://").split(":")
    payload = json.dumps(chat_body("hi", id=tag, first_token_ms=0, **fault)).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # streaming has begun
    assert eventually(lambda: (r := fake.find(tag)) and r.tokens_sent >= 2)  # tokens do not notify: poll
    sock.close()
    record = fake.wait_for(lambda: (r := fake.find(tag)) and r.peer_closed and r)
    assert record, "the upstream connection was not closed after the client went away"
    assert record.finished is None
    assert eventually(lambda: any("ended=client_gone" in line for line in live.access_lines()))


def open_stalled_reader(server, tag: str) -> socket.socket:
    """Start a chat whose 20 MB reply cannot fit in the socket buffers, from a client that reads nothing."""
    host, port = server.url.removeprefix("http://").split(":")
    payload = json.dumps(chat_body("hi", id=tag, text="a" * 9999 + " ", repeat=2000, first_token_ms=0,
                                   interval_ms=1)).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"X-Request-Id: %s\r\nContent-Length: %d\r\n\r\n" % (tag.encode(), len(payload)) + payload)
    return sock


def access_line(server, request_id: str) -> str | None:
    return eventually(lambda: next((l for l in server.access_lines() if f"request_id={request_id} " in l), None))


def test_a_client_leaving_while_its_reply_waits_to_be_sent_is_not_an_error(live, fake):
    log_start = len(live.log())
    sock = open_stalled_reader(live, "stalled-left")
    assert fake.wait_for(lambda: (r := fake.find("stalled-left")) and r.held_back), "the service never waited"
    sock.close()  # while the worker waits for the client to drain its buffer
    assert fake.wait_for(lambda: fake.find("stalled-left").peer_closed), "the upstream was not closed"
    assert "ended=client_gone" in access_line(live, "stalled-left")
    assert "Error handling request" not in live.log()[log_start:]


@pytest.fixture(scope="module")
def impatient(fake, log_dir):
    """gunicorn that lets a client stall for 1 s only."""
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", CLIENT_TIMEOUT="1", RESUME_GRACE="0") as server:
        yield server


def test_a_client_that_reads_nothing_is_given_up_on(impatient, fake):
    sock = open_stalled_reader(impatient, "stalled-idle")
    # The client keeps its connection open and never reads: after 1 s the service lets go.
    assert fake.wait_for(lambda: (r := fake.find("stalled-idle")) and r.peer_closed), "still streaming"
    assert "ended=client_gone" in access_line(impatient, "stalled-idle")
    assert "the client read nothing for 1 s: closing its stream" in impatient.log()
    assert "Error handling request" not in impatient.log()
    received = 0
    while piece := sock.recv(1 << 20):  # what was buffered, then the end of the connection
        received += len(piece)
    assert 0 < received < 20_000_000
    sock.close()


def test_a_request_body_that_does_not_arrive_in_time_is_a_408(impatient):
    host, port = impatient.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"messages\": [")  # and the rest never comes
        answer = b""
        while piece := sock.recv(65536):  # the error, then the connection closes
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_upstream_connections_are_reused(live, fake):
    before = fake.connections
    for n in range(5):
        status, _, _ = request(live.url, "POST", "/api/chat", chat_body("hi", tokens=3, id=f"reuse{n}"))
        assert status == 200
    used = {fake.find(f"reuse{n}").connection for n in range(5)}
    assert len(used) == 1 and fake.connections - before <= 1


def test_access_log_line(live):
    request(live.url, "POST", "/api/chat", chat_body("secret user words"), {"X-Request-Id": "log-check"})
    line = eventually(lambda: next((l for l in live.access_lines() if "request_id=log-check" in l), None))
    for field in ("status=200", "mode=live", "provider=openai", "ttfb_ms=", "duration_ms=", "chunks=", "bytes=",
                  "ended=complete"):
        assert field in line
    assert "secret user words" not in live.log()


def test_healthz_names_providers_never_keys(live_anthropic):
    status, _, body = request(live_anthropic.url, "GET", "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    assert [p["name"] for p in health["providers"]] == ["anthropic"]
    assert "test-key" not in body.decode()


def test_client_leaving_before_the_first_token_closes_the_upstream(live, fake):
    # The model is still "thinking" (first token far beyond the deadline) when the client hangs up:
    # the wait ends at once with 499 instead of running into the first-token deadline and a fallback.
    host, port = live.url.removeprefix("http://").split(":")
    payload = json.dumps(chat_body("hi", id="early-leave", first_token_ms=60000)).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"X-Request-Id: early-leave\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    assert fake.wait_for(lambda: fake.find("early-leave"))
    sock.close()
    assert fake.wait_for(lambda: fake.find("early-leave").peer_closed)
    line = eventually(lambda: next((l for l in live.access_lines() if "request_id=early-leave" in l), None))
    assert "status=499" in line


def test_env_file_is_honoured_and_the_environment_wins(log_dir, fake, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"OPENAI_BASE_URL={fake.url}/v1\nOPENAI_MODEL=from-dotenv\nLLM_MAX_TOKENS=7\n")
    from servers import Gunicorn

    with Gunicorn(log_dir, ENV_FILE=str(env_file), LLM_MAX_TOKENS="9") as server:
        status, headers, _ = request(server.url, "POST", "/api/chat", chat_body("hi", id="dotenv"))
        assert (status, headers["X-Terminal-Mode"], headers["X-Terminal-Model"]) == (200, "live", "from-dotenv")
        assert fake.find("dotenv").body["max_tokens"] == 9  # a real environment variable beats .env
