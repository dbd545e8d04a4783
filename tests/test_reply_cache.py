"""The reply cache in one process: its key, what it keeps and never keeps, hits through both APIs, a join.

Flask's test client and the in-process fake provider, with the in-memory cache. Two instances sharing one
redis-server, and a join across them, are in ``test_reply_cache_shared.py``.
"""

from __future__ import annotations

import threading
import time

import pytest

from app import create_app
from streamchat.domain.cache_key import cache_key, normalised
from streamchat.domain.providers.base import DEFAULT_OPTIONS, Options
from streamchat.errors import UpstreamServerError
from streamchat.shared.reply_cache import MemoryReplyCache, pieces_of, text_of
from streamchat.testing.fake_provider import FakeProvider
from streamchat.web.service import service

KEY = "a-service-key-of-32-characters-x"
OTHER_KEY = "another-service-key-of-32-chars-"


def ask(messages: str | list) -> list[dict[str, str]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else messages


@pytest.fixture
def provider():
    return FakeProvider(model="fake-1")


@pytest.fixture
def records():
    return []


def make_client(provider, records, tmp_path, **settings):
    app = create_app({"CHAT_RATE_LIMIT": "off", "RESUME_GRACE": "0", "SERVICE_API_KEYS": f"{KEY},{OTHER_KEY}",
                      "API_RATE_LIMIT": "off", "REPLY_CACHE_TTL": "3600", "LLM_COOLDOWN": "0", **settings},
                     providers=[provider])
    with app.app_context():
        service().relay.listeners.append(records.append)
        if service().cache is not None:
            service().cache.cleared_mark = str(tmp_path / "cleared")
    return app.test_client()


@pytest.fixture
def client(provider, records, tmp_path):
    return make_client(provider, records, tmp_path)


def chat(client, messages="What are your opening hours?", **headers):
    with client.post("/api/chat", json={"messages": ask(messages)}, headers=headers) as response:
        response.body = response.get_data()
    return response


def completion(client, key=KEY, headers=None, **body):
    payload = {"model": "fake-1", "messages": ask("What are your opening hours?"), **body}
    with client.post("/v1/chat/completions", json=payload,
                     headers={"Authorization": f"Bearer {key}", **(headers or {})}) as response:
        response.body = response.get_data()
    return response


# -- the key -------------------------------------------------------------------------------------

def test_the_key_ignores_what_a_visitor_would_not_notice_and_nothing_else():
    def key(text, **kw):
        args = {"turns": 1, "scope": "chat:", "options": DEFAULT_OPTIONS, "upstreams": "u", **kw}
        return cache_key(ask(text), **args)

    same = key("What are your opening hours?")
    assert key("  what ARE your\n opening\thours?  ") == same
    assert key("Cafe\u0301?") == key("Café?")  # NFC: the same letter, typed two ways
    assert normalised("ǅ  Straße ") == "ǆ strasse"
    for other in [key("What are your opening hours"), key("What are your opening hours?", scope="v1:k"),
                  key("What are your opening hours?", upstreams="v"), key("What are your opening hours?", model="m"),
                  key("What are your opening hours?", options=Options(max_tokens=10)),
                  key("What are your opening hours?", options=Options(temperature=0.5))]:
        assert other != same
    second_turn = ask([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "What are your opening hours?"}])
    assert cache_key(second_turn, turns=1, scope="chat:", options=DEFAULT_OPTIONS, upstreams="u") is None
    assert cache_key(second_turn, turns=2, scope="chat:", options=DEFAULT_OPTIONS, upstreams="u") is not None


def test_an_answer_gives_back_its_pieces_and_its_text_however_it_is_split():
    pieces = ["Hel", "lo\n", " wörld", "\"quoted\"", "✓", "\x00"]
    data = "".join(pieces).encode()
    assert list(pieces_of(data, [len(p.encode()) for p in pieces])) == pieces
    assert list(pieces_of(data, [])) == ["".join(pieces)]
    for cut in range(len(data) + 1):
        assert "".join(text_of(iter([data[:cut], data[cut:]]))) == "".join(pieces)


# -- hits ----------------------------------------------------------------------------------------

def test_a_question_asked_again_is_answered_from_the_first_reply(client, provider, records):
    provider.enqueue("We open ", "at nine, ", "close at six.")
    first = chat(client)
    again = chat(client, "  what are your OPENING hours? ")
    assert len(provider.history) == 1
    assert first.headers["X-Terminal-Cache"] == "miss" and again.headers["X-Terminal-Cache"] == "hit"
    assert again.body == first.body == "We open at nine, close at six.".encode()
    for name in ("X-Terminal-Mode", "X-Terminal-Provider", "X-Terminal-Model"):
        assert again.headers[name] == first.headers[name]
    assert [r.cache for r in records] == ["miss", "hit"]
    assert records[1].chunks == 3  # the original's pieces, not one lump
    assert (records[1].input_tokens, records[1].output_tokens) == (records[0].input_tokens, records[0].output_tokens)


def test_replies_that_did_not_end_complete_are_never_kept(client, provider):
    provider.enqueue("Half a rep", then=UpstreamServerError("boom"))
    cut = chat(client)
    assert cut.headers["X-Terminal-Cache"] == "miss" and b"cut short" in cut.body
    provider.enqueue(then=UpstreamServerError("down"))  # no text: the rules answer
    fallback = chat(client)
    assert fallback.headers["X-Terminal-Mode"] == "fallback"
    provider.enqueue("Complete.")
    fresh = chat(client)
    assert fresh.headers["X-Terminal-Cache"] == "miss" and fresh.body == b"Complete."
    assert chat(client).body == b"Complete." and len(provider.history) == 3


def test_a_second_turn_is_not_cached_by_default(client, provider):
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "And on Sundays?"}]
    assert "X-Terminal-Cache" not in chat(client, conversation).headers
    chat(client, conversation)
    assert len(provider.history) == 2


def test_v1_hits_say_so_and_are_kept_apart_per_service_key(client, provider):
    provider.enqueue("Nine ", "to six.")
    first = completion(client, stream=True)
    hit = completion(client, stream=True)
    assert hit.headers["X-Terminal-Cache"] == "hit" and b'"cache": "hit"' in hit.body
    assert b'"content": "Nine "' in hit.body and b'"content": "to six."' in hit.body
    whole = completion(client)  # streamed or whole: the same answer
    assert whole.json["choices"][0]["message"]["content"] == "Nine to six." and whole.json["x_terminal"]["cache"] == "hit"
    assert completion(client, key=OTHER_KEY).headers["X-Terminal-Cache"] == "miss"
    fresh = completion(client, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Terminal-Cache"] == "miss"
    assert len(provider.history) == 3
    assert first.headers["X-Terminal-Cache"] == "miss"


def test_chat_and_v1_answers_are_kept_apart(client, provider):
    chat(client)
    assert completion(client).headers["X-Terminal-Cache"] == "miss"
    assert len(provider.history) == 2


def test_a_hit_spends_no_live_budget_and_no_tokens(provider, records, tmp_path):
    client = make_client(provider, records, tmp_path, LLM_BUDGET_PER_CLIENT="1/day",
                         LLM_TOKEN_BUDGET_PER_CLIENT="100000/day")
    chat(client)
    with client.application.app_context():
        remaining = service().tokens.remaining("127.0.0.1")
    for _ in range(3):
        hit = chat(client)
        assert hit.headers["X-Terminal-Mode"] == "live" and hit.headers["X-Terminal-Cache"] == "hit"
    other = chat(client, "Another question")  # the one live reply of the budget is still the first one's
    assert other.headers["X-Terminal-Mode"] == "fallback" and other.headers["X-Terminal-Reason"] == "budget"
    assert "X-Terminal-Cache" in other.headers
    with client.application.app_context():
        assert service().tokens.remaining("127.0.0.1") == remaining


def test_off_with_a_ttl_of_zero(provider, records, tmp_path):
    client = make_client(provider, records, tmp_path, REPLY_CACHE_TTL="0")
    assert "X-Terminal-Cache" not in chat(client).headers
    chat(client)
    assert len(provider.history) == 2
    assert client.get("/healthz").json["reply_cache"]["store"].startswith("none")


def test_with_its_redis_away_there_is_no_cache_and_no_error(provider, records, tmp_path):
    from servers import free_port

    client = make_client(provider, records, tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}", RESUME_TTL="0")
    replies = [chat(client) for _ in range(2)]
    assert [(r.status_code, r.headers["X-Terminal-Mode"], r.headers["X-Terminal-Cache"]) for r in replies] == [
        (200, "live", "miss")] * 2
    assert len(provider.history) == 2
    health = client.get("/healthz").json
    assert health["reply_cache"]["store"] == "redis" and health["reply_cache"]["healthy"] is False
    assert health["status"] == "degraded"


def test_a_changed_system_prompt_or_model_never_serves_the_old_answer(provider, records, tmp_path):
    client = make_client(provider, records, tmp_path)
    chat(client)
    other_prompt = FakeProvider(model="fake-1")
    other_prompt.system_prompt = "You are terse."
    client = make_client(other_prompt, records, tmp_path)
    assert chat(client).headers["X-Terminal-Cache"] == "miss"
    client = make_client(FakeProvider(model="fake-2"), records, tmp_path)
    assert chat(client).headers["X-Terminal-Cache"] == "miss"


def test_expiry_and_clearing():
    now = [0.0]
    cache = MemoryReplyCache(ttl=60, clock=lambda: now[0], cleared_mark="/nonexistent/mark")
    assert cache.look("k", "a", fresh=False, pending_for=5).kind == "miss"
    assert cache.look("k", "b", fresh=False, pending_for=5).kind == "pending"
    cache.answers.start("a", {"provider": "p", "model": "m"}, lambda: None)
    assert cache.look("k", "b", fresh=False, pending_for=5).kind == "joined"
    cache.answers.append("a", b"Hi")
    cache.answers.finish("a", "complete")
    found = cache.look("k", "b", fresh=False, pending_for=5)
    assert (found.kind, found.body) == ("hit", b"Hi")
    now[0] = 61.0
    assert cache.look("k", "c", fresh=False, pending_for=5).kind == "miss"  # expired: c claims it
    now[0] = 70.0
    assert cache.look("k", "d", fresh=False, pending_for=5).kind == "miss"  # c never started: its claim lapsed


def test_an_answer_that_vanished_before_its_first_piece_lets_the_request_ask_on_its_own():
    from streamchat.domain.record import ReplyRecord
    from streamchat.shared.reply_cache import Found
    from streamchat.web.answers import answered_reply

    cache = MemoryReplyCache(ttl=60, cleared_mark="/nonexistent/mark")
    assert answered_reply(cache, Found("joined", "gone", {"provider": "p"}), ReplyRecord(), relay=None) is None


def test_a_cleared_cache_forgets_in_every_worker(tmp_path):
    mark = str(tmp_path / "mark")
    one, other = MemoryReplyCache(ttl=60, cleared_mark=mark), MemoryReplyCache(ttl=60, cleared_mark=mark)
    for cache in (one, other):
        cache.look("k", "a", fresh=False, pending_for=5)
        cache.answers.start("a", {}, lambda: None)
        cache.answers.finish("a", "complete")
        assert cache.look("k", "b", fresh=False, pending_for=5).kind == "hit"
    one.clear()
    other._next_mark_look = 0.0  # its once-a-second look at the mark is due
    assert other.look("k", "b", fresh=False, pending_for=5).kind == "miss"


# -- identical questions in flight ---------------------------------------------------------------

class SlowProvider(FakeProvider):
    """Pieces 0.2 s apart: a reply still streaming when the same question comes."""

    def _stream(self, call, pieces, then, wait):
        for piece in super()._stream(call, pieces, then, wait):
            yield piece
            time.sleep(0.2)


def test_an_identical_question_in_flight_follows_the_first_reply(records, tmp_path):
    provider = SlowProvider(model="fake-1")
    client = make_client(provider, records, tmp_path)
    provider.enqueue("One ", "two ", "three.", wait=0.3)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", chat(client)))
    first.start()
    time.sleep(0.1)  # the first is waiting for its model's first text: the second waits with it
    second = chat(client)
    first.join()
    assert len(provider.history) == 1
    assert second.headers["X-Terminal-Cache"] == "joined" and results["first"].headers["X-Terminal-Cache"] == "miss"
    assert second.body == results["first"].body == b"One two three."
    assert second.headers["X-Terminal-Provider"] == "fake"


def test_a_joiner_asks_on_its_own_when_the_first_falls_back(client, provider):
    provider.enqueue(then=UpstreamServerError("down"), wait=0.4)
    provider.enqueue("Live after all.")
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", chat(client)))
    first.start()
    time.sleep(0.1)
    second = chat(client)
    first.join()
    assert results["first"].headers["X-Terminal-Mode"] == "fallback"
    assert second.headers["X-Terminal-Mode"] == "live" and second.body == b"Live after all."
    assert len(provider.history) == 2
