"""Start the service: check every setting, then hand over to gunicorn. What the Procfile and ``./run`` call.

    python -m streamchat.server.serve [gunicorn options]

gunicorn reads ``WEB_CONCURRENCY`` itself as it is imported, before its config
file runs, so a bad value there was a traceback from inside gunicorn, and a
bad application setting was one traceback per worker. Here the ``.env`` file
is read (the only time: see ``config.read_env_file``) and every setting (the server's too: ``PORT``, ``HOST``,
``WEB_CONCURRENCY``...) is checked first: a bad one prints one line (which
variable, what is wrong, a valid example) and exits with status 2. Then this
process becomes gunicorn (``exec``, same pid: the platform's signals reach
gunicorn's master directly), with the ``.env`` values in its environment.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..config import ConfigError, load_settings, parse_settings, read_env_file

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
CONFIG_ERROR = 2


def start_warnings(settings) -> list[str]:
    """Return what a site owner should hear about the settings before the first request."""
    warnings = []
    counting = settings.chat_rate_limit or settings.llm_budget_per_client or settings.llm_budget_global
    if counting and settings.web_concurrency > 1 and settings.ratelimit_storage_uri.startswith("memory://"):
        warnings.append(f"rate limits and budgets count in memory, separately in each of the {settings.web_concurrency} "
                        f"workers (WEB_CONCURRENCY), so a client gets up to {settings.web_concurrency} times its limit: "
                        "set REDIS_URL to count them once")
    return warnings


def say(level: str, text: str, log_format: str = "text") -> None:
    """Print one line to stderr: ``streamchat: <text>``, or with ``LOG_FORMAT=json`` one JSON object."""
    if log_format == "json":
        from ..logformat import JsonLines

        record = logging.LogRecord("streamchat", getattr(logging, level), __file__, 0, text, None, None)
        print(JsonLines().format(record), file=sys.stderr)
    else:
        print(f"streamchat: {text}", file=sys.stderr)


def main(argv: list[str]) -> None:
    read_env_file()
    try:
        settings = load_settings()
    except ConfigError as exc:
        say("ERROR", f"configuration error: {exc}", _log_format())
        raise SystemExit(CONFIG_ERROR) from None
    for warning in start_warnings(settings):
        say("WARNING", f"warning: {warning}", settings.log_format)
    sys.stderr.flush()
    # Its values are in the environment now, which gunicorn and its workers inherit: they need not read it again.
    os.environ["ENV_FILE"] = ""
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "--config", str(CONF), *argv, "wsgi:app"])


def _log_format() -> str:
    # When the settings did not parse, LOG_FORMAT may be the one at fault: then the line is text.
    try:
        return parse_settings(["LOG_FORMAT"]).log_format
    except ConfigError:
        return "text"


if __name__ == "__main__":
    main(sys.argv[1:])
