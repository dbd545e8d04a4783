"""Graceful restarts: SIGTERM with replies open, against real gunicorn workers (and Redis for the records)."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from servers import Gunicorn, OpenStream, chat_body, eventually, parse_chunked, request
from streamchat.web.framing.text import RESTARTING_NOTICE

pytestmark = pytest.mark.processes  # every test here starts gunicorn, redis-server, nginx or Chromium

DRAIN_SECONDS = 3
KEY = "drain-service-key-0123456789"
SHORT = {"tokens": 20, "interval_ms": 50, "first_token_ms": 20}  # about 1 s: ends within the drain time
LONG = {"tokens": 2000, "interval_ms": 50, "first_token_ms": 20}  # about 100 s: still running when it is up


@pytest.fixture(params=["unrecorded", "recorded-in-redis"])
def instances(request, fake, log_dir, tmp_path):
    """The instance to restart, and (with Redis) a second one that stays, to read its records."""
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt", DRAIN_SECONDS=str(DRAIN_SECONDS),
               LLM_IDLE_TIMEOUT="5", LLM_COOLDOWN="0", SERVICE_API_KEYS=KEY)
    if request.param == "unrecorded":
        with Gunicorn(log_dir, workers=2, RESUME_TTL="0", **env) as server:
            yield server, None
        return
    redis = request.getfixturevalue("redis_server")
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis.port}/0", RESUME_GRACE="0")
    with Gunicorn(log_dir, workers=2, **env) as server, Gunicorn(log_dir, workers=1, **env) as other:
        yield server, other


def test_sigterm_lets_short_replies_finish_and_ends_long_ones_with_the_restarting_notice(instances, fake):
    server, other = instances
    tag = f"drain-{server.port}"
    streams = [OpenStream(server.url, f"{tag}-short-{i}", SHORT) for i in range(3)]
    streams += [OpenStream(server.url, f"{tag}-long-{i}", LONG) for i in range(3)]
    assert all(stream.started.wait(15) for stream in streams)
    # The OpenAI-compatible API too: a whole reply being read, and a stream.
    api_answers: dict[str, tuple] = {}
    for stream in (False, True):
        body = {"model": "fake-gpt", "stream": stream, "messages": chat_body("api", id=f"{tag}-api-{stream}",
                                                                             **LONG)["messages"]}
        threading.Thread(target=lambda s=stream, b=body: api_answers.__setitem__(s, request(
            server.url, "POST", "/v1/chat/completions", b, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)),
            daemon=True).start()
    assert fake.wait_for(lambda: all(fake.find(f"{tag}-api-{s}") for s in (False, True)))
    # A readiness probe already on its way (its head half sent) when the SIGTERM comes.
    probe = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    probe.sendall(b"GET /readyz HTTP/1.1\r\n")

    server.process.terminate()
    assert eventually(lambda: server.log().count("draining:") == 2), server.log()  # each worker, at once
    probe.sendall(b"Host: test\r\n\r\n")
    answer = b""
    while data := probe.recv(65536):  # it answers with Connection: close
        answer += data
    probe.close()
    assert answer.startswith(b"HTTP/1.1 503") and b'"draining"' in answer

    assert server.process.wait(DRAIN_SECONDS + 10) == 0  # before gunicorn's own deadline would kill anything
    for stream in streams:
        assert stream.done.wait(5)
        head, chunks, terminated = parse_chunked(stream.raw)
        assert terminated, f"no terminating chunk: {stream.raw[-80:]!r}"
        body = b"".join(chunks).decode()
        short = streams.index(stream) < 3
        assert body.endswith(RESTARTING_NOTICE) != short, body[-120:]
        if not short:
            assert len(body) > len(RESTARTING_NOTICE)  # the text so far, then the notice
    for i in range(3):  # the upstream of every reply ended is closed, not left generating
        record = fake.find(f"{tag}-long-{i}")
        assert fake.wait_for(lambda: record.peer_closed) and record.finished is None
        assert fake.find(f"{tag}-short-{i}").finished
    assert "Traceback" not in server.log()
    whole_status, _, whole = api_answers[False]
    answer = json.loads(whole)
    assert whole_status == 200 and answer["choices"][0]["message"]["content"].endswith(RESTARTING_NOTICE)
    assert answer["x_terminal"] == {"mode": "live", "reason": "restarting", "ended": "cut_short",
                                    "usage_estimated": True}
    stream_status, _, streamed = api_answers[True]
    assert stream_status == 200 and streamed.endswith(b"data: [DONE]\n\n")
    assert json.dumps(RESTARTING_NOTICE).encode() in streamed

    if other is not None:  # the records were ended and written before the worker exited: ask again elsewhere
        stream = streams[3]
        stream_id = next(line.split(b": ", 1)[1].decode() for line in stream.raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
                         if line.lower().startswith(b"x-stream-id:"))
        status, _, body = request(other.url, "GET", f"/api/chat/streams/{stream_id}/status")
        assert status == 200 and json.loads(body) | {"bytes": 0} == {"state": "cut_short", "bytes": 0,
                                                                      "mode": "live", "reason": "restarting"}
        status, _, replayed = request(other.url, "GET", f"/api/chat/streams/{stream_id}")
        assert status == 200 and replayed == b"".join(parse_chunked(stream.raw)[1])
