"""The ``./run`` commands that are not the service itself.

    ./run check-rules [FILE]        (python -m streamchat.commands check-rules [FILE])
    ./run check-upstreams [FILE]    (python -m streamchat.commands check-upstreams [FILE])
    ./run cache clear               (python -m streamchat.commands cache clear)

``check-rules`` checks a rules file before it is deployed. Only that file is
read: no other setting is looked at (a bad one elsewhere is not this
command's business), nothing else is logged. Without ``FILE``, ``RULES_PATH``
(from the environment or ``.env``), else ``rules.yaml``. Prints each problem as
``path:line:column: message`` and exits 1 if there is any.

``check-upstreams`` checks an upstreams file the same way (without ``FILE``,
``UPSTREAMS_PATH``), its ``${VAR}`` read from the environment and ``.env``:
prints each upstream (never a key) or the one line that says what is wrong,
and exits 1 then.

``cache clear`` empties the reply cache: in ``REDIS_URL`` when it is set (every
instance's), else every worker's memory on this machine (within a second).
"""

from __future__ import annotations

import os
import sys


from .config import ConfigError, parse_settings, read_env_file
from .domain.rules import check_file
from .domain.upstreams import UpstreamsError, load_upstreams

USAGE = __doc__.split("\n\n")[1].strip()


def _configured(argv: list[str], env: str) -> str | None:
    """The file ``argv`` names, else the setting ``env`` (from the environment or ``.env``); None on a usage error."""
    if len(argv) > 1 or (argv and argv[0] in ("-h", "--help")):
        print(USAGE, file=sys.stderr)
        return None
    if argv:
        return argv[0]
    try:
        return getattr(parse_settings([env]), env.lower())
    except ConfigError as exc:
        print(f"streamchat: configuration error: {exc}", file=sys.stderr)
        return None


def check_rules(argv: list[str]) -> int:
    """Check the rules file named by ``argv`` (or the configured one); return the exit status."""
    read_env_file()
    path = _configured(argv, "RULES_PATH")
    if path is None:
        return 2
    ok, lines = check_file(path)
    for line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def check_upstreams(argv: list[str]) -> int:
    """Check the upstreams file named by ``argv`` (or the configured one); return the exit status."""
    read_env_file()
    path = _configured(argv, "UPSTREAMS_PATH")
    if path is None:
        return 2
    if not path:
        print("UPSTREAMS_PATH is not set: name the file, ./run check-upstreams FILE", file=sys.stderr)
        return 2
    try:
        upstreams = load_upstreams(path, os.environ)
    except UpstreamsError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: {len(upstreams)} upstream{'s' if len(upstreams) != 1 else ''}, tried in this order of tiers")
    for upstream in sorted(upstreams, key=lambda u: u.tier):
        keys = len(upstream.api_keys)
        print(f"  tier {upstream.tier}: {upstream.name} ({upstream.protocol}, {upstream.model}, {upstream.base_url}, "
              f"{keys or 'no'} key{'s' if keys != 1 else ''}, weight {upstream.weight:g})")
    return 0


def cache(argv: list[str]) -> int:
    """Empty the reply cache (``cache clear``); return the exit status."""
    if argv != ["clear"]:
        print(USAGE, file=sys.stderr)
        return 2
    from .shared import redis as shared_redis
    from .shared.reply_cache import MemoryReplyCache, RedisReplyCache

    read_env_file()
    try:
        settings = parse_settings(["REDIS_URL", "REDIS_TIMEOUT", "REPLY_CACHE_TTL"])
    except ConfigError as exc:
        print(f"streamchat: configuration error: {exc}", file=sys.stderr)
        return 2
    ttl = settings.reply_cache_ttl or 1
    if not settings.redis_url:
        MemoryReplyCache(ttl).clear()
        print("reply cache cleared: every worker on this machine forgets its answers within a second")
        return 0
    client = shared_redis.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
    try:
        count = RedisReplyCache(client, ttl, timeout=settings.redis_timeout, longest_reply=0).clear()
    except shared_redis.ERRORS as exc:
        print(f"streamchat: cannot reach Redis to clear the reply cache: {exc}", file=sys.stderr)
        return 1
    print(f"reply cache cleared: {count} question{'s' if count != 1 else ''} forgotten, in Redis")
    return 0


COMMANDS = {"check-rules": check_rules, "check-upstreams": check_upstreams, "cache": cache}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
