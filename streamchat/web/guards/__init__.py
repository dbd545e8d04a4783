"""Guards: what keeps the service cheap, fair and safe before and around a reply.

``limits`` (the hard rate limits through flask-limiter, and who the client
is), ``budgets`` (the soft live-reply and token budgets: past them the rules
answer), ``chat_counts`` (a chat request's rate limits and budgets counted
together, in one round trip), ``counters`` (rate-limit counts in memory), ``failsoft`` (shared counts
that fall back to memory while Redis is down), ``api_keys`` (the ``/v1``
service keys, compared in constant time), ``request_body`` (a body read within
a deadline and a size), ``headers`` (security headers, CORS, trusted proxies) and
``admin_session`` (who may see ``/admin``: its token, a signed cookie, failed
sign-ins counted).
"""
