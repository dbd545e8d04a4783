"""The web layer: Flask, and everything that touches a request or a response. One room per job:

- ``surfaces``: the HTTP surfaces, one blueprint each (the page, the chat
  API, the OpenAI-compatible API, the widget). Each parses its request into a
  ``ChatRequest`` and picks a framer.
- ``opening``: the one path from a ``ChatRequest`` to a reply's first byte
  (the record, the reply cache, the budgets, the token reservation, the client
  watch, the relay).
- ``answers``: the reply cache's side of that path: a hit, a join of the same
  question in flight, and the answer a claimed question's reply writes.
- ``framing``: a reply's text and ending as the bytes of one wire format, and
  the response that carries them (streamed, whole, or recorded for resuming).
- ``guards``: rate limits, budgets, request bodies within bounds, security
  headers and CORS.
- ``operations``: health, readiness, metrics and the access log.
- ``service``: the per-process ``Service`` and ``service()``, its one accessor;
  ``errors``: every error answer, as JSON.

Imports go from surfaces to opening, framing, guards and operations, and from
each of those to ``service``; never back (``tests/test_layout.py``). The web
layer imports the domain, the server runtime and the shared stores; none of
them imports it.
"""
