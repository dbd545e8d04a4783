"""Security headers on every response, CORS for the listed origins, and the proxies we trust."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from ...config import Settings

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'self'")  # + EMBED_ORIGINS, see init_app
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"),
                    ("Cross-Origin-Opener-Policy", "same-origin")]
PAGE_HEADERS = SECURITY_HEADERS + [("Content-Security-Policy", PAGE_CSP)]
API_HEADERS = SECURITY_HEADERS + [("Content-Security-Policy", API_CSP)]
EXPOSED_HEADERS = ("X-Terminal-Mode, X-Terminal-Reason, X-Terminal-Provider, X-Terminal-Model, X-Request-Id, "
                   "Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-Stream-Id, X-Terminal-Cache")


def init_app(app: Flask, settings: Settings) -> None:
    """Trust the configured proxies, and add CORS and security headers to every response."""
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
    origins = set(settings.cors_origins) | set(settings.embed_origins)
    page_headers = PAGE_HEADERS
    if settings.embed_origins:  # the page in an iframe on the embedding sites (no '*': never anyone's frame)
        framers = " ".join(o for o in settings.embed_origins if o != "*")
        page_headers = SECURITY_HEADERS + [("Content-Security-Policy", PAGE_CSP + (" " + framers if framers else ""))]

    @app.after_request
    def add_headers(response):
        headers = response.headers
        # One pass over the response's headers instead of a lookup per name (9.5 -> 3 us a response):
        # every default goes in unless the view set its own.
        present = {name.lower() for name, _ in headers}
        if "retry-after" in present and response.status_code not in (429, 503):
            # flask-limiter writes Retry-After on every limited response; it only means "wait" on these.
            # (Registered before the limiter's hook, this one runs after it.)
            del headers["Retry-After"]
        defaults = page_headers if response.mimetype == "text/html" else API_HEADERS
        headers.extend([item for item in defaults if item[0].lower() not in present])
        origin = request.headers.get("Origin") if origins else None
        if origin and request.path.startswith("/api/") and (origin in origins or "*" in origins):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if request.method == "OPTIONS":
                headers["Access-Control-Allow-Methods"] = "GET, POST"
                headers["Access-Control-Allow-Headers"] = "Content-Type"
                headers["Access-Control-Max-Age"] = "600"
        headers.add("Vary", "Origin")
        return response
