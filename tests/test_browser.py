"""The chat page in a real headless Chromium, against real gunicorn and the fake upstream."""

import json

import pytest

from conftest import ARTIFACTS
from servers import Gunicorn, eventually

pytestmark = pytest.mark.browser

@pytest.fixture
def open_page(browser):
    """Open the chat page of a server; fails the test on any script error or CSP violation."""
    contexts, problems = [], []

    def open_(server, allowed=(), **context_options):
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda msg: msg.type == "error" and not any(a in msg.text for a in allowed)
                and problems.append(f"console: {msg.text}"))
        response = page.goto(server.url + "/")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        return page

    yield open_
    for context in contexts:
        context.close()
    assert problems == []


def say(page, message, **fake):
    page.fill("#input", message + (f"\nfake: {json.dumps(fake)}" if fake else ""))
    page.press("#input", "Enter")


def last_reply(page):
    return page.locator(".message.assistant").last


@pytest.fixture(scope="module")
def offline(log_dir):
    with Gunicorn(log_dir) as server:
        yield server


def test_text_appears_before_the_stream_ends_and_stop_closes_the_upstream(live, fake, open_page):
    page = open_page(live)
    say(page, "hi", text="alpha beta gamma delta", fault="stall_after", after=3, first_token_ms=0, id="b-stop")
    reply = last_reply(page)
    reply.locator(".content", has_text="alpha beta gamma").wait_for()
    assert fake.find("b-stop").finished is None  # the upstream is still "generating"
    assert "streaming" in reply.get_attribute("class")
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    assert fake.wait_for(lambda: fake.find("b-stop").peer_closed), "stop must close the upstream connection"
    reply.locator(".tag", has_text="stopped").wait_for()
    assert reply.locator(".content").inner_text() == "alpha beta gamma "  # the partial reply stays
    assert page.is_visible("#send")


def test_escape_stops_a_reply(live, fake, open_page):
    page = open_page(live)
    say(page, "hi", text="one two three", fault="stall_after", after=1, first_token_ms=0, id="b-esc")
    last_reply(page).locator(".content", has_text="one").wait_for()
    page.keyboard.press("Escape")
    assert fake.wait_for(lambda: fake.find("b-esc").peer_closed)
    last_reply(page).locator(".tag", has_text="stopped").wait_for()


def test_multibyte_text_arrives_intact(live, open_page):
    text = "Grüße 👋🏽 你好世界 — naïve café 🚀"
    page = open_page(live)
    say(page, "hi", text=text, split=1, split_ms=1)  # every byte its own network read
    page.wait_for_selector("#send:visible")
    assert last_reply(page).locator(".content").inner_text() == text
    assert last_reply(page).locator(".tag").is_hidden()  # no model name in the visitor's face...
    assert last_reply(page).locator(".tag").get_attribute("title") == "fake-gpt"  # ...only in the tooltip


def test_model_text_is_text_not_html_and_code_is_readable(live, open_page):
    text = 'See <img src=x id=injected> here:\n```python\nprint("hi")\n```\nDone.'
    page = open_page(live)
    say(page, "hi", text=text)
    page.wait_for_selector("#send:visible")
    reply = last_reply(page)
    assert page.locator("#injected").count() == 0
    assert "<img src=x id=injected>" in reply.inner_text()
    assert reply.locator("pre code").inner_text() == 'print("hi")'
    assert reply.locator("pre").get_attribute("data-language") == "python"


def test_cut_short_reply_is_labelled(live, open_page):
    page = open_page(live)
    say(page, "hi", text="one two three four", fault="drop_after", after=2, first_token_ms=0)
    last_reply(page).locator(".tag", has_text="cut short").wait_for()
    assert last_reply(page).locator(".content").inner_text() == "one two "


def test_offline_badge(offline, open_page):
    page = open_page(offline)
    say(page, "hello")
    page.wait_for_selector("#mode.offline")
    assert page.inner_text("#mode") == "Prepared answer"  # not "offline": the visitor's network is fine
    assert last_reply(page).locator(".tag").inner_text() == "Prepared answer"
    assert last_reply(page).locator(".tag").get_attribute("title") == "Prepared answer (no_provider)"
    assert "offline mode" in last_reply(page).locator(".content").inner_text()


def test_rate_limited_message_keeps_the_input(log_dir, open_page):
    with Gunicorn(log_dir, CHAT_RATE_LIMIT="1/minute") as server:
        page = open_page(server, allowed=("429",))
        say(page, "hello")
        page.wait_for_selector("#send:visible")
        say(page, "my second question")
        page.wait_for_selector("#error:visible")
        assert "try again in" in page.inner_text("#error-text").lower()
        assert page.input_value("#input") == "my second question"  # nothing lost
        assert page.locator(".message.user").count() == 1


def test_network_failure_offers_retry(log_dir, open_page):
    server = Gunicorn(log_dir).start()
    page = open_page(server, allowed=("Failed to load resource", "net::ERR"))
    server.kill()
    say(page, "are you there?")
    page.wait_for_selector("#retry:visible")
    assert page.input_value("#input") == "are you there?"


def test_thread_survives_reload_and_new_chat_clears_it(live, open_page):
    page = open_page(live)
    say(page, "first question", text="first answer")
    page.wait_for_selector("#send:visible")
    page.reload()
    assert page.locator(".message.user .content").inner_text() == "first question\nfake: {\"text\": \"first answer\"}"
    assert page.locator(".message.assistant .content").inner_text() == "first answer"
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    page.reload()
    assert page.locator(".message").count() == 0
    assert page.evaluate("document.activeElement.id") == "input"


def test_sends_the_whole_conversation(live, fake, open_page):
    page = open_page(live)
    say(page, "one", text="reply one")
    page.wait_for_selector("#send:visible")
    say(page, "two", text="reply two", id="b-history")
    page.wait_for_selector("#send:visible")
    roles = [m["role"] for m in fake.find("b-history").body["messages"]]
    assert roles == ["user", "assistant", "user"]


def test_a_long_chat_sends_the_newest_messages_that_fit_the_limits(live, fake, open_page):
    # 60 saved messages of 1,500 characters: far over CHAT_MAX_MESSAGES (50) and CHAT_MAX_CHARS (32,000).
    page = open_page(live)
    saved = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n} " + "x" * 1488,
              "meta": {}} for n in range(60)]
    page.evaluate("thread => localStorage.setItem('streamchat.thread.v1', JSON.stringify(thread))", saved)
    page.reload()
    say(page, "latest", text="still answering", id="b-long")
    last_reply(page).locator(".content", has_text="still answering").wait_for()
    assert not page.is_visible("#error")
    sent = [m for m in fake.find("b-long").body["messages"] if m["role"] != "system"]
    assert sum(len(m["content"]) for m in sent) <= 32_000
    assert sent[0]["role"] == "user"
    assert sent[-2]["content"].startswith("message 59 ") and sent[-1]["content"].startswith("latest")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("device, viewport", [("desktop", {"width": 1280, "height": 800}),
                                              ("phone", {"width": 390, "height": 844})])
def test_screenshots(offline, live, open_page, scheme, device, viewport):
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(live, viewport=viewport, color_scheme=scheme)
    say(page, "Show me some code", text="Here is a loop:\n```python\nfor i in range(3):\n    print(i)\n```\nThat prints 0 to 2.")
    page.wait_for_selector("#send:visible")
    say(page, "And a long answer", tokens=60)
    page.wait_for_selector("#send:visible")
    page.fill("#input", "A draft message")
    path = ARTIFACTS / f"chat-{device}-{scheme}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000


def test_stop_ends_the_reply_on_the_server_even_while_it_would_outlive_its_client(fake, log_dir, open_page):
    # With a resume grace a hang-up alone would keep the upstream going for 30 s: Stop calls the stop endpoint.
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", RESUME_GRACE="30") as server:
        page = open_page(server)
        say(page, "hi", text="alpha beta gamma delta", fault="stall_after", after=3, first_token_ms=0,
            id="b-stop-grace")
        reply = last_reply(page)
        reply.locator(".content", has_text="alpha").wait_for()
        page.click("#stop")
        assert fake.wait_for(lambda: fake.find("b-stop-grace").peer_closed), "stop must close the upstream"
        reply.locator(".tag", has_text="stopped").wait_for()
        assert "path=/api/chat/streams/" in server.log() and "/stop status=202" in server.log()


@pytest.fixture(scope="module")
def resumable(fake, log_dir):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", RESUME_GRACE="10") as server:
        yield server


def test_a_reload_mid_reply_continues_the_same_reply_in_the_same_bubble(resumable, fake, open_page):
    text = " ".join(f"wörd{n}" for n in range(60))  # two-byte characters: offsets must fall between them
    page = open_page(resumable)
    say(page, "hi", text=text, interval_ms=40, first_token_ms=0, id="b-reload")
    last_reply(page).locator(".content", has_text="wörd10").wait_for()
    # The page saves its progress every 500 ms: reload once it has saved some mid-reply. (Polled from
    # here: wait_for_function evaluates its predicate with eval, which the page's CSP refuses.)
    assert eventually(lambda: page.evaluate("JSON.parse(localStorage.getItem('streamchat.thread.v1') || '[]')"
                                            ".some((m) => m.meta && m.meta.streaming && m.meta.bytes > 0)"))
    page.reload()
    reply = last_reply(page)
    reply.locator(".content", has_text="wörd59").wait_for(timeout=15000)
    assert eventually(lambda: page.evaluate("!document.querySelector('.streaming')"))
    assert reply.locator(".content").inner_text() == text
    assert page.locator(".message.assistant").count() == 1
    assert [r.id for r in fake.records].count("b-reload") == 1  # the upstream was asked once


@pytest.mark.parametrize("words", [0, 2, 6, 12, 30])
def test_a_reload_at_any_moment_of_a_reply_continues_it_in_its_bubble(resumable, fake, open_page, words):
    # From right after the first byte (before any periodic save) to well into the reply: 40 ms a word.
    text = " ".join(f"wörd{n}" for n in range(50))
    page = open_page(resumable)
    tag = f"b-reload-{words}"
    say(page, "hi", text=text, interval_ms=40, first_token_ms=0, id=tag)
    last_reply(page).locator(".content", has_text=f"wörd{words}").wait_for()  # word 0 is the first byte
    page.reload()
    reply = last_reply(page)
    reply.locator(".content", has_text="wörd49").wait_for(timeout=15000)
    assert eventually(lambda: page.evaluate("!document.querySelector('.streaming')"))
    assert reply.locator(".content").inner_text() == text
    assert page.locator(".message.assistant").count() == 1 and page.locator(".message.user").count() == 1
    assert [r.id for r in fake.records].count(tag) == 1  # the upstream was asked once


def test_two_seconds_without_a_network_mid_reply_and_the_reply_completes(resumable, fake, open_page):
    from servers import TcpRelay

    relay = TcpRelay(resumable)  # the page talks to the server through it; cutting it cuts the network
    try:
        text = " ".join(f"part{n}" for n in range(50))
        page = open_page(relay, allowed=("ERR_", "Failed to load resource"))
        say(page, "hi", text=text, interval_ms=50, first_token_ms=0, id="b-offline")
        reply = last_reply(page)
        reply.locator(".content", has_text="part5").wait_for()
        page.context.set_offline(True)
        relay.cut(2.0)  # the open connection is cut, and for two seconds no new one gets through
        assert eventually(lambda: "reconnecting" in page.evaluate("document.getElementById('status').textContent"))
        page.context.set_offline(False)
        reply.locator(".content", has_text="part49").wait_for(timeout=20000)
        assert eventually(lambda: page.evaluate("!document.querySelector('.streaming')"))
        assert reply.locator(".content").inner_text() == text
        assert "connection lost" not in reply.locator(".tag").inner_text()
        assert relay.cuts >= 2 and "path=/api/chat/streams/" in resumable.log()  # resumed, not just finished
        assert [r.id for r in fake.records].count("b-offline") == 1
    finally:
        relay.close()


MARKDOWN = ("# Title\n\nSome **bold**, *italic* and `code`, a [link](https://example.com/a?b=1).\nA line break.\n\n"
            "- one\n- two with `x`\n\n1. first\n2. second\n\n> quoted *words*\n\n```js\nlet a = 1 < 2;\n```\n\n"
            "| a | b |\n|---|---|\n| 1 | **2** |\n\n---\nEnd.")
XSS = [
    "[click](javascript:alert(1))", "[x](JaVaScRiPt:alert(1))", "[x](data:text/html,<script>alert(1)</script>)",
    "[x](vbscript:msgbox)", "<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "&lt;b&gt; &amp; &#60;i&#62;",
    "**<svg onload=alert(1)>**", "[<img src=x onerror=alert(1)>](https://ok.example)", "`<script>`",
    "```\n<script>alert(1)</script>\n```", "[a](https://x.example \"t\")", "***__nested *unclosed", "[half](https://ex",
    "<a href=javascript:alert(1)>a</a>", "![img](https://example.com/x.png)", "> <iframe src=javascript:alert(1)>",
    "| <b>x</b> |\n|---|\n| [y](javascript:1) |", "\u202e**rtl**", "[x](  javascript:alert(1)  )",
]
ALLOWED_TAGS = {"P", "BR", "STRONG", "EM", "CODE", "PRE", "A", "H3", "H4", "H5", "H6", "UL", "OL", "LI", "BLOCKQUOTE",
                "TABLE", "THEAD", "TBODY", "TR", "TH", "TD", "HR"}


def rendered(page, chunks: list[str]) -> dict:
    """Feed ``chunks`` to one renderer, as a stream would; return its HTML, tags, links and the plain text."""
    return page.evaluate("""(chunks) => {
        const box = document.createElement("div");
        const renderer = window.streamchatMarkdown.render(box);
        let text = "";
        for (const chunk of chunks) { text += chunk; renderer.update(text); }
        return {html: box.innerHTML, tags: [...box.querySelectorAll("*")].map((n) => n.tagName),
                links: [...box.querySelectorAll("a")].map((a) => [a.getAttribute("href"), a.rel, a.target]),
                attributes: [...box.querySelectorAll("*")].flatMap((n) => [...n.attributes].map((a) => a.name)),
                text: box.textContent};
    }""", chunks)


def test_markdown_renders_the_same_whole_and_cut_at_every_boundary(live, open_page):
    page = open_page(live)
    whole = rendered(page, [MARKDOWN])
    assert whole["tags"].count("LI") == 4 and {"H3", "STRONG", "EM", "CODE", "PRE", "BLOCKQUOTE", "TABLE", "HR",
                                                "OL", "UL", "BR"} <= set(whole["tags"])
    assert whole["links"] == [["https://example.com/a?b=1", "noopener noreferrer nofollow", "_blank"]]
    for cut in range(1, len(MARKDOWN)):
        assert rendered(page, [MARKDOWN[:cut], MARKDOWN[cut:]])["html"] == whole["html"], f"cut at {cut}"
    assert rendered(page, list(MARKDOWN))["html"] == whole["html"]  # one character at a time


def test_markdown_keeps_hostile_text_inert(live, open_page):
    page = open_page(live)
    page.evaluate("() => { window.alerted = false; window.alert = () => { window.alerted = true; }; }")
    for sample in XSS:
        for chunks in ([sample], list(sample)):
            result = rendered(page, chunks)
            assert page.evaluate("window.alerted") is False, (sample, result["html"])
            assert set(result["tags"]) <= ALLOWED_TAGS, (sample, result["html"])
            assert set(result["attributes"]) <= {"href", "rel", "target", "data-language", "start"}, sample
            assert all(href.startswith(("https://", "http://", "mailto:")) for href, _, _ in result["links"]), sample
    assert page.evaluate("window.alerted") is False
    # Text stays text: the tags and entities a model writes are shown as written.
    assert rendered(page, ["<script>alert(1)</script> &amp;"])["text"] == "<script>alert(1)</script> &amp;"


def test_a_markdown_reply_streams_into_the_page(live, open_page):
    page = open_page(live)
    say(page, "md", text="## Heading\n\nA **bold** word and a [link](https://example.com).\n\n- a\n- b\n",
        split=7, split_ms=5)
    page.wait_for_selector("#send:visible")
    reply = last_reply(page)
    assert reply.locator("h4").inner_text() == "Heading" and reply.locator("strong").inner_text() == "bold"
    assert reply.locator("li").count() == 2
    assert reply.locator("a").get_attribute("rel") == "noopener noreferrer nofollow"
