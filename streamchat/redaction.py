"""Keep secrets and forged lines out of what the service shows and logs.

- ``url_without_secrets(url)``: a URL as it may be shown (``/healthz``): no
  userinfo (``user:secret@``), no query or fragment, which can carry keys.
- ``redact(text)``: every configured secret (``remember_secrets()``) and
  anything shaped like a credential (``Bearer ...``, ``sk-...``, ``x-api-key: ...``)
  replaced by ``[redacted]``. Upstream error messages and tracebacks pass
  through it, because a provider or proxy may echo the key it was sent.
- ``mask_personal(text)``: what a visitor typed, as the insights keep it: e-mail
  addresses, phone numbers, long digit runs and credential-shaped strings
  replaced by ``[email]``, ``[phone]``, ``[number]`` and ``[redacted]``.
- ``one_line(text)``: control characters (CR, LF, the Unicode line separators...)
  escaped, so a value a client controls cannot start a log line of its own.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[redacted]"
#: Shorter secrets would redact ordinary words; no real key is that short.
MIN_SECRET_CHARS = 8
_CREDENTIAL = re.compile(
    r"(?i)(\bbearer\s+|\bbasic\s+|\bx-api-key[\"']?\s*[:=]\s*[\"']?|\bapi[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"
    r"|\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}")
# Masks for what visitors type, in this order: credentials (they hold digits and @), e-mails, then numbers.
_PASSWORD = re.compile(r"(?i)\b(pass(?:word|wd|code)?|pwd|pin|token|secret|otp)(\s*(?:[:=]|is)\s*)\S+")
_LONG_TOKEN = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[^\W\d_])[\w-]{24,}(?![\w-])", re.ASCII)
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
# A run of digits with the separators numbers are written with (+44 (0)20 7946-0958, 4111 1111 1111 1111).
_NUMBER = re.compile(r"\+?\(?\d[\d\s().\-/]*\d")
MIN_MASKED_DIGITS = 6  # fewer is a year, a price, a quantity; 6 or more is a phone, an account, a card, a date
PHONE_DIGITS = range(7, 16)  # E.164 numbers have at most 15 digits
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None


def remember_secrets(*secrets: str) -> None:
    """Redact these values (configured keys) from everything ``redact`` sees from now on."""
    global _secrets_pattern
    _secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_CHARS)
    if _secrets:
        # Longest first, so a key that contains another is replaced whole.
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    """Return ``text`` with configured secrets and credential-shaped strings replaced by ``[redacted]``."""
    if _secrets_pattern is not None:
        text = _secrets_pattern.sub(REDACTED, text)
    return _CREDENTIAL.sub(lambda m: (m.group(1) or "") + REDACTED, text)


def mask_personal(text: str) -> str:
    """Return ``text`` with e-mail addresses, phone numbers, long digit runs and credentials masked."""
    text = redact(text)
    text = _PASSWORD.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _LONG_TOKEN.sub(REDACTED, text)
    text = _EMAIL.sub("[email]", text)
    return _NUMBER.sub(_masked_number, text)


def _masked_number(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group())
    if digits < MIN_MASKED_DIGITS:
        return match.group()
    written_as_phone = match.group().startswith(("+", "(")) or not match.group().isdigit()
    return "[phone]" if digits in PHONE_DIGITS and written_as_phone else "[number]"


def one_line(text: str) -> str:
    """Return ``text`` with every control character escaped (``\\n``, ``\\x1b``...), so it stays one line."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def url_without_secrets(url: str) -> str:
    """Return ``url`` without its userinfo, query and fragment: what may be shown of it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # an IPv6 address
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return REDACTED
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown if netloc or parts.path else f"{parts.scheme}://"  # "memory://", not "memory:"
