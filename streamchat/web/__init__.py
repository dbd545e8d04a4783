"""The web layer: Flask views and everything that touches a request or a response.

``views`` (the one blueprint), ``streaming`` (the streaming response and the
framers that turn a reply's text and ending into bytes), ``limits`` (rate limits
and live-model budgets), ``headers`` (security headers, CORS, trusted proxies),
``access`` (request ids, logging, the access log as a reply listener),
``errors`` (one ``error_response()`` and the error handlers) and ``service``
(the per-process service and its one accessor). It imports the domain; the
domain never imports it.
"""
