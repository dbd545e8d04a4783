"""The one Redis client of a process, built from ``REDIS_URL``, with every call bounded by ``REDIS_TIMEOUT``.

The client library is imported by ``connect``, not here: it is 4 MB of a worker's memory, which a deployment
without ``REDIS_URL`` does not need. ``redis_errors()`` names its errors once it is loaded (before, no Redis
call can have raised one).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis


def connect(url: str, timeout: float) -> redis.Redis:
    """Return a client for ``url`` (``redis://`` or ``rediss://``) whose connects and calls wait ``timeout`` s at most.

    Nothing is sent until the first call: a Redis that is down at start-up does not stop the service.
    """
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                health_check_interval=30, decode_responses=True)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when Redis is away, slow or refuses: the caller carries on without it.

    Called as an ``except`` clause's expression (``except redis_errors():``), so only when an exception is
    being matched.
    """
    loaded = sys.modules.get("redis")
    return (OSError,) if loaded is None else (loaded.RedisError, OSError)
