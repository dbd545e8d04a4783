"""The one Redis client of a process, built from ``REDIS_URL``, with every call bounded by ``REDIS_TIMEOUT``."""

from __future__ import annotations

import redis


def connect(url: str, timeout: float) -> redis.Redis:
    """Return a client for ``url`` (``redis://`` or ``rediss://``) whose connects and calls wait ``timeout`` s at most.

    Nothing is sent until the first call: a Redis that is down at start-up does not stop the service.
    """
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                health_check_interval=30, decode_responses=True)


#: What a Redis call raises when Redis is away, slow or refuses: the caller carries on without it.
ERRORS = (redis.RedisError, OSError)
