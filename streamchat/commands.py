"""The ``./run`` commands that are not the service itself.

    ./run check-rules [FILE]        (python -m streamchat.commands check-rules [FILE])
    ./run check-upstreams [FILE]    (python -m streamchat.commands check-upstreams [FILE])
    ./run cache clear               (python -m streamchat.commands cache clear)
    ./run insights [--days N]       (python -m streamchat.commands insights [--days N])
    ./run insights --delete-all

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

``insights`` prints the summary the owner's page shows (``/admin``) for the
last ``N`` days (default 7): replies by mode, ratings, the most asked and the
unanswered questions, and the rules to paste into the rules file, as YAML.
It reads what is stored (``REDIS_URL``, else ``INSIGHTS_PATH``) whatever
``INSIGHTS_RETENTION_DAYS`` says where it runs, and deletes nothing;
``--delete-all`` deletes every entry and rating, even with insights turned off.
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
    except shared_redis.redis_errors() as exc:
        print(f"streamchat: cannot reach Redis to clear the reply cache: {exc}", file=sys.stderr)
        return 1
    print(f"reply cache cleared: {count} question{'s' if count != 1 else ''} forgotten, in Redis")
    return 0


MOST_DAYS = 366
INSIGHTS_SETTINGS = ["REDIS_URL", "REDIS_TIMEOUT", "INSIGHTS_RETENTION_DAYS", "INSIGHTS_PATH", "INSIGHTS_MAX_ENTRIES",
                     "RULES_PATH", "LLM_TOKEN_BUDGET_GLOBAL"]


def insights(argv: list[str]) -> int:
    """Print the insights of the last days (``--days N``), or delete them all (``--delete-all``)."""
    from .domain import insights as summary_of
    from .domain.rules import RulesError, load_rules

    days = 7
    if argv == ["--delete-all"]:
        days = 0
    elif argv[:1] == ["--days"] and len(argv) == 2 and argv[1].isascii() and argv[1].isdigit() and int(argv[1]) >= 1:
        days = int(argv[1])
    elif argv:
        print(USAGE, file=sys.stderr)
        return 2
    read_env_file()
    try:
        settings = parse_settings(INSIGHTS_SETTINGS)
    except ConfigError as exc:
        print(f"streamchat: configuration error: {exc}", file=sys.stderr)
        return 2
    store = _insights_store(settings)
    if days == 0:
        try:
            count = store.delete_all()
        except (*_store_errors(), OSError) as exc:
            print(f"streamchat: cannot reach the insights store ({store.where}): {exc}", file=sys.stderr)
            return 1
        print(f"insights deleted: {count} entr{'ies' if count != 1 else 'y'} and ratings, from {store.where}")
        return 0
    if not settings.insights_retention_days:  # here: the service may have its own setting; show what is stored
        print(f"note: INSIGHTS_RETENTION_DAYS is 0 here (the service stores nothing with it); showing what "
              f"{store.where} holds", file=sys.stderr)
    try:
        rules = load_rules(settings.rules_path)
    except RulesError as exc:
        print(f"note: the rules file cannot be read ({exc}); rules are left out", file=sys.stderr)
        rules = None
    budget = summary_of.budget_per_day(settings.llm_token_budget_global)
    try:
        summary = summary_of.summarize(store.events(summary_of.period_start(days)), rules, days,
                                       token_budget_per_day=budget)
    except (*_store_errors(), OSError) as exc:
        print(f"streamchat: cannot read the insights ({store.where}): {exc}", file=sys.stderr)
        return 1
    print(summary_of.as_text(summary, store.where))
    return 0


def _insights_store(settings):
    from .shared import redis as shared_redis
    from .shared.insights_store import FileInsights, RedisInsights

    # Unset here, the command still reads (and deletes) what a service set otherwise stored; it never trims.
    days, most = settings.insights_retention_days or MOST_DAYS, settings.insights_max_entries
    if settings.redis_url:
        client = shared_redis.connect(settings.redis_url, max(settings.redis_timeout, 5.0))
        return RedisInsights(client, settings.redis_url, days, most)
    return FileInsights(settings.insights_path, days, most)


def _store_errors() -> tuple:
    from .shared.redis import redis_errors

    return redis_errors()


COMMANDS = {"check-rules": check_rules, "check-upstreams": check_upstreams, "cache": cache, "insights": insights}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
