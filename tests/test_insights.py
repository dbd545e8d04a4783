"""Insights in process: masking, the entries and ratings kept, retention, the summary and its suggested rules,
the owner's page's sign-in and exports, ``./run insights``. (Real processes: test_insights_shared.py.)"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import date, datetime, timezone

import pytest

from servers import REPO
from streamchat import commands
from streamchat.domain import insights
from streamchat.domain.rules import parse_rules
from streamchat.redaction import mask_personal
from streamchat.shared.insights_store import DAY, FileInsights

TOKEN = "owner-token-0123456789"
RULES_TEXT = (REPO / "rules.yaml").read_text()
RULES = parse_rules(RULES_TEXT)


# -- masking -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed, kept", [
    ("write to jane.doe+shop@example.co.uk today", "write to [email] today"),
    ("call +44 (0)20 7946-0958", "call [phone]"),
    ("mon numéro: 06 12 34 56 78", "mon numéro: [phone]"),
    ("(555) 123-4567 please", "[phone] please"),
    ("card 4111 1111 1111 1111", "card [number]"),
    ("order 12345678 is late", "order [number] is late"),
    ("my key is sk-proj-abcdefgh12345678", "my key is [redacted]"),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer [redacted]"),
    ("password: hunter22 thanks", "password: [redacted] thanks"),
    ("token ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4 leaked", "token [redacted] leaked"),
])
def test_personal_details_are_masked(typed, kept):
    assert mask_personal(typed) == kept


@pytest.mark.parametrize("typed", ["in 2026 it costs 49.99", "3 items for 12 euros", "Grüße 👋 你好", "room 101"])
def test_ordinary_numbers_and_words_stay(typed):
    assert mask_personal(typed) == typed


def test_a_question_is_masked_before_it_is_cut():
    question = insights.mask_question("x" * 600 + " jane@example.org")
    assert "@" not in question and len(question) == insights.QUESTION_CHARS
    assert insights.mask_question("mail a@b.example " + "y" * 10) == "mail [email] " + "y" * 10


# -- the store ----------------------------------------------------------------------------------------------

def entry(question="where is my refund?", rule="default", mode="fallback", when=None, entry_id=None, **more):
    base = {"id": entry_id or insights.new_entry_id(), "time": time.time() if when is None else when,
            "api": "/api/chat", "mode": mode, "reason": "no_provider" if mode == "fallback" else "", "upstream": "rules",
            "model": "", "rule": rule if mode == "fallback" else "", "question": question, "chars": 10,
            "input_tokens": 3, "output_tokens": 4, "ttfb_ms": 12.0, "ended": "complete", "cache": ""}
    return {**base, **more}


def test_the_file_store_keeps_entries_and_the_latest_rating(tmp_path):
    store = FileInsights(str(tmp_path / "insights.jsonl"), 30, 100)
    store.add(entry(entry_id="a" * 32))
    store.add(insights.rating_of("a" * 32, "down"))
    store.add(insights.rating_of("a" * 32, "up"))
    assert store.knows("a" * 32)  # queued: a rating may come before the flush
    store.flush()
    assert store.knows("a" * 32) and not store.knows("b" * 32)
    [kept] = insights.rated(store.events(0))
    assert kept["id"] == "a" * 32 and kept["rating"] == "up"
    late_writer = insights.rating_of("a" * 32, "down", now=time.time() - 60)  # rated before, written after
    assert insights.rated([*store.events(0), late_writer])[0]["rating"] == "up"
    assert (tmp_path / "insights.jsonl").stat().st_mode & 0o777 == 0o600  # visitors' questions: the owner's alone


def test_old_entries_and_too_many_are_removed(tmp_path):
    now = [time.time()]
    store = FileInsights(str(tmp_path / "i.jsonl"), 30, 5, clock=lambda: now[0])
    store.add(entry("very old", when=now[0] - 31 * DAY))
    for n in range(7):
        store.add(entry(f"question {n}", when=now[0] - 7 + n))
    store.flush()  # the first flush also trims: past the most entries, it keeps nine tenths of them
    lines = (tmp_path / "i.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "very old" not in "".join(lines)
    assert [e["question"] for e in insights.rated(store.events(0))] == [f"question {n}" for n in range(3, 7)]
    now[0] += 30 * DAY  # a month later, nothing new: what is now too old is not shown...
    assert list(store.events(0)) == []
    store._trimmed_at = 0  # ...and goes at the next trim, a quiet site's too (once a minute)
    store.flush()
    assert (tmp_path / "i.jsonl").read_text() == ""


def test_a_line_cut_by_a_crash_is_skipped(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text(json.dumps(entry("kept")) + "\n" + '{"id": "x", "time": 1, "que')
    assert [e["question"] for e in FileInsights(str(path), 30, 100).events(0)] == ["kept"]


def test_an_unwritable_file_costs_a_warning_not_an_error(tmp_path, caplog):
    store = FileInsights(str(tmp_path / "missing-dir" / "i.jsonl"), 30, 100)
    store.add(entry())
    store.flush()
    assert store.health()["healthy"] is False and "insights store unreachable" in caplog.text


# -- the service -----------------------------------------------------------------------------------------------

@pytest.fixture
def kept_app(tmp_path):
    from app import create_app

    return create_app({"INSIGHTS_RETENTION_DAYS": "30", "INSIGHTS_PATH": str(tmp_path / "insights.jsonl"),
                       "ADMIN_TOKEN": TOKEN, "CHAT_RATE_LIMIT": "100000/minute", "RESUME_GRACE": "0"})


def ask(client, question):
    response = client.post("/api/chat", json={"messages": [{"role": "user", "content": question}]})
    response.get_data()
    return response


def kept_entries(app):
    return insights.rated(app.extensions["streamchat"].insights.events(0))


def test_nothing_is_stored_by_default(tmp_path):
    from app import create_app

    app = create_app({"INSIGHTS_PATH": str(tmp_path / "insights.jsonl"), "RESUME_GRACE": "0"})
    client = app.test_client()
    reply = ask(client, "my e-mail is jane@example.org")
    assert not (tmp_path / "insights.jsonl").exists()
    assert client.get("/healthz").get_json()["insights"]["store"].startswith("none")
    answer = client.post(f"/api/chat/streams/{reply.headers['X-Stream-Id']}/feedback", json={"rating": "up"})
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "insights_off"
    assert b"data-ratings" not in client.get("/").data
    assert client.get("/admin").status_code == 404  # no ADMIN_TOKEN


def test_each_reply_is_kept_masked_with_how_it_went(kept_app):
    client = kept_app.test_client()
    reply = ask(client, "Call me on +1 415 555 0100 about a refund, or jane@example.org")
    assert b'data-ratings="on"' in client.get("/").data
    assert b'data-ratings=\\"on\\"' in client.get("/widget.js").data  # the widget's chat rates replies too
    [kept] = kept_entries(kept_app)
    assert kept["question"] == "Call me on [phone] about a refund, or [email]"
    assert kept["id"] == reply.headers["X-Stream-Id"]
    assert (kept["api"], kept["mode"], kept["reason"], kept["rule"], kept["ended"]) == (
        "/api/chat", "fallback", "no_provider", "contact", "complete")
    assert kept["chars"] == len(reply.get_data(as_text=True)) and kept["ttfb_ms"] >= 0
    health = client.get("/healthz").get_json()["insights"]
    assert health["retention_days"] == 30 and health["store"].startswith("file ") and health["healthy"]


def test_a_redis_that_is_away_costs_a_warning_and_the_entries_never_a_reply():
    from app import create_app

    app = create_app({"REDIS_URL": "redis://127.0.0.1:9/0", "REDIS_TIMEOUT": "0.2", "INSIGHTS_RETENTION_DAYS": "30",
                      "CHAT_RATE_LIMIT": "off", "RESUME_TTL": "0"})
    client = app.test_client()
    reply = ask(client, "hello")
    assert reply.status_code == 200 and reply.headers["X-Terminal-Mode"] == "fallback"
    app.extensions["streamchat"].insights.flush()  # (the warning is logged once, by whichever flush failed first)
    health = client.get("/healthz").get_json()
    assert health["insights"]["healthy"] is False and health["status"] == "degraded"
    assert health["insights"]["error"].startswith("the insights store unreachable since")
    assert health["insights"]["store"] == "redis://127.0.0.1:9/0"


def test_replies_of_the_openai_compatible_api_are_kept_too(tmp_path):
    from app import create_app

    key = "a-service-key-of-32-characters-x"
    app = create_app({"INSIGHTS_RETENTION_DAYS": "30", "INSIGHTS_PATH": str(tmp_path / "i.jsonl"),
                      "SERVICE_API_KEYS": key})
    answer = app.test_client().post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={
        "model": "rules", "messages": [{"role": "user", "content": "What are your opening hours? sk-live-0123456789ab"}]})
    assert answer.status_code == 200
    [kept] = kept_entries(app)
    assert (kept["api"], kept["mode"], kept["reason"], kept["rule"]) == (
        "/v1/chat/completions", "fallback", "requested", "opening-hours")
    assert kept["question"] == "What are your opening hours? [redacted]" and len(kept["id"]) == 16


def test_ratings_are_checked_one_per_reply_and_changeable(kept_app):
    client = kept_app.test_client()
    stream_id = ask(client, "hello").headers["X-Stream-Id"]
    path = f"/api/chat/streams/{stream_id}/feedback"
    for body in ({"rating": "meh"}, {"rating": "up", "extra": 1}, [], {"rating": None}):
        answer = client.post(path, json=body)
        assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_rating"
    assert client.post(path, data="rating=up", content_type="application/x-www-form-urlencoded").status_code == 415
    assert client.post("/api/chat/streams/" + "Z" * 32 + "/feedback", json={"rating": "up"}).status_code == 404
    assert client.post("/api/chat/streams/short/feedback", json={"rating": "up"}).status_code == 404
    assert client.post(path, json={"rating": "down"}).get_json() == {"rating": "down"}
    assert client.post(path, json={"rating": "up"}).status_code == 200
    [kept] = kept_entries(kept_app)
    assert kept["rating"] == "up"


def test_ratings_are_rate_limited(tmp_path):
    from app import create_app

    app = create_app({"INSIGHTS_RETENTION_DAYS": "30", "INSIGHTS_PATH": str(tmp_path / "i.jsonl"),
                      "CHAT_RATE_LIMIT": "2/minute", "RESUME_GRACE": "0"})
    client = app.test_client()
    path = f"/api/chat/streams/{ask(client, 'hello').headers['X-Stream-Id']}/feedback"
    assert [client.post(path, json={"rating": r}).status_code for r in ("up", "down", "up")] == [200, 200, 429]


def test_a_reply_can_be_rated_after_its_record_expired(tmp_path):
    from app import create_app

    app = create_app({"INSIGHTS_RETENTION_DAYS": "30", "INSIGHTS_PATH": str(tmp_path / "i.jsonl"),
                      "RESUME_TTL": "0.01", "RESUME_GRACE": "0"})
    client = app.test_client()
    stream_id = ask(client, "hello").headers["X-Stream-Id"]
    time.sleep(0.05)  # the record is gone; the insights entry names the reply
    app.extensions["streamchat"].insights.flush()
    assert client.post(f"/api/chat/streams/{stream_id}/feedback", json={"rating": "down"}).status_code == 200


# -- the summary and its rules -------------------------------------------------------------------------------

def test_the_summary_counts_replies_per_day_by_mode(kept_app):
    today = date(2026, 12, 7)
    noon = datetime(2026, 12, 7, 12, tzinfo=timezone.utc).timestamp()
    entries = insights.rated([
        entry(mode="live", when=noon, ttfb_ms=100.0), entry(mode="live", when=noon, ttfb_ms=300.0, cache="hit"),
        entry(when=noon - DAY, ttfb_ms=10.0), entry(rule="greeting", when=noon - DAY, ttfb_ms=20.0, ended="stopped"),
        entry(when=noon - 9 * DAY)])  # outside the 7 days
    summary = insights.summarize(entries, RULES, 7, today=today)
    assert summary.total == 4 and summary.buckets == ["live", "cached", "fallback: no_provider"]
    assert [d.total for d in summary.days] == [0, 0, 0, 0, 0, 2, 2]
    assert summary.days[-1].replies == {"live": 1, "cached": 1}
    assert (summary.days[-1].ttfb_p50, summary.days[-1].ttfb_p95) == (100.0, 300.0)
    assert summary.days[-2].tokens == 14 and summary.endings == {"complete": 3, "stopped": 1}
    assert "greeting" not in summary.unused_rules and "pricing" in summary.unused_rules


def test_the_most_asked_show_the_first_wording_whatever_order_the_store_holds_them_in():
    now = time.time()
    flushed = [entry("what is the capital of FRANCE", when=now - 1), entry("What is the capital of France?", when=now - 2)]
    assert insights.summarize(iter(flushed), RULES, 2).top_questions == [("What is the capital of France?", 2)]


def test_a_full_store_is_summarized_in_bounded_steps_that_let_the_worker_breathe():
    now = time.time()
    events = [entry(f"topic{n} thing{n % 50}", when=now - 7000 + n, entry_id=f"{n:032d}")
              for n in range(7000)]
    events += [insights.rating_of(f"{n:032d}", "down" if n % 2 else "up") for n in range(10)]
    pauses = []
    summary = insights.summarize(iter(events), RULES, 2, top=20, pause=lambda: pauses.append(1))
    assert summary.total == 7000 and summary.ratings == {"up": 5, "down": 5}
    assert sum(day.up for day in summary.days) == 5 and len(summary.unanswered) == 20
    assert sum(g.count for g in summary.unanswered) <= insights.MOST_GROUPED  # the newest questions are grouped
    assert len(pauses) >= 7000 // insights.PAUSE_EVERY


def test_unanswered_questions_grouped_by_shared_words_make_rules_that_answer_them():
    questions = ["Do you ship to Mars?", "Can I get a parcel shipped to MARS?", "Mars delivery: how long??",
                 "Où est ma commande ?", "ma COMMANDE n'arrive pas", "<script>alert('x')</script> refund?",
                 "¿Hacéis envíos a Canarias?"]
    entries = insights.rated([entry(q) for q in questions] + [entry("what is the price", rule="pricing")])
    groups, unmatched = insights.group_unanswered(insights.unanswered(entries, RULES), RULES)
    assert unmatched == 0
    by_word = {g.words[0]: g for g in groups}
    assert by_word["mars"].count == 3 and by_word["commande"].count == 2
    assert by_word["refund"].examples == ["<script>alert('x')</script> refund?"]
    pasted = parse_rules(RULES_TEXT.rstrip("\n") + "\n" + "".join(g.rule_yaml for g in groups))
    for question in questions:
        answered = pasted.match([{"role": "user", "content": question}]).name
        assert answered.startswith("unanswered-"), (question, answered)
    assert pasted.match([{"role": "user", "content": "what is the price"}]).name == "pricing"


def test_a_suggested_rule_shows_invisible_characters_escaped():
    rule = insights.suggested_rule(["refund"], "refund \u202egnp.exe\u200b please", 0, set())
    assert "\\u202e" in rule and "\u202e" not in rule and "\\u200b" in rule
    assert parse_rules(RULES_TEXT + rule).rules[-1].replies[0].endswith("refund \u202egnp.exe\u200b please")


def test_a_question_rated_down_gets_a_rule_that_wins_over_the_one_that_answered():
    entries = insights.rated([entry("how much is shipping to Spain", rule="pricing", entry_id="d" * 32),
                              insights.rating_of("d" * 32, "down")])
    [group], _ = insights.group_unanswered(insights.unanswered(entries, RULES), RULES)
    pasted = parse_rules(RULES_TEXT + group.rule_yaml)
    assert "priority: 1" in group.rule_yaml
    assert pasted.match([{"role": "user", "content": "how much is shipping to Spain"}]).name.startswith("unanswered-")


def test_a_question_the_rules_answer_now_is_not_unanswered_any_more():
    entries = insights.rated([entry("what about the price?")])  # answered by the default, before "pricing" existed
    assert insights.unanswered(entries, RULES) == []
    masked = insights.rated([entry("mail me at [email]")])  # "[email]" is no word the visitor wrote
    assert len(insights.unanswered(masked, RULES)) == 1


# -- the owner's page ----------------------------------------------------------------------------------------------

def sign_in(client, token=TOKEN, **headers):
    return client.post("/admin/sign-in", data={"token": token}, headers=headers)


def test_the_owners_page_needs_the_token_and_keeps_nothing_in_caches(kept_app):
    client = kept_app.test_client()
    form = client.get("/admin")
    assert form.status_code == 200 and b'name="token"' in form.data and b"<script" not in form.data
    for answer in (form, sign_in(client, "wrong-token-0000000000")):
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'self'")
    assert sign_in(client, "wrong-token-0000000000").status_code == 401
    assert client.get("/admin/export.json").status_code == 401
    signed = sign_in(client)
    assert signed.status_code == 303
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie and "Secure" not in cookie
    page = client.get("/admin")
    assert page.status_code == 200 and b"Unanswered questions" in page.data and page.headers["Cache-Control"] == "no-store"


def test_the_session_cookie_is_secure_over_https_and_cannot_be_forged(kept_app):
    client = kept_app.test_client()
    signed = client.post("/admin/sign-in", data={"token": TOKEN}, base_url="https://chat.example")
    assert "Secure" in signed.headers["Set-Cookie"]
    forged = kept_app.test_client()
    expires = int(time.time()) + 3600
    forged.set_cookie("streamchat_admin", f"{expires}.nonce.c2lnbmF0dXJl", path="/admin")
    assert b'name="token"' in forged.get("/admin").data


def test_sign_ins_are_limited_then_even_the_right_token_waits(kept_app):
    client = kept_app.test_client()
    for _ in range(5):
        assert sign_in(client, "wrong-token-0000000000").status_code == 401
    limited = sign_in(client)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert b"Too many sign-in attempts" in limited.data
    other = client.post("/admin/sign-in", data={"token": TOKEN}, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other.status_code == 303  # another address is not held back


def test_exports_hold_the_period_and_spreadsheets_do_not_run_them(kept_app):
    client = kept_app.test_client()
    ask(client, "=HYPERLINK(\"http://evil.example\") shipping?")
    ask(client, "hello there")
    sign_in(client)
    exported = client.get("/admin/export.csv?days=1")
    assert exported.headers["Content-Disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [r["question"] for r in rows] == ["'=HYPERLINK(\"http://evil.example\") shipping?", "hello there"]
    assert rows[1]["rule"] == "greeting" and rows[0]["time"].endswith("+00:00")
    body = client.get("/admin/export.json?days=1").get_json()
    assert body["days"] == 1 and [e["question"] for e in body["entries"]][1] == "hello there"
    assert client.get("/admin/export.csv?days=0").status_code == 400
    assert client.get("/admin/export.xml").status_code == 404


def test_the_page_shows_what_visitors_typed_as_text(kept_app):
    client = kept_app.test_client()
    ask(client, "<img src=x onerror=alert(1)> do you ship to Mars?")
    ask(client, "Mars shipping, today?")
    sign_in(client)
    page = client.get("/admin?days=1").get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'keywords: [&#34;mars&#34;' in page or "keywords: [&#34;shipping&#34;" in page


def test_the_owners_page_says_when_insights_are_off(tmp_path):
    from app import create_app

    client = create_app({"ADMIN_TOKEN": TOKEN}).test_client()
    sign_in(client)
    assert b"Insights are off" in client.get("/admin").data
    assert client.get("/admin/export.json").status_code == 404


# -- ./run insights ----------------------------------------------------------------------------------------------

def test_the_terminal_summary_and_delete_all(tmp_path, monkeypatch, capsys):
    path = tmp_path / "insights.jsonl"
    store = FileInsights(str(path), 30, 100)
    for question in ("Do you ship to Mars?", "Mars parcels?", "hello \x1b[2J"):
        store.add(entry(question))
    store.add(entry("too old", when=time.time() - 10 * DAY))
    store.flush()
    monkeypatch.setenv("INSIGHTS_RETENTION_DAYS", "30")
    monkeypatch.setenv("INSIGHTS_PATH", str(path))
    monkeypatch.setenv("ENV_FILE", "")
    assert commands.main(["insights", "--days", "7"]) == 0
    out = capsys.readouterr().out
    assert "3 replies: 3 fallback: no_provider" in out and "too old" not in out
    assert '  - name: "unanswered-mars"' in out and "\x1b" not in out and "\\x1b[2J" in out
    assert commands.main(["insights", "--days", "x"]) == 2
    monkeypatch.setenv("INSIGHTS_RETENTION_DAYS", "5")  # a reader's setting never deletes what the service keeps
    assert commands.main(["insights"]) == 0 and "too old" in path.read_text()
    monkeypatch.delenv("INSIGHTS_RETENTION_DAYS")  # unset where the command runs: it shows what is stored
    assert commands.main(["insights", "--days", "7"]) == 0
    assert "3 replies" in capsys.readouterr().out
    assert commands.main(["insights", "--delete-all"]) == 0
    assert "4 entries" in capsys.readouterr().out and not path.exists()
