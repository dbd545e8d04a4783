"""streamchat: a streaming LLM chat service that never hard-fails in front of a user.

The package's folders are its layers; imports only go down this list
(``tests/test_layout.py`` checks it):

- ``web``: Flask, in rooms by job: ``surfaces`` (the page, the chat API, the
  OpenAI-compatible API, the widget), ``opening`` (the one path to a reply's
  first byte), ``framing`` (wire formats), ``guards`` (limits, budgets, bodies,
  headers) and ``operations`` (health, metrics, the access log).
- ``server``: the runtime under gunicorn's gevent worker (the launcher, the
  worker class, the drain, name resolution, the client-disconnect watch).
- ``shared``: what every worker and instance shares through Redis (stream
  records, the breaker, token budgets), and how each carries on without it.
- ``domain``: who answers and with what text (the relay, the reply record, the
  circuit breaker, the providers, the rules, request validation, the SSE
  decoder). No Flask, gevent or gunicorn.
- ``transport``: how a provider's HTTP request goes out and its body comes back
  (``requests``/``urllib3`` and their internals).

Beside them, ``config`` declares and reads every setting (it imports no HTTP
stack), ``commands`` holds the ``./run`` commands that are not the service,
``errors`` is the error tree every layer speaks, ``redaction`` keeps secrets
out of what is logged, and ``logformat`` is the JSON log line. ``testing``
holds the fakes (the fake upstream server, an in-process fake provider, the
fuzzer) and ``processes``, the harness that starts real processes for the tests
and the benchmark. ``app.py`` at the top composes it all in ``create_app()``.
"""
