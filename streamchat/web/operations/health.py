"""The operator's routes: ``/healthz`` (what this worker uses and whether it is well), ``/readyz`` (whether a load
balancer should send requests here) and ``/metrics`` (Prometheus, behind ``METRICS_TOKEN``)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import NotFound

from ...redaction import url_without_secrets
from ...server.drain import DRAIN
from ..errors import error_response
from ..guards.limits import storage_health
from ..service import Service, service
from .metrics import CONTENT_TYPE, token_matches

bp = Blueprint("operations", __name__)


def resume_health(svc: Service) -> dict:
    """Report where reply records live, and so which resumes can succeed."""
    if svc.streams is None:
        return {"store": "none: RESUME_TTL=0, replies are not recorded"}
    health = svc.streams.health()
    if not svc.streams.shared:
        health["note"] = ("this worker's replies only: with several workers a resume that reaches another one "
                          "gets a 404")
    return health


def cache_health(svc: Service) -> dict:
    """Report where the reply cache keeps its answers, and for how long."""
    if svc.cache is None:
        return {"store": "none: REPLY_CACHE_TTL=0, every question asks a model"}
    health = svc.cache.health()
    if not svc.cache.shared:
        health["note"] = "this worker's answers only: each worker asks a model once for each question"
    return health


def insights_health(svc: Service) -> dict:
    """Report whether each reply's insights entry is kept, where, and for how long."""
    if svc.insights is None:
        return {"store": "none: INSIGHTS_RETENTION_DAYS=0, no question is stored"}
    return svc.insights.health()


def shared_health(svc: Service) -> dict:
    """Report what this worker shares with the others (``REDIS_URL``), and whether it can now."""
    url = svc.settings.redis_url
    if not url:
        return {"redis": "none", "healthy": True,
                "note": "each worker process keeps its own circuit breaker (and, without RATELIMIT_STORAGE_URI, "
                        "its own rate-limit counts): set REDIS_URL to share them"}
    health = getattr(svc.relay.breaker, "health", None)
    return {"redis": url_without_secrets(url), **(health() if health else {"healthy": True})}


@bp.get("/metrics")
def metrics():
    """Serve every worker's metrics to a Prometheus scraper that sends the METRICS_TOKEN."""
    svc = service()
    if svc.metrics is None:
        raise NotFound()  # off: METRICS_TOKEN is not set
    if not token_matches(request.headers.get("Authorization"), svc.settings.metrics_token):
        return error_response(401, "unauthorized", "Send Authorization: Bearer <METRICS_TOKEN>.",
                              {"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(svc.metrics.exposition(), content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


@bp.get("/readyz")
def readyz():
    """Say whether a load balancer should send requests here: not while draining, nor with no rules ever loaded."""
    if DRAIN.draining:
        return jsonify({"status": "draining"}), 503
    if not service().relay.rules.health()["loaded"]:
        return jsonify({"status": "no_rules", "note": "no rules file could be loaded: see /healthz"}), 503
    return jsonify({"status": "ready"})


@bp.get("/healthz")
def healthz():
    """Report whether the service is up and which providers and rules it uses (never a key)."""
    svc = service()
    body = {"status": "ok", **svc.relay.health(), "rate_limit": storage_health(),
            "token_budget": svc.tokens.health() if svc.tokens else {"budget": "none"},
            "shared": shared_health(svc), "resume": resume_health(svc), "reply_cache": cache_health(svc),
            "insights": insights_health(svc)}
    if (body["rules"]["error"] or not body["rate_limit"]["healthy"] or not body["shared"]["healthy"]
            or not body["resume"].get("healthy", True) or not body["token_budget"].get("healthy", True)
            or not body["reply_cache"].get("healthy", True) or not body["insights"].get("healthy", True)):
        body["status"] = "degraded"
    return jsonify(body)
