"""The chat page at ``/``: the conversation, its limits and the site owner's words, rendered once per visit."""

from __future__ import annotations

from flask import Blueprint, render_template

from ...config import Settings
from ..service import service

bp = Blueprint("page", __name__)


@bp.get("/")
def index():
    """Serve the chat page, with the conversation limits it must keep to."""
    return render_template("index.html", **chat_markup_values(service().settings))


def chat_markup_values(settings: Settings) -> dict:
    """What ``_chat.html`` shows: the limits the chat keeps to, and the site owner's words."""
    return {"max_messages": settings.chat_max_messages, "max_chars": settings.chat_max_chars,
            "title": settings.chat_title, "greeting": settings.chat_greeting, "suggestions": settings.chat_suggestions,
            "ratings": bool(settings.insights_retention_days and settings.resume_ttl)}  # a rating names a stream id
