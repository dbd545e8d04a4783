"""The one-tag widget on another site's page, in a real headless Chromium: strict CSP, hostile CSS."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading

import pytest

from servers import Gunicorn, free_port

# Every test here starts gunicorn, redis-server, nginx or Chromium.
pytestmark = [pytest.mark.processes, pytest.mark.browser]


HOSTILE_CSS = """* { all: unset !important; }
html { font-size: 40px !important; }
button { display: none !important; }
div, p { color: rgb(1, 2, 3) !important; font-family: serif !important; }
.probe { display: block !important; font-size: 13px !important; }
"""


class HostSite:
    """Somebody's site on its own origin: a page that embeds the widget, under a strict CSP."""

    def __init__(self, service_url: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        service = service_url

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/host.css":
                    self._send("text/css", HOSTILE_CSS.encode())
                    return
                extra = {"/inline": ' data-mount="#chat-here"', "/left-open": ' data-position="bottom-left" data-open'}
                tag = "" if self.path.startswith("/plain") else (
                    f'<script src="{service}/widget.js" async data-title="Shop help" '
                    f'data-greeting="Hi from the shop" data-accent="#cc0066"' + extra.get(self.path, "") + '></script>')
                page = (f'<!doctype html><html><head><link rel="stylesheet" href="/host.css">{tag}</head>'
                        f'<body><p id="probe" class="probe">The host\'s own text</p><div id="chat-here"></div>'
                        f'</body></html>')
                self._send("text/html", page.encode(), csp=f"default-src 'none'; script-src {service}; "
                                                            f"connect-src {service}; style-src 'self'")

            def _send(self, kind, body, csp=None):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                if csp:
                    self.send_header("Content-Security-Policy", csp)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def embedded(fake, log_dir):
    """The service, with one site listed in EMBED_ORIGINS; that site; and a site that is not listed."""
    listed_port = free_port()
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt", LLM_COOLDOWN="0",
                  EMBED_ORIGINS=f"http://127.0.0.1:{listed_port}", RESUME_GRACE="0") as service:
        site, stranger = HostSite(service.url, listed_port), HostSite(service.url)
        try:
            yield service, site, stranger
        finally:
            site.close()
            stranger.close()


@contextlib.contextmanager
def watched_page(browser):
    """Yield a page in a context of its own and the list its errors and console warnings are written to."""
    problems: list[str] = []
    context = browser.new_context()
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda msg: msg.type in ("error", "warning") and problems.append(f"console: {msg.text}"))
        yield page, problems
    finally:
        context.close()


def probe_style(page) -> dict:
    return page.evaluate("""() => { const s = getComputedStyle(document.getElementById("probe"));
        return {color: s.color, font: s.fontFamily, size: s.fontSize, display: s.display}; }""")


def say(page, message: str, **fake):
    page.fill("#input", message + (f"\nfake: {json.dumps(fake)}" if fake else ""))
    page.press("#input", "Enter")


def test_the_widget_chats_on_a_strict_hostile_host_page(browser, embedded, fake):
    service, site, _ = embedded
    with watched_page(browser) as (page, problems):
        page.goto(site.url + "/plain")
        plain_style = probe_style(page)
        page.goto(site.url + "/")
        launcher = page.locator("streamchat-chat .launcher")
        launcher.wait_for()
        assert probe_style(page) == plain_style  # the host's styles are as they were
        # The widget's look does not come from the host: not its 40px rem, not its hidden buttons.
        assert launcher.is_visible() and launcher.evaluate("b => getComputedStyle(b).fontSize") == "16px"
        assert launcher.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(204, 0, 102)"  # data-accent
        launcher.click()
        assert page.locator("streamchat-chat .title").inner_text() == "Shop help"
        assert page.locator("streamchat-chat .greeting").inner_text() == "Hi from the shop"
        assert page.locator("streamchat-chat .title").evaluate("t => getComputedStyle(t).fontSize") == "17.6px"

        say(page, "hello", text="A **live** answer.", id="w-live")
        page.locator("streamchat-chat .message.assistant strong", has_text="live").wait_for()
        page.locator("streamchat-chat #send").wait_for(state="visible")
        say(page, "hello", status=500)  # the model fails: the rules answer, labelled for visitors
        page.locator("streamchat-chat .message.assistant .tag", has_text="Prepared answer").wait_for()
        page.locator("streamchat-chat #send").wait_for(state="visible")

        say(page, "a long one", id="w-stop", tokens=2000, interval_ms=30)
        page.locator("streamchat-chat .message.assistant.streaming .content", has_text="Streaming").wait_for()
        page.locator("streamchat-chat #stop").click()
        assert fake.wait_for(lambda: fake.find("w-stop").peer_closed), "Stop must close the upstream"
        assert fake.find("w-stop").finished is None
        # Its conversation is kept per host origin: after a reload the widget, open as it was, shows it again.
        page.reload()
        page.locator("streamchat-chat .message.user").nth(2).wait_for()
        assert page.locator("streamchat-chat .message.user").count() == 3
        # Rendered inline into an element of the host's choosing (data-mount): no launcher.
        page.goto(site.url + "/inline")
        page.locator("#chat-here streamchat-chat .panel.inline").wait_for()
        assert page.locator("streamchat-chat .launcher").count() == 0
        say(page, "inline", text="Inline works.")
        page.locator("streamchat-chat .message.assistant .content", has_text="Inline works.").wait_for()
    assert problems == []


def test_a_site_that_is_not_listed_cannot_use_the_api_from_a_browser(browser, embedded):
    service, _, stranger = embedded
    with watched_page(browser) as (page, problems):
        page.goto(stranger.url + "/plain")
        outcome = page.evaluate("""(url) => fetch(url + "/api/chat", {method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({messages: [{role: "user", content: "hi"}]})})
            .then((r) => "answered " + r.status, (e) => "refused: " + e.name)""", service.url)
    assert outcome == "refused: TypeError"
    assert any("CORS" in problem for problem in problems)  # the browser says why


def test_the_page_may_be_framed_by_the_listed_sites_only(embedded):
    from servers import request

    service, site, _ = embedded
    csp = request(service.url, "GET", "/")[1]["Content-Security-Policy"]
    assert f"frame-ancestors 'self' {site.url}" in csp


def test_the_widget_opens_on_load_on_the_left_when_asked(browser, embedded):
    _, site, _ = embedded
    with watched_page(browser) as (page, problems):
        page.goto(site.url + "/left-open")
        panel = page.locator("streamchat-chat .panel")
        panel.wait_for()  # open without a click (data-open)
        launcher = page.locator("streamchat-chat .launcher")
        assert launcher.get_attribute("aria-expanded") == "true"
        width = page.viewport_size["width"]
        assert launcher.bounding_box()["x"] < width / 2 and panel.bounding_box()["x"] < width / 2  # bottom-left
        page.locator("streamchat-chat .close").click()
        assert panel.is_hidden() and launcher.get_attribute("aria-expanded") == "false"
    assert problems == []
