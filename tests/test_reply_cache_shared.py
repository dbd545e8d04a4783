"""The reply cache across instances: two gunicorn instances of two workers each, one real redis-server.

A question asked on one instance is answered on the other from the first reply, with no upstream request;
identical questions sent at once to both make one upstream request, and one visitor's Stop leaves the
others' replies whole.
"""

import http.client
import json

import pytest

from servers import Gunicorn, chat_body, eventually, request

pytestmark = [pytest.mark.processes, pytest.mark.redis]

KEY = "a-service-key-of-32-characters-x"
TTL = 600


@pytest.fixture(scope="module")
def pair(fake, log_dir, shared_redis):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=shared_redis.url, RESUME_GRACE="2", LLM_COOLDOWN="0",
               REPLY_CACHE_TTL=str(TTL), SERVICE_API_KEYS=KEY, LLM_TOKEN_BUDGET_GLOBAL="10000000/day")
    with Gunicorn(log_dir, workers=2, **env) as a, Gunicorn(log_dir, workers=2, **env) as b:
        yield a, b


def calls(fake, name: str) -> int:
    return [r.id for r in fake.records].count(name)


def test_a_question_asked_on_one_instance_is_answered_on_the_other_with_no_upstream_request(pair, fake,
                                                                                           shared_redis):
    a, b = pair
    import redis as redis_client
    redis = redis_client.Redis.from_url(shared_redis.url, decode_responses=True)
    first = request(a.url, "POST", "/api/chat", chat_body("What are your hours?", id="hours", tokens=8))
    tokens_spent = {k: redis.get(k) for k in redis.scan_iter("streamchat:tokens:*")}
    again = request(b.url, "POST", "/api/chat", chat_body("  what are your HOURS? ", id="hours", tokens=8))
    assert first[1]["X-Terminal-Cache"] == "miss" and again[1]["X-Terminal-Cache"] == "hit"
    assert again[2] == first[2] and calls(fake, "hours") == 1
    assert again[1]["X-Terminal-Mode"] == "live" and again[1]["X-Terminal-Model"] == first[1]["X-Terminal-Model"]
    assert {k: redis.get(k) for k in redis.scan_iter("streamchat:tokens:*")} == tokens_spent  # a hit spends none
    # It expires REPLY_CACHE_TTL seconds after it ended.
    answers = [k for k in redis.scan_iter("streamchat:answer:*") if not k.endswith(":meta")]
    assert answers and all(0 < redis.pttl(k) <= TTL * 1000 for k in answers)
    # Cleared by the owner's command, it is asked again.
    from streamchat.commands import main
    import os
    os.environ["REDIS_URL"] = shared_redis.url
    try:
        assert main(["cache", "clear"]) == 0
    finally:
        del os.environ["REDIS_URL"]
    assert request(b.url, "POST", "/api/chat", chat_body("What are your hours?", id="hours", tokens=8))[1][
        "X-Terminal-Cache"] == "miss"
    assert calls(fake, "hours") == 2


def test_what_is_never_kept_and_what_makes_a_miss(pair, fake):
    a, b = pair
    for name, directive in [("cut", {"fault": "drop_after", "after": 2}), ("fallback", {"status": 500})]:
        for server in (a, b):
            request(server.url, "POST", "/api/chat", chat_body("q", id=f"never-{name}", tokens=6, **directive))
        assert calls(fake, f"never-{name}") == 2, name
    second_turn = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": 'q\nfake: {"id": "turn2"}'}]}
    for server in (a, b):
        assert "X-Terminal-Cache" not in request(server.url, "POST", "/api/chat", second_turn)[1]
    assert calls(fake, "turn2") == 2
    # On /v1: the model, the options and the service key are part of the key; a client may ask for a fresh answer.
    auth = {"Authorization": f"Bearer {KEY}"}
    base = {"model": "gpt-4o-mini", "messages": chat_body("q", id="v1-key", tokens=4)["messages"]}
    seen = []
    for body, headers in [(base, {}), (base, {}), ({**base, "max_tokens": 50}, {}), ({**base, "temperature": 0.3}, {}),
                          (base, {"Cache-Control": "no-cache"}), (base, {})]:
        status, response_headers, reply = request(b.url, "POST", "/v1/chat/completions", body, {**auth, **headers})
        seen.append((status, response_headers["X-Terminal-Cache"], json.loads(reply)["x_terminal"]["cache"]))
    # Right after a reply ends its answer may not be marked complete yet (the records' writes are batched):
    # the same question then follows it to its end, still with no upstream request.
    answered = ["hit" if s[1] == "joined" else s[1] for s in seen]
    assert answered == ["miss", "hit", "miss", "miss", "miss", "hit"]
    assert all(s[0] == 200 and s[1] == s[2] for s in seen)
    assert calls(fake, "v1-key") == 4


def test_a_stopped_reply_is_never_kept(pair, fake):
    a, b = pair
    body = chat_body("q", id="never-stopped", tokens=200, interval_ms=20)
    conn, response = _open(a, body)
    request(b.url, "POST", f"/api/chat/streams/{response.getheader('X-Stream-Id')}/stop")
    response.read()
    conn.close()
    assert eventually(lambda: (r := fake.find("never-stopped")) is not None and r.peer_closed is not None)
    assert request(b.url, "POST", "/api/chat", chat_body("q", id="never-stopped", tokens=6))[1][
        "X-Terminal-Cache"] == "miss"


def test_identical_questions_at_once_on_both_instances_make_one_upstream_request(pair, fake):
    a, b = pair
    body = chat_body("Tell me about your shop", id="crowd", tokens=60, interval_ms=30, first_token_ms=300)
    opened = [_open(server, body) for _ in range(25) for server in (a, b)]
    kinds = [response.getheader("X-Terminal-Cache") for _, response in opened]
    assert sorted(set(kinds)) == ["joined", "miss"] and kinds.count("miss") == 1
    # The visitor whose request calls the model presses Stop, and so does one who joined: the others read on.
    owner = kinds.index("miss")
    joiner = kinds.index("joined")
    for index in (owner, joiner):
        stream_id = opened[index][1].getheader("X-Stream-Id")
        assert json.loads(request(b.url, "POST", f"/api/chat/streams/{stream_id}/stop")[2])["stopping"] is True
    bodies = []
    for conn, response in opened:
        bodies.append(response.read())
        conn.close()
    record = fake.find("crowd")
    assert calls(fake, "crowd") == 1 and record.tokens_sent == 60 and record.peer_closed is None
    whole = [bodies[i] for i in range(len(bodies)) if i not in (owner, joiner)]
    assert len(set(whole)) == 1 and len(whole[0].split()) == 60
    for index in (owner, joiner):
        assert whole[0].startswith(bodies[index]) and len(bodies[index]) < len(whole[0])


def test_the_shared_reply_goes_on_when_the_visitor_who_asked_first_hangs_up(pair, fake):
    a, b = pair
    body = chat_body("Where are you?", id="hang-up", tokens=40, interval_ms=30, first_token_ms=200)
    opened = [_open(server, body) for server in (a, b, a, b)]
    kinds = [response.getheader("X-Terminal-Cache") for _, response in opened]
    owner = kinds.index("miss")
    opened[owner][1].read1(1)
    opened[owner][0].sock.close()  # gone, with RESUME_GRACE=2: nobody comes back for its own record
    bodies = [response.read() for i, (_, response) in enumerate(opened) if i != owner]
    for conn, response in opened:
        response.close()
        conn.close()
    assert len(set(bodies)) == 1 and len(bodies[0].split()) == 40
    assert calls(fake, "hang-up") == 1 and fake.find("hang-up").peer_closed is None


def _open(server, body) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("POST", "/api/chat", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def test_nothing_is_left_streaming_and_nothing_went_wrong(pair):
    # Every carried-on reply ended: nothing streams any more on either instance.
    for server in pair:
        assert eventually(lambda: json.loads(request(server.url, "GET", "/healthz")[2])["open_streams"] == 0)
        health = json.loads(request(server.url, "GET", "/healthz")[2])["reply_cache"]
        assert health["store"] == "redis" and health["healthy"] is True
        assert "Traceback" not in server.log()
        assert "cache=joined" in server.log() or "cache=hit" in server.log()
