"""What an upstream says is left of a key's rate limits, read from its response headers (a pure function).

OpenAI, Groq, OpenRouter and other compatibles send ``x-ratelimit-remaining-requests`` and
``x-ratelimit-remaining-tokens`` with ``x-ratelimit-reset-requests`` / ``-tokens`` as durations
(``1s``, ``6m0s``, ``12ms``, ``1h2m3.5s``) or plain seconds. Anthropic sends
``anthropic-ratelimit-requests-remaining`` (and ``-tokens``, ``-input-tokens``, ``-output-tokens``)
with ``...-reset`` as an RFC 3339 time. A key with nothing left of any of them is skipped until that
limit resets, so the next request does not go out only to meet a 429.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import time
from typing import Mapping

#: (remaining header, reset header) pairs, for each naming scheme.
OPENAI_STYLE = tuple((f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}") for kind in ("requests", "tokens"))
ANTHROPIC_STYLE = tuple((f"anthropic-ratelimit-{kind}-remaining", f"anthropic-ratelimit-{kind}-reset")
                        for kind in ("requests", "tokens", "input-tokens", "output-tokens"))
DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?")
#: A reset too far away is not waited for (a misread, or a daily quota): the 429 will tell.
LONGEST_WAIT = 3600.0


def exhausted_for(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Return the seconds until a limit with nothing left resets (the longest such), or None if none is spent."""
    wait = None
    for remaining_name, reset_name in OPENAI_STYLE + ANTHROPIC_STYLE:
        remaining = headers.get(remaining_name)
        if remaining is None or remaining.strip() not in ("0", "0.0"):
            continue
        seconds = reset_seconds(headers.get(reset_name, ""), now)
        if seconds is not None and seconds > 0:
            wait = max(wait or 0.0, min(seconds, LONGEST_WAIT))
    return wait


def reset_seconds(value: str, now: float | None = None) -> float | None:
    """Return the seconds a reset header means: a duration (``6m0s``, ``12ms``, ``2.5``) or an RFC 3339 time."""
    value = value.strip()
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    match = DURATION.fullmatch(value)
    if match and any(match.groups()):
        hours, minutes, seconds, millis = (float(part) if part else 0.0 for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds + millis / 1000
    with contextlib.suppress(ValueError):
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return None
