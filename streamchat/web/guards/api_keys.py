"""The service keys of the ``/v1`` API (``SERVICE_API_KEYS``): who is calling, never the key itself."""

from __future__ import annotations

import hashlib
import hmac


def key_id(authorization: str | None, keys: tuple[str, ...]) -> str | None:
    """Return ``key-<8 hex>`` for the configured key in an ``Authorization: Bearer`` header, else None.

    Every key is compared, in constant time, whatever matched before: the answer's timing says nothing
    of which key, or how much of one, was right. The id is a digest: logs and limit counters never hold a key.
    """
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    given_bytes = given.strip().encode()
    found = None
    for key in keys:
        if hmac.compare_digest(given_bytes, key.encode()):
            found = key
    return "key-" + hashlib.sha256(found.encode()).hexdigest()[:8] if found else None
