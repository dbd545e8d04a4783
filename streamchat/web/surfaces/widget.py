"""``GET /widget.js``: the chat as one script tag for any site, built from the page's own parts.

The bundle is ``static/markdown.js`` and ``static/chat.js`` (the page's chat, unchanged), then
``static/widget.js`` (the launcher and the Shadow DOM), started with the chat's markup
(``templates/_chat.html``, with the site owner's title, greeting and suggestions) and its styles
(``static/chat.css`` with ``rem`` turned into ``px``, since a host page may change its root font size,
and ``:root`` into ``:host``; then ``static/widget.css``). No build step: it is put together on the
first request and kept. A site embeds it with::

    <script src="https://chat.example.com/widget.js" async></script>

and its origin must be in ``EMBED_ORIGINS`` (or ``CORS_ORIGINS``) for the browser to let the widget
call the API.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask import Blueprint, Response, current_app, render_template

from ..service import service
from .page import chat_markup_values

bp = Blueprint("widget", __name__)
ROOT_FONT_PX = 16


@bp.get("/widget.js")
def widget_js():
    """Serve the widget's script (cached by browsers for five minutes)."""
    svc = service()
    if svc.widget_bundle is None:
        svc.widget_bundle = _bundle()
    bundle = svc.widget_bundle
    return Response(bundle, content_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300"})


def _bundle() -> str:
    static = Path(current_app.static_folder)
    markup = render_template("_chat.html", **chat_markup_values(service().settings))
    css = widget_css((static / "chat.css").read_text("utf-8")) + "\n" + (static / "widget.css").read_text("utf-8")
    parts = [(static / name).read_text("utf-8") for name in ("markdown.js", "chat.js", "widget.js")]
    return ("// The streamchat widget: markdown.js, chat.js and widget.js of this service, started below.\n(() => {\n"
            "const script = document.currentScript;\n"
            + "\n".join(parts)
            + f"\nstreamchatBoot(script, new URL(script.src).origin, {json.dumps(css)}, {json.dumps(markup)});\n"
            "})();\n")


def widget_css(page_css: str) -> str:
    """Return the page's stylesheet for a shadow root: ``:host`` for ``:root``, px for rem, no page-level rules."""
    css = page_css.replace(":root", ":host")
    css = re.sub(r"(?<![\w.-])(\d*\.?\d+)rem\b", lambda m: f"{float(m.group(1)) * ROOT_FONT_PX:g}px", css)
    return re.sub(r"(?m)^(html, body|body) \{[^}]*\}\n?", "", css)
