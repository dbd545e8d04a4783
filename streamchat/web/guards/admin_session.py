"""Who may see the owner's page: ``ADMIN_TOKEN`` once, then a signed session cookie; sign-in attempts counted.

The cookie holds its expiry and a nonce, signed with a key derived from
``ADMIN_TOKEN`` (HMAC-SHA256): nothing is stored on the server, and changing the
token signs every session out. It is ``HttpOnly``, ``SameSite=Strict`` (no other
site can send it, so no other site can act with it), ``Path=/admin``, and
``Secure`` when the request came over HTTPS (``TRUSTED_PROXIES`` lets a proxy say so).
No check of ``Origin``: another site's form cannot sign anyone in without the token, and a
proxy that rewrites ``Host`` would make the owner's own form look foreign.

Sign-in attempts are counted per client in the rate limits' storage (shared
through Redis when it is), ``SIGN_IN_LIMIT``; past it every attempt, a right
token too, waits for the window to pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from flask import Response, request
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from ...config import Settings
from .limits import client_id, storage_config

COOKIE = "streamchat_admin"
COOKIE_PATH = "/admin"
SESSION_SECONDS = 12 * 3600
SIGN_IN_LIMIT = "5/minute;20/hour"  # attempts per client: enough for an owner who mistypes, not for guessing


def _key(settings: Settings) -> bytes:
    return hmac.new(settings.admin_token.encode(), b"streamchat admin session v1", hashlib.sha256).digest()


def _signature(settings: Settings, payload: str) -> str:
    digest = hmac.new(_key(settings), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_matches(settings: Settings, token: str) -> bool:
    """Whether ``token`` is ``ADMIN_TOKEN`` (compared in constant time)."""
    return bool(settings.admin_token) and hmac.compare_digest(token.encode(), settings.admin_token.encode())


def signed_in(settings: Settings) -> bool:
    """Whether the request carries a valid, unexpired session cookie."""
    value = request.cookies.get(COOKIE, "")
    expires, _, rest = value.partition(".")
    nonce, _, signature = rest.partition(".")
    if not (expires.isdigit() and nonce and signature):
        return False
    if not hmac.compare_digest(signature, _signature(settings, f"{expires}.{nonce}")):
        return False
    return int(expires) > time.time()


def start_session(settings: Settings, response: Response) -> None:
    expires = str(int(time.time()) + SESSION_SECONDS)
    payload = f"{expires}.{secrets.token_urlsafe(12)}"
    response.set_cookie(COOKIE, f"{payload}.{_signature(settings, payload)}", max_age=SESSION_SECONDS,
                        path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.is_secure)


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.is_secure)


class SignInAttempts:
    """Sign-in attempts per client, counted in the rate limits' storage (shared through Redis when it is).

    Every attempt counts, a right one too: counting first and reading after is what the fail-soft storage
    answers right (``failsoft``: a request's reads come from its own count, so a read before any count
    could be one a kept-alive connection's earlier request made).
    """

    def __init__(self, settings: Settings):
        self.limits = parse_many(SIGN_IN_LIMIT)
        self._settings = settings
        self._strategy: FixedWindowRateLimiter | None = None

    def strategy(self) -> FixedWindowRateLimiter:
        if self._strategy is None:  # built on first use, in the worker (never in gunicorn's master)
            uri, options = storage_config(self._settings)
            self._strategy = FixedWindowRateLimiter(storage_from_string(uri, **options))
        return self._strategy

    def attempt(self) -> int:
        """Count one attempt of this client; return the seconds it must wait first (0: it may go on)."""
        who = ("admin-sign-in", client_id())
        for item in self.limits:
            if not self.strategy().hit(item, *who):
                reset, _ = self.strategy().get_window_stats(item, *who)
                return max(1, int(reset - time.time()) + 1)
        return 0
