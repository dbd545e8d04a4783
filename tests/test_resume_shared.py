"""Resumable replies across instances: two gunicorn instances of two workers each, one real redis-server."""

import json
import threading

import pytest

from servers import Gunicorn, chat_body, eventually, request
from test_resume import SLOW, partial
from streamchat.web.framing.text import CUT_SHORT_NOTICE

# Every test here starts gunicorn, redis-server, nginx or Chromium.
pytestmark = [pytest.mark.processes, pytest.mark.redis]



@pytest.fixture(scope="module")
def pair(fake, log_dir, shared_redis):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=shared_redis.url, RESUME_GRACE="5", LLM_COOLDOWN="0")
    with Gunicorn(log_dir, workers=2, **env) as a, Gunicorn(log_dir, workers=2, **env) as b:
        yield a, b


def test_a_reply_cut_on_one_instance_is_finished_through_the_other_byte_for_byte(pair, fake):
    a, b = pair
    whole = request(a.url, "POST", "/api/chat", chat_body("hi", id="shared-whole", **SLOW))[2]
    headers, received = partial(a, chat_body("hi", id="shared-cut", **SLOW), at_least=40)
    stream_id = headers["X-Stream-Id"]
    status, rest_headers, rest = request(b.url, "GET", f"/api/chat/streams/{stream_id}?offset={len(received)}")
    assert status == 200 and received + rest == whole
    assert rest_headers["X-Terminal-Mode"] == "live" and rest_headers["X-Terminal-Model"] == headers["X-Terminal-Model"]
    assert [r.id for r in fake.records].count("shared-cut") == 1
    info = json.loads(request(b.url, "GET", f"/api/chat/streams/{stream_id}/status")[2])
    assert info == {"state": "complete", "bytes": len(whole), "mode": "live"}


def test_a_stop_sent_to_the_other_instance_closes_the_upstream(pair, fake):
    a, b = pair
    ended = {}

    def read_all():
        ended["status"], ended["headers"], ended["body"] = request(
            a.url, "POST", "/api/chat", chat_body("hi", id="shared-stop", tokens=400, interval_ms=30))

    reader = threading.Thread(target=read_all)
    reader.start()
    assert fake.wait_for(lambda: (r := fake.find("shared-stop")) and r.tokens_sent >= 3 and r)
    stream_id = _newest_stream_id(a, b)
    status, _, body = request(b.url, "POST", f"/api/chat/streams/{stream_id}/stop")
    assert (status, json.loads(body)["state"]) == (202, "streaming")
    assert fake.wait_for(lambda: (r := fake.find("shared-stop")) and r.peer_closed and r)
    reader.join(15)
    assert ended["status"] == 200 and ended["headers"]["X-Stream-Id"] == stream_id  # a clean end
    assert eventually(lambda: json.loads(request(b.url, "GET", f"/api/chat/streams/{stream_id}/status")[2])["state"]
                      == "stopped")


def _newest_stream_id(*servers):
    # The reply's id is in its headers, which the reading thread holds: find it in the access logs instead.
    import redis as redis_client

    for server in servers:
        url = server.env["REDIS_URL"]
        client = redis_client.Redis.from_url(url, decode_responses=True)
        keys = [k for k in client.scan_iter("streamchat:stream:*:meta") if client.hget(k, "state") == "streaming"]
        if keys:
            return keys[0].split(":")[2]
    raise AssertionError("no reply is streaming")


def test_the_reader_of_an_instance_that_died_gets_the_notice_and_an_end(fake, log_dir, shared_redis):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=shared_redis.url, LLM_COOLDOWN="0")
    with Gunicorn(log_dir, **env) as doomed, Gunicorn(log_dir, **env) as survivor:
        headers, received = partial(doomed, chat_body("hi", id="shared-dies", tokens=400, interval_ms=30),
                                    at_least=20)
        doomed.kill()
        status, _, body = request(survivor.url, "GET", f"/api/chat/streams/{headers['X-Stream-Id']}", timeout=30)
        assert status == 200 and body.endswith(CUT_SHORT_NOTICE.encode())
        assert len(body) >= len(received) - 4096  # what was recorded before the kill (one batch may be lost)


def test_redis_stopping_mid_run_leaves_replies_streaming_without_ids(fake, log_dir, tmp_path):
    from conftest import RedisServer

    redis_server = RedisServer(tmp_path)
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=redis_server.url, LLM_COOLDOWN="0")
    try:
        with Gunicorn(log_dir, workers=2, **env) as server:
            assert "X-Stream-Id" in request(server.url, "POST", "/api/chat", chat_body("hi"))[1]
            redis_server.stop()
            # A reply already recorded when Redis went may keep its id (its record is lost); once a worker's
            # flusher finds Redis gone, it gives none.
            assert eventually(lambda: not any("X-Stream-Id" in request(server.url, "POST", "/api/chat",
                                                                       chat_body("hi"))[1] for _ in range(4)))
            replies = [request(server.url, "POST", "/api/chat", chat_body("hi", text="still here")) for _ in range(6)]
            assert [(status, body) for status, _, body in replies] == [(200, b"still here")] * 6
            assert not any("X-Stream-Id" in headers for _, headers, _ in replies)
            health = json.loads(request(server.url, "GET", "/healthz")[2])
            assert health["status"] == "degraded"
            assert "Traceback" not in server.log()
    finally:
        redis_server.stop()


def test_behind_a_round_robin_nginx_a_hang_up_resumes_and_a_stop_lands(pair, fake, log_dir):
    from servers import Nginx

    with Nginx(log_dir, list(pair)) as balancer:
        whole = request(balancer.url, "POST", "/api/chat", chat_body("hi", id="lb-whole", **SLOW))[2]
        headers, received = partial(balancer, chat_body("hi", id="lb-cut", **SLOW), at_least=40)
        stream_id = headers["X-Stream-Id"]
        # Round-robin: these land on different instances, none of them sticky.
        status, _, rest = request(balancer.url, "GET", f"/api/chat/streams/{stream_id}?offset={len(received)}")
        assert status == 200 and received + rest == whole
        assert [r.id for r in fake.records].count("lb-cut") == 1
        headers, _ = partial(balancer, chat_body("hi", id="lb-stop", tokens=400, interval_ms=30), at_least=5)
        status, _, _ = request(balancer.url, "POST", f"/api/chat/streams/{headers['X-Stream-Id']}/stop")
        assert status == 202
        assert fake.wait_for(lambda: (r := fake.find("lb-stop")) and r.peer_closed and r)


def test_a_reader_waits_through_an_upstream_silence_longer_than_the_redis_timeout(pair, fake):
    a, b = pair  # REDIS_TIMEOUT is 0.5 s: a blocking read must not be taken for Redis being away
    headers, received = partial(a, chat_body("hi", id="shared-silence", text="before and after", interval_ms=1500,
                                             first_token_ms=0), at_least=1)
    status, _, rest = request(b.url, "GET", f"/api/chat/streams/{headers['X-Stream-Id']}?offset={len(received)}")
    assert status == 200 and (received + rest).decode() == "before and after"
