"""The web layer: Flask views and everything that touches a request or a response.

``views`` (the one blueprint), ``counters`` (rate-limit counts in memory), ``failsoft``
(shared counts that fall back to memory while Redis is down), ``streaming`` (the streaming response and the
framers that turn a reply's text and ending into bytes), ``limits`` (rate limits
and live-model budgets), ``headers`` (security headers, CORS, trusted proxies),
``access`` (request ids, logging, the access log as a reply listener),
``errors`` (one ``error_response()`` and the error handlers) and ``service``
(the per-process service and its one accessor). It imports the domain; the
domain never imports it.

Private attributes relied on here (the rest live in ``transport`` and ``server``):
werkzeug's ``Response.get_app_iter`` with
``direct_passthrough`` (``streaming.StreamingResponse``, documented but subtle).
"""
