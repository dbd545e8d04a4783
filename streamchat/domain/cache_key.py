"""The reply cache's key: which requests must get the same answer, and nothing fuzzier.

Two requests share a key when their conversations are the same once normalised
as a visitor would not notice (Unicode NFC, runs of whitespace as one space,
letter case folded) and everything else that shapes the answer is equal: the
API and, on ``/v1``, the service key and the model asked for; the generation
options; and every configured upstream's name, model and system prompt (so a
change of prompt, model or upstreams never serves an old answer). Only
conversations with at most ``turns`` user messages are cached at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Iterable

from .providers.base import Options

_WHITESPACE = re.compile(r"\s+")


def normalised(text: str) -> str:
    """Return ``text`` as the cache compares it: NFC, whitespace runs as one space, trimmed, case folded."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip().casefold()


def upstreams_fingerprint(upstreams: Iterable) -> str:
    """Return a digest of what each upstream answers with: its name, model and system prompt, in order."""
    parts = [[u.name, u.model, getattr(u, "system_prompt", "") or ""] for u in upstreams]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:32]


def cache_key(messages: list[dict[str, str]], *, turns: int, scope: str, options: Options,
              upstreams: str, model: str | None = None) -> str | None:
    """Return the key of the answer to ``messages``, or None when the conversation has more than ``turns``
    user messages (it is not cached).

    ``scope`` is the API and, on ``/v1``, the service key's id; ``upstreams`` is ``upstreams_fingerprint()``.
    """
    if sum(1 for message in messages if message["role"] == "user") > turns:
        return None
    parts = {"scope": scope, "model": model, "max_tokens": options.max_tokens, "temperature": options.temperature,
             "upstreams": upstreams, "messages": [[m["role"], normalised(m["content"])] for m in messages]}
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
