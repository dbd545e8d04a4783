"""Resumable replies in one process: stream ids, reading a reply again from any byte, grace, stop.

One gunicorn worker (the in-memory stream records need one process) answering from the fake upstream.
"""

import http.client
import json

import pytest

from servers import Gunicorn, chat_body, eventually, request

SLOW = {"tokens": 60, "interval_ms": 30, "first_token_ms": 20}  # about 2 s: time to hang up mid-reply


@pytest.fixture(scope="module")
def resumable(fake, log_dir):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", RESUME_GRACE="3", LLM_COOLDOWN="0") as server:
        yield server


def partial(server, body: dict, at_least: int) -> tuple[dict, bytes]:
    """POST /api/chat, read at least ``at_least`` bytes of the body, then hang up; return headers and bytes."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        received = b""
        while len(received) < at_least:
            piece = response.read1(65536)
            assert piece, "the reply ended before the hang-up"
            received += piece
        return dict(response.headers), received
    finally:
        conn.sock and conn.sock.close()
        conn.close()


@pytest.mark.processes
def test_every_reply_can_be_read_again_whole_or_from_a_byte(resumable):
    status, headers, body = request(resumable.url, "POST", "/api/chat", chat_body("hi", text="héllo wörld ✓ done"))
    stream_id = headers["X-Stream-Id"]
    assert status == 200 and len(stream_id) >= 22  # 192 random bits, URL-safe
    again = request(resumable.url, "GET", f"/api/chat/streams/{stream_id}")
    assert again[0] == 200 and again[2] == body
    for name in ("X-Terminal-Mode", "X-Terminal-Provider", "X-Terminal-Model", "Content-Type"):
        assert again[1][name] == headers[name]
    assert request(resumable.url, "GET", f"/api/chat/streams/{stream_id}?offset=7")[2] == body[7:]
    assert request(resumable.url, "GET", f"/api/chat/streams/{stream_id}?offset={len(body)}")[2] == b""
    status = json.loads(request(resumable.url, "GET", f"/api/chat/streams/{stream_id}/status")[2])
    assert status == {"state": "complete", "bytes": len(body), "mode": "live"}
    # The fallback is recorded too, with its headers.
    fallback = request(resumable.url, "POST", "/api/chat", chat_body("hi", status=500))
    again = request(resumable.url, "GET", f"/api/chat/streams/{fallback[1]['X-Stream-Id']}")
    assert again[2] == fallback[2] and again[1]["X-Terminal-Reason"] == "upstream_error"


@pytest.mark.processes
@pytest.mark.parametrize("path, status, code", [
    ("/api/chat/streams/{id}?offset=1", 400, "invalid_offset"),  # inside the two bytes of "é"
    ("/api/chat/streams/{id}?offset=99999", 400, "invalid_offset"),
    ("/api/chat/streams/{id}?offset=-1", 400, "invalid_offset"),
    ("/api/chat/streams/{id}?offset=x", 400, "invalid_offset"),
    ("/api/chat/streams/{id}?offset=%C2%B2", 400, "invalid_offset"),  # "²": a digit to str.isdigit
    ("/api/chat/streams/nope", 404, "unknown_stream"),
    ("/api/chat/streams/nope/status", 404, "unknown_stream"),
])
def test_bad_offsets_and_unknown_ids_are_clear_json_errors(resumable, path, status, code):
    stream_id = request(resumable.url, "POST", "/api/chat", chat_body("hi", text="éa"))[1]["X-Stream-Id"]
    got, headers, body = request(resumable.url, "GET", path.format(id=stream_id))
    assert (got, headers["Content-Type"], json.loads(body)["error"]["code"]) == (status, "application/json", code)
    got, _, body = request(resumable.url, "POST", "/api/chat/streams/nope/stop")
    assert (got, json.loads(body)["error"]["code"]) == (404, "unknown_stream")


@pytest.mark.processes
def test_a_client_that_hangs_up_mid_reply_gets_the_rest_and_the_upstream_served_it_once(resumable, fake):
    whole = request(resumable.url, "POST", "/api/chat", chat_body("hi", id="resume-whole", **SLOW))[2]
    headers, received = partial(resumable, chat_body("hi", id="resume-cut", **SLOW), at_least=40)
    assert len(received) < len(whole)
    rest = request(resumable.url, "GET", f"/api/chat/streams/{headers['X-Stream-Id']}?offset={len(received)}")
    assert rest[0] == 200 and received + rest[2] == whole
    assert [r.id for r in fake.records].count("resume-cut") == 1
    assert fake.find("resume-cut").peer_closed is None  # served to its end, not cut


@pytest.mark.processes
def test_with_nobody_back_within_the_grace_the_upstream_is_closed(resumable, fake):
    headers, _ = partial(resumable, chat_body("hi", id="resume-abandoned", tokens=400, interval_ms=30), at_least=10)
    assert fake.wait_for(lambda: (r := fake.find("resume-abandoned")) and r.peer_closed and r, timeout=15)
    status = json.loads(request(resumable.url, "GET", f"/api/chat/streams/{headers['X-Stream-Id']}/status")[2])
    assert status["state"] == "cut_short" and status["bytes"] > 10


@pytest.mark.processes
def test_stop_ends_the_reply_cleanly_and_closes_the_upstream(resumable, fake):
    host, port = resumable.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.request("POST", "/api/chat", body=json.dumps(chat_body("hi", id="resume-stop", tokens=400, interval_ms=30)),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    first = response.read1(65536)
    stream_id = response.headers["X-Stream-Id"]
    status, _, body = request(resumable.url, "POST", f"/api/chat/streams/{stream_id}/stop")
    assert (status, json.loads(body)) == (202, {"state": "streaming", "stopping": True})
    rest = response.read()  # http.client raises on a body without its terminating chunk
    conn.close()
    assert fake.wait_for(lambda: (r := fake.find("resume-stop")) and r.peer_closed and r)
    info = json.loads(request(resumable.url, "GET", f"/api/chat/streams/{stream_id}/status")[2])
    assert info["state"] == "stopped" and info["bytes"] == len(first + rest)
    assert request(resumable.url, "GET", f"/api/chat/streams/{stream_id}")[2] == first + rest  # no notice
    status, _, body = request(resumable.url, "POST", f"/api/chat/streams/{stream_id}/stop")
    assert (status, json.loads(body)) == (202, {"state": "stopped", "stopping": False})


@pytest.mark.processes
def test_a_reader_follows_a_reply_still_streaming_to_its_end(resumable):
    headers, received = partial(resumable, chat_body("hi", id="resume-follow", **SLOW), at_least=1)
    stream_id = headers["X-Stream-Id"]
    assert eventually(lambda: json.loads(request(resumable.url, "GET",
                                                 f"/api/chat/streams/{stream_id}/status")[2])["state"] == "streaming")
    status, _, body = request(resumable.url, "GET", f"/api/chat/streams/{stream_id}?offset=0")
    assert status == 200 and body.startswith(received) and len(body) > len(received)
    assert json.loads(request(resumable.url, "GET", f"/api/chat/streams/{stream_id}/status")[2])["state"] == "complete"


def test_memory_records_expire_after_their_ttl_and_stay_under_their_cap():
    from streamchat.shared.memory_streams import MemoryStreams
    from streamchat.shared.streams import UnknownStream

    now = [0.0]
    store = MemoryStreams(ttl=60, clock=lambda: now[0], cap=1000)
    for n in range(5):
        store.start(f"s{n}", {}, stop=lambda: None)
        store.append(f"s{n}", b"x" * 300)
        store.finish(f"s{n}", "complete")
    kept = [n for n in range(5) if _known(store, f"s{n}")]
    assert kept == [2, 3, 4] and store.health()["bytes_kept"] == 900  # the oldest went first
    now[0] += 61
    assert not _known(store, "s4") and store.health()["bytes_kept"] == 0
    with pytest.raises(UnknownStream):
        store.info("s4")


def _known(store, stream_id):
    from streamchat.shared.streams import UnknownStream

    try:
        store.info(stream_id)
        return True
    except UnknownStream:
        return False
