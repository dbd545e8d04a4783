"""The application factory: settings, providers, rules, logging and error handling."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import click
from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

import protection
from streamchat.config import Settings, load_settings
from streamchat.disconnect import ClientDisconnected
from streamchat.providers import build_chain
from streamchat.relay import CircuitBreaker, Relay
from streamchat.rules import RulesStore, load_rules, RulesError

log = logging.getLogger("streamchat")
access_log = logging.getLogger("streamchat.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOGGED_USER_TEXT_CHARS = 500


@dataclass
class Service:
    """Everything a request needs, built once per process by ``create_app``."""

    settings: Settings
    relay: Relay
    budget: protection.LiveBudget


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Create the app from the environment, overlaid with ``test_config`` (same variable names)."""
    settings = load_settings({**os.environ, **(test_config or {})})
    _configure_logging()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.chat_max_body_bytes
    app.json.sort_keys = False

    rules = RulesStore(settings.rules_path, on_reload=_log_rules_reload)
    rules.current()
    relay = Relay(build_chain(settings), rules, CircuitBreaker(settings.llm_cooldown), settings.fallback_word_delay)
    app.extensions["streamchat"] = Service(settings=settings, relay=relay, budget=protection.LiveBudget(settings))
    log.info("providers: %s", ", ".join(f"{p.name}({p.model})" for p in relay.chain) or "none: rules only")

    from views import bp

    app.register_blueprint(bp)
    app.before_request(_start_request)
    protection.init_app(app, settings)
    app.after_request(_finish_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ClientDisconnected, _client_gone)
    app.register_error_handler(Exception, _unexpected_error)
    app.cli.add_command(rules_cli)
    return app


def _configure_logging() -> None:
    if getattr(log, "_configured", False):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # flask-limiter warns here when its storage (Redis) is unreachable.
    limiter_log = logging.getLogger("flask-limiter")
    limiter_log.addHandler(handler)
    limiter_log.propagate = False
    log._configured = True  # type: ignore[attr-defined]


def _log_rules_reload(store: RulesStore) -> None:
    if store.error:
        log.error("rules file invalid, keeping the last good rules: %s", store.error)
    else:
        log.info("rules loaded from %s", store.path)


def _start_request() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _finish_request(response):
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    fields = {
        "request_id": g.get("request_id", "-"), "method": request.method, "path": request.path,
        "status": response.status_code,
    }
    stats = g.get("stats")
    # Keep only what the log line shows: the whole message would stay in memory while the reply streams.
    text = g.pop("user_text", None)
    user_text = text[:LOGGED_USER_TEXT_CHARS] if text is not None and current_settings().log_user_text else None
    started = g.get("started", time.perf_counter())
    response.call_on_close(lambda: _log_access(fields, stats, started, user_text))
    return response


def _log_access(fields: dict[str, Any], stats, started: float, user_text: str | None) -> None:
    now = time.perf_counter()
    line = dict(fields)
    if stats is not None:
        first = stats.first_byte_at
        line.update(mode=stats.mode, provider=stats.provider, model=stats.model or "-",
                    reason=stats.reason or stats.cut_reason or "-",
                    ttfb_ms=f"{(first - started) * 1000:.1f}" if first else "-",
                    duration_ms=f"{(now - started) * 1000:.1f}", chunks=stats.chunks, bytes=stats.bytes,
                    ended=stats.ended, failures=",".join(stats.failures) or "-")
        if stats.rule:
            line["rule"] = stats.rule
    else:
        line.update(duration_ms=f"{(now - started) * 1000:.1f}")
    if user_text is not None:
        line["user_text"] = repr(user_text)
    access_log.info(" ".join(f"{key}={value}" for key, value in line.items()))


def current_settings() -> Settings:
    from flask import current_app

    return current_app.extensions["streamchat"].settings


def _error(status: int, code: str, message: str, headers=None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _http_error(error: HTTPException):
    code = re.sub(r"[^a-z0-9]+", "_", (error.name or "error").lower()).strip("_")
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = error.description or error.name
    if error.code == 413:
        message = f"The request body is larger than {current_settings().chat_max_body_bytes} bytes."
    elif error.code == 429:
        wait = protection.retry_after_seconds()
        code, headers["Retry-After"] = "rate_limited", str(wait)
        message = f"Too many requests ({error.description}). Try again in {wait} seconds."
    return _error(error.code or 500, code, message, headers)


def _client_gone(error: ClientDisconnected):
    return _error(499, "client_closed_request", "The client closed the connection.")


def _unexpected_error(error: Exception):
    log.exception("unexpected error")
    return _error(500, "internal_error", "Something went wrong on our side; the error was logged.")


@click.group("rules")
def rules_cli() -> None:
    """Work with the keyword rules file."""


@rules_cli.command("check")
@click.argument("path", required=False)
def rules_check(path: str | None) -> None:
    """Validate a rules file (default: RULES_PATH) and print each problem with its line."""
    path = path or os.environ.get("RULES_PATH", "rules.yaml")
    try:
        rules = load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            click.echo(f"{path}:{problem.line}:{problem.column}: {problem.message}", err=True)
        raise SystemExit(1)
    click.echo(f"{path}: OK, {len(rules.rules)} rules and {len(rules.default.replies)} default replies")
