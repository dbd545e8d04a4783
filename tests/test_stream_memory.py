"""An open stream keeps neither the conversation nor the upstream request body in memory,
nor layers between the server and the body that it does not need.

A reply streams for seconds to minutes, and the conversation sent with it may be
as long as ``CHAT_MAX_CHARS``: a thousand open streams must not hold a thousand
copies of it. The app runs in-process (Flask's test client) against the real fake
upstream; tracemalloc counts what was allocated under the app's own frames and is
still alive once the first chunk has arrived.
"""

from __future__ import annotations

import gc
import json
import tracemalloc

import pytest

from servers import REPO, chat_body

CONVERSATION_CHARS = 200_000
# What one open stream legitimately holds (response objects, buffers, the log line's 500 characters) is
# a few tens of KB; the conversation alone is 200 KB as text and 400 KB as the JSON sent upstream.
HELD_LIMIT = 100_000
APP_FILES = [str(REPO / "app.py"), str(REPO / "streamchat" / "*")]
# The fake upstream runs in this process too: what it keeps of each request is not the app's.
FAKES = str(REPO / "streamchat" / "testing" / "*")


def app_filters() -> list:
    """Select what was allocated under the app's frames, not under the fakes'."""
    return ([tracemalloc.Filter(True, pattern, all_frames=True) for pattern in APP_FILES]
            + [tracemalloc.Filter(False, FAKES, all_frames=True)])


@pytest.fixture
def client(fake, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{fake.url}/v1")
    from app import create_app

    app = create_app({"CHAT_RATE_LIMIT": "off", "CHAT_MAX_CHARS": str(CONVERSATION_CHARS + 1000),
                      "CHAT_MAX_BODY_BYTES": str(8 * CONVERSATION_CHARS), "LOG_USER_TEXT": "true"})
    return app.test_client()


def long_conversation(tag: str) -> dict:
    half = "é" * (CONVERSATION_CHARS // 2)  # two bytes in UTF-8, six as a JSON escape
    last = chat_body(half, id=tag, tokens=3, first_token_ms=0, interval_ms=5000)["messages"][0]
    return {"messages": [{"role": "user", "content": half}, {"role": "assistant", "content": "Go on."}, last]}


def held_after_first_chunk(client, body: dict) -> tuple[int, bytes]:
    """Return the bytes allocated under the app's frames that are alive after the first chunk, and the chunk."""
    gc.collect()
    tracemalloc.start(100)
    try:
        response = client.post("/api/chat", json=body, buffered=False)
        first = next(iter(response.response))
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    try:
        held = snapshot.filter_traces(app_filters())
        return sum(trace.size for trace in held.traces), first
    finally:
        response.close()


def test_an_open_stream_holds_no_copy_of_the_conversation(client, fake):
    client.post("/api/chat", json=chat_body("warm up", tokens=1)).close()  # the connection pool, caches
    held, first = held_after_first_chunk(client, long_conversation("long"))
    assert first  # the stream is open, waiting for the next token
    assert fake.find("long").headers["content-type"] == "application/json"
    assert held < HELD_LIMIT, f"an open stream holds {held} bytes"


def test_while_the_first_token_is_awaited_the_request_body_is_not_held(client, fake, monkeypatch):
    # The relay waits for the first token (seconds, with a slow model) and keeps the conversation for a
    # fallback; the JSON it came in must be gone by then: as "\u00e9" escapes it is six times the text.
    client.post("/api/chat", json=chat_body("warm up", tokens=1)).close()
    relay = client.application.extensions["streamchat"].relay
    held = []

    def open_and_measure(*args, **kwargs):
        gc.collect()
        traces = tracemalloc.take_snapshot().filter_traces(app_filters()).traces
        held.append(sum(trace.size for trace in traces))
        return type(relay).open(relay, *args, **kwargs)

    monkeypatch.setattr(relay, "open", open_and_measure)
    payload = json.dumps(long_conversation("waiting")).encode()  # ASCII: every "é" sent as "\u00e9"
    gc.collect()
    tracemalloc.start(100)
    try:
        with client.post("/api/chat", data=payload, content_type="application/json") as response:
            assert response.status_code == 200
    finally:
        tracemalloc.stop()
    text_bytes = CONVERSATION_CHARS  # one byte a character for "é" in a Python str
    assert len(payload) > 6 * text_bytes
    assert held and held[0] < 2 * text_bytes, f"{held[0]} bytes held for a {len(payload)}-byte body"


def test_the_access_log_keeps_only_the_start_of_the_message(client, caplog):
    with client.post("/api/chat", json=chat_body("x" * 2000 + " the end", tokens=1)) as response:
        assert response.get_data()
    line = next(r.getMessage() for r in caplog.records if r.name == "streamchat.access")
    assert f"user_text={'x' * 500!r}" in line


def test_the_server_iterates_the_reply_itself_and_closing_it_still_logs():
    # No werkzeug layer between the server and the body generator (each is a C frame in the stack
    # gevent saves for every open stream); close() still closes the body and runs call_on_close.
    from streamchat.web.framing.response import StreamingResponse

    closed, logged = [], []

    def body():
        try:
            yield b"first"
            yield b"second"
        finally:
            closed.append("body")

    generator = body()
    response = StreamingResponse(generator, content_type="text/plain; charset=utf-8")
    response.call_on_close(lambda: logged.append("access log"))
    app_iter = response.get_app_iter({"REQUEST_METHOD": "POST"})
    assert iter(app_iter) is generator
    assert next(iter(app_iter)) == b"first"
    app_iter.close()
    assert closed == ["body"] and logged == ["access log"]
    assert list(StreamingResponse(iter([b"x"]), status=204).get_app_iter({"REQUEST_METHOD": "POST"})) == []
