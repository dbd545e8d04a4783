"""Insights with real processes: two gunicorn instances on one redis-server, the owner's page in headless Chromium,
ratings from the chat page, and one instance with no Redis whose file outlives a restart.

Instance A answers from the fake upstream (live); instance B's upstream answers every request with a 503, so
the rules answer there (fallback). Both keep insights in the same Redis: either shows everything.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time

import pytest
import requests

from conftest import ARTIFACTS
from servers import REPO, Gunicorn, chat_body, clean_env, eventually, request
from streamchat.domain.rules import parse_rules
from streamchat.testing.fake_upstream import FakeUpstream

pytestmark = [pytest.mark.processes, pytest.mark.redis, pytest.mark.browser]

TOKEN = "owner-token-0123456789"
LIVE = ["What is the capital of France?", "what is the capital of FRANCE", "Tell me a joke"]
MARS = ["Do you ship to Mars?", "Can you ship parcels to Mars?",
        "Text me at +33 6 12 34 56 78 or jane@example.org about shipping to Mars"]
HOSTILE = "<script>alert('x')</script><b>bold</b> is there a refund?"
FALLBACK = ["what are your opening hours?", *MARS, HOSTILE, "¿Hacéis envíos a Canarias?", "blah " * 700 + "zebra"]


@pytest.fixture(scope="module")
def failing():
    server = FakeUpstream(defaults={"status": 503}).start_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(fake, failing, log_dir, shared_redis):
    common = dict(REDIS_URL=shared_redis.url, INSIGHTS_RETENTION_DAYS="30", ADMIN_TOKEN=TOKEN, TRUSTED_PROXIES="1",
                  LLM_COOLDOWN="0", RESUME_GRACE="0", LLM_FIRST_TOKEN_TIMEOUT="3", LLM_IDLE_TIMEOUT="5")
    with Gunicorn(log_dir, workers=2, OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt", **common) as a, \
            Gunicorn(log_dir, OPENAI_BASE_URL=f"{failing.url}/v1", **common) as b:
        yield a, b


@pytest.fixture
def pages(browser):
    """New pages in their own browser contexts; fails the test on any script error or CSP violation."""
    contexts, problems = [], []

    def open_(**context_options):
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        # A refused sign-in (401, 429) is logged by the browser as a resource that failed to load: no problem.
        page.on("console", lambda msg: msg.type == "error" and "Failed to load resource" not in msg.text
                and problems.append(f"console: {msg.text}"))
        return page

    yield open_
    for context in contexts:
        context.close()
    assert problems == []


def signed_in_session(base: str) -> requests.Session:
    session = requests.Session()
    assert session.post(base + "/admin/sign-in", data={"token": TOKEN}, allow_redirects=False).status_code == 303
    return session


def exported(base: str) -> list[dict]:
    return signed_in_session(base).get(base + "/admin/export.json?days=1").json()["entries"]


def stopped_from_the_other_instance(a: Gunicorn, b: Gunicorn) -> None:
    """A reply on A, stopped through B mid-stream."""
    host, port = a.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.request("POST", "/api/chat", json.dumps(chat_body("stop me", fault="stall_after", after=2, tokens=9)),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read1(1)
    stream_id = response.headers["X-Stream-Id"]
    assert request(b.url, "POST", f"/api/chat/streams/{stream_id}/stop")[0] == 202
    response.read()
    conn.close()


def test_the_owners_page_shows_what_both_instances_answered(pair, pages, tmp_path):
    a, b = pair
    for question in LIVE:
        assert request(a.url, "POST", "/api/chat", chat_body(question))[1]["X-Terminal-Mode"] == "live"
    request(a.url, "POST", "/api/chat", chat_body("cut me", fault="drop_after", after=2, tokens=6))
    stopped_from_the_other_instance(a, b)
    reasons = {request(b.url, "POST", "/api/chat", chat_body(q))[1]["X-Terminal-Reason"] for q in FALLBACK}
    [reason] = reasons

    # A visitor rates a reply on the chat page: down, then changes their mind.
    chat = pages()
    chat.goto(a.url + "/")
    chat.fill("#input", "How do I rate a reply?")
    chat.press("#input", "Enter")
    reply = chat.locator(".message.assistant").last
    reply.locator(".rating button[data-rating='down']").click()
    reply.locator(".rating button[data-rating='down'][aria-pressed='true']").wait_for()
    reply.locator(".rating button[data-rating='up']").click()
    reply.locator(".rating button[data-rating='up'][aria-pressed='true']").wait_for()
    chat.reload()  # the rating is kept with the thread
    chat.locator(".message.assistant .rating button[data-rating='up'][aria-pressed='true']").wait_for()

    sent = len(LIVE) + 2 + len(FALLBACK) + 1
    assert eventually(lambda: len(exported(b.url)) == sent), "every reply of both instances, seen from B"

    page = pages()
    page.goto(a.url + "/admin")
    page.fill("#token", "not-the-token-0000000")
    page.click("button[type=submit]")
    assert page.locator("#sign-in-error").inner_text() == "That is not the admin token."
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.locator("#total-replies").wait_for()
    assert page.locator("#total-replies").inner_text() == str(sent)
    totals = page.locator(".totals")
    assert totals.locator("[data-bucket='live']").inner_text() == str(len(LIVE) + 3)
    assert totals.locator(f"[data-bucket='fallback: {reason}']").inner_text() == str(len(FALLBACK))
    assert (page.locator("#rated-up").inner_text(), page.locator("#rated-down").inner_text()) == ("1", "0")
    endings = {e.get_attribute("data-ending"): e.inner_text() for e in page.locator(".ending").all()}
    assert endings == {"complete": f"complete {sent - 2}", "cut_short": "cut short 1", "stopped": "stopped 1"}
    assert page.locator("#top-questions li").first.inner_text() == "2 " + LIVE[0]  # asked twice, as the rules see it
    assert page.locator("svg.chart rect").count() >= 2

    # What visitors typed is masked, and shows as text.
    html = page.content()
    assert "jane@example.org" not in html and "12 34 56 78" not in html
    assert page.get_by_text("Text me at [phone] or [email] about shipping to Mars", exact=False).count() >= 1
    assert page.locator("q", has_text="<script>alert('x')</script><b>bold</b>").count() >= 1

    # The unanswered questions about Mars, grouped, with a rule that answers them once pasted.
    group = page.locator("article.group", has=page.locator(".word", has_text="mars"))
    assert group.locator(".count").inner_text() == "3"
    rule = group.locator("pre.yaml").inner_text()
    copy = tmp_path / "rules.yaml"
    copy.write_text((REPO / "rules.yaml").read_text().rstrip("\n") + "\n" + rule)
    pasted = parse_rules(copy.read_text())
    for question in MARS:
        assert pasted.match([{"role": "user", "content": question}]).name.startswith("unanswered-"), question
    assert page.locator("#unused-rules li", has_text="pricing").count() == 1

    page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)
    # Usable on a phone: nothing wider than the screen but what scrolls in its own box (tables, rules).
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(ARTIFACTS / "admin-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # The period and the exports.
    page.select_option("#days", "30")
    page.click(".period button")
    assert page.locator("#total-replies").inner_text() == str(sent)
    assert page.url.endswith("/admin?days=30")

    page.click("button.link")  # sign out
    page.locator("#token").wait_for()


def test_sign_in_attempts_are_counted_across_instances(pair, pages):
    a, b = pair
    page = pages(extra_http_headers={"X-Forwarded-For": "198.51.100.23"})  # one client, through a proxy we trust
    for base in (a.url, b.url, a.url, b.url, a.url):
        page.goto(base + "/admin")
        page.fill("#token", "wrong-token-00000000000")
        page.click("button[type=submit]")
        assert page.locator("#sign-in-error").inner_text() == "That is not the admin token."
    page.goto(b.url + "/admin")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    assert page.locator("#sign-in-error").inner_text().startswith("Too many sign-in attempts: try again in")
    other = pages(extra_http_headers={"X-Forwarded-For": "198.51.100.99"})
    other.goto(b.url + "/admin")
    other.fill("#token", TOKEN)
    other.click("button[type=submit]")
    other.locator("#total-replies").wait_for()


def test_without_redis_the_file_outlives_a_restart_and_nothing_is_kept_by_default(log_dir, tmp_path):
    path = tmp_path / "insights.jsonl"
    env = dict(INSIGHTS_PATH=str(path), ADMIN_TOKEN=TOKEN, RESUME_GRACE="0")
    with Gunicorn(log_dir, **env) as server:  # the default: INSIGHTS_RETENTION_DAYS=0
        status, headers, _ = request(server.url, "POST", "/api/chat", chat_body("mail jane@example.org"))
        rating = request(server.url, "POST", f"/api/chat/streams/{headers['X-Stream-Id']}/feedback", {"rating": "up"})
        assert rating[0] == 404 and json.loads(rating[2])["error"]["code"] == "insights_off"
        health = json.loads(request(server.url, "GET", "/healthz")[2])
        assert health["insights"]["store"].startswith("none")
        assert "insights: off" in server.log()
    assert not path.exists()

    now = time.time()
    old = {"id": "o" * 32, "time": now - 40 * 86_400, "mode": "fallback", "rule": "default", "question": "too old"}
    recent = {"id": "r" * 32, "time": now - 2 * 86_400, "mode": "fallback", "reason": "no_provider", "rule": "default",
              "question": "kept"}
    path.write_text("".join(json.dumps(e) + "\n" for e in (old, recent)))
    env["INSIGHTS_RETENTION_DAYS"] = "30"
    with Gunicorn(log_dir, workers=2, **env) as server:
        assert f"insights: kept 30 days in file {path}" in server.log()
        for question in ("Do you deliver to Lyon?", "hello"):
            request(server.url, "POST", "/api/chat", chat_body(question))
        assert eventually(lambda: path.read_text().count("\n") == 3), "the old line trimmed, the new ones written"
    with Gunicorn(log_dir, **env) as server:
        request(server.url, "POST", "/api/chat", chat_body("Do you deliver to Paris?"))
        session = signed_in_session(server.url)
        entries = eventually(lambda: (e := session.get(server.url + "/admin/export.json?days=7").json()["entries"])
                             and len(e) == 4 and e)
        # In the order the workers' flushers wrote them: each carries its time.
        assert [e["question"] for e in sorted(entries, key=lambda e: e["time"])] == [
            "kept", "Do you deliver to Lyon?", "hello", "Do you deliver to Paris?"]
        assert "too old" not in path.read_text()
    out = subprocess.run([sys.executable, "-m", "streamchat.commands", "insights", "--days", "7"], cwd=REPO,
                         env=clean_env(**env), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "4 replies: 4 fallback: no_provider" in out.stdout and '"unanswered-deliver"' in out.stdout
