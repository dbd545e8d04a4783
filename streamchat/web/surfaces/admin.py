"""The owner's page at ``/admin``: what visitors asked, how they were answered, and rules to add.

Off (404) unless ``ADMIN_TOKEN`` is set. Signed out, ``/admin`` is a sign-in
form; ``POST /admin/sign-in`` with the token sets the session cookie
(``guards.admin_session``). The page reads the insights of a period
(``?days=N``) from the store and shows ``domain.insights.summarize``'s summary:
charts drawn as SVG (``admin_charts``), each with its table, no script at all.
``/admin/export.csv`` and ``/admin/export.json`` give the period's entries.

Every answer is ``no-store`` with a CSP that allows the page's own stylesheet
and nothing else. What visitors typed is shown as text (Jinja escapes it).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import time
from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import parse_qs

from flask import Blueprint, Response, redirect, render_template, request
from werkzeug.exceptions import NotFound

from ...domain.insights import FIELDS, budget_per_day, is_rating, latest_ratings, period_start, summarize
from ...domain.validation import InvalidRequest
from ...shared.redis import redis_errors
from ..errors import error_response
from ..guards.admin_session import SignInAttempts, end_session, signed_in, start_session, token_matches
from ..guards.limits import client_id
from ..guards.request_body import request_body_within
from ..service import service
from . import admin_charts

bp = Blueprint("admin", __name__)
log = logging.getLogger("streamchat")

ADMIN_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
             "base-uri 'none'")
ADMIN_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": ADMIN_CSP, "Referrer-Policy": "no-referrer",
                 "X-Robots-Tag": "noindex"}
DEFAULT_DAYS = 7
MOST_DAYS = 366
#: A spreadsheet runs a cell that starts with one of these as a formula: such a cell is written as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@bp.before_request
def admin_on():
    if not service().settings.admin_token:
        raise NotFound()


@bp.after_request
def private(response: Response) -> Response:
    response.headers.update(ADMIN_HEADERS)
    return response


@bp.get("/admin")
def page():
    """The sign-in form, or the summary of the chosen period."""
    svc = service()
    if not signed_in(svc.settings):
        return _sign_in_form(200)
    days = _days()
    context = {"days": days, "retention": svc.settings.insights_retention_days, "summary": None, "error": None}
    if svc.insights is not None:
        try:
            context.update(_summary_context(svc, days))
        except redis_errors() as exc:
            log.warning("the owner's page could not read the insights: %s", exc)
            context["error"] = "The insights store cannot be read right now; try again in a moment."
            return render_template("admin/page.html", **context), 503
    return render_template("admin/page.html", **context)


@bp.post("/admin/sign-in")
def sign_in():
    """Check the token (each attempt counts against the client); a right one starts a session."""
    svc = service()
    wait = _attempts(svc).attempt()
    if wait:
        return _sign_in_form(429, f"Too many sign-in attempts: try again in {wait} seconds.", {"Retry-After": str(wait)})
    fields = parse_qs(request_body_within(svc.settings.client_timeout).decode("utf-8", "replace"))
    if not token_matches(svc.settings, (fields.get("token") or [""])[0]):
        log.warning("a sign-in to /admin with a wrong token, from %s", client_id())
        return _sign_in_form(401, "That is not the admin token.")
    response = redirect("/admin", 303)
    start_session(svc.settings, response)
    return response


@bp.post("/admin/sign-out")
def sign_out():
    response = redirect("/admin", 303)
    end_session(response)
    return response


@bp.get("/admin/export.<kind>")
def export(kind: str):
    """The period's entries, each with its rating, as CSV or JSON."""
    svc = service()
    if kind not in ("csv", "json"):
        raise NotFound()
    if not signed_in(svc.settings):
        return error_response(401, "signed_out", "Sign in at /admin first.")
    if svc.insights is None:
        return error_response(404, "insights_off", "Insights are off (INSIGHTS_RETENTION_DAYS=0): nothing is kept.")
    days = _days()
    since = period_start(days)
    try:
        ratings = latest_ratings(svc.insights.events(since))  # a first pass: the entries stream on the second
    except redis_errors():
        return error_response(503, "insights_unavailable", "The insights store cannot be read right now.")
    entries = ({**event, "time": _iso(event["time"]), "rating": ratings.get(event["id"], "")}
               for event in svc.insights.events(since) if not is_rating(event))
    today = datetime.now(timezone.utc).date().isoformat()
    disposition = {"Content-Disposition": f'attachment; filename="insights-{today}-{days}d.{kind}"'}
    if kind == "json":
        return Response(_json_lines(days, entries), content_type="application/json", headers=disposition)
    return Response(_csv_lines(entries), content_type="text/csv; charset=utf-8", headers=disposition)


def _sign_in_form(status: int, error: str | None = None, headers: dict | None = None):
    return render_template("admin/sign_in.html", error=error), status, headers or {}


def _attempts(svc) -> SignInAttempts:
    if svc.sign_ins is None:
        svc.sign_ins = SignInAttempts(svc.settings)
    return svc.sign_ins


def _days() -> int:
    raw = request.args.get("days", str(DEFAULT_DAYS))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MOST_DAYS:
        raise InvalidRequest(400, "invalid_days", f"days must be a whole number from 1 to {MOST_DAYS}.")
    return int(raw)


def _summary_context(svc, days: int) -> dict:
    # time.sleep(0) is gevent's yield in a worker: the streams of this worker go on while the summary is made.
    summary = summarize(svc.insights.events(period_start(days)), svc.relay.rules.current(), days,
                        token_budget_per_day=budget_per_day(svc.settings.llm_token_budget_global),
                        pause=functools.partial(time.sleep, 0))
    labels = [day.day.strftime("%m-%d") for day in summary.days]
    replies = admin_charts.stacked_bars(labels, summary.buckets,
                                        [[day.replies[b] for b in summary.buckets] for day in summary.days])
    ttfb = admin_charts.lines(labels, ["p50", "p95"], [[day.ttfb_p50 for day in summary.days],
                                                       [day.ttfb_p95 for day in summary.days]])
    tokens = admin_charts.stacked_bars(labels, ["tokens"], [[day.tokens] for day in summary.days],
                                       limit=summary.token_budget_per_day)
    return {"summary": summary, "charts": {"replies": replies, "ttfb": ttfb, "tokens": tokens},
            "budgets": _budgets(svc.settings), "rules_path": svc.relay.rules.path}


def _budgets(settings) -> list[tuple[str, str]]:
    return [(name, value) for name, value in (
        ("LLM_TOKEN_BUDGET_GLOBAL", settings.llm_token_budget_global),
        ("LLM_TOKEN_BUDGET_PER_CLIENT", settings.llm_token_budget_per_client),
        ("LLM_BUDGET_GLOBAL", settings.llm_budget_global),
        ("LLM_BUDGET_PER_CLIENT", settings.llm_budget_per_client)) if value]


def _iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, timezone.utc).isoformat(timespec="milliseconds")


def _json_lines(days: int, entries: Iterator[dict]) -> Iterator[str]:
    """``{"days": N, "entries": [...]}``, an entry at a time (a period may hold 50,000)."""
    yield f'{{"days": {days}, "entries": ['
    for number, entry in enumerate(entries):
        yield ("," if number else "") + "\n" + json.dumps(entry, ensure_ascii=False)
    yield "\n]}\n"


def _csv_lines(entries: Iterator[dict]) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for entry in entries:
        writer.writerow([_cell(entry.get(name)) for name in FIELDS])
        if out.tell() > 65_536:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text

