"""The ``text/plain; charset=utf-8`` framer: the reply's text as UTF-8, and a notice if it was cut short.

The chat page, the widget and the AI SDK's text transport read this format. A
reply that breaks after text was sent can no longer change its status or
headers, so it ends with a notice the page recognises ("[Reply cut short:").
"""

from __future__ import annotations

from typing import Iterator

from ...domain.record import CUT_SHORT, RESTARTING
from ...domain.relay import Reply

CONTENT_TYPE = "text/plain; charset=utf-8"
#: Ends a plain-text reply that broke after text was sent; the chat page looks for "[Reply cut short:".
CUT_SHORT_NOTICE = "\n\n[Reply cut short: the model stopped responding. Please try again.]"
RESTARTING_NOTICE = "\n\n[Reply cut short: the service is restarting. Please try again.]"


def cut_short_notice(cut_reason: str) -> str:
    """Return the notice that ends a plain-text reply cut short for ``cut_reason``."""
    return RESTARTING_NOTICE if cut_reason == RESTARTING else CUT_SHORT_NOTICE


def plain_text(reply: Reply) -> Iterator[bytes]:
    """Frame ``reply`` as ``text/plain; charset=utf-8``: its UTF-8 text, then the notice if it was cut short."""
    record = reply.record
    for text in reply.text():
        if not text:
            continue  # a heartbeat from a silent upstream: text/plain has no way to say it
        chunk = text.encode()
        record.bytes += len(chunk)
        yield chunk
    if record.ended == CUT_SHORT:
        yield cut_short_notice(record.cut_reason).encode()
