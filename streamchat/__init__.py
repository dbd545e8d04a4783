"""streamchat: a streaming LLM chat service that never hard-fails in front of a user.

The package's folders are its layers; imports only go down this list:

- ``web``: Flask (the blueprint, the streaming response and its framers, rate
  limits and budgets, headers, the access log, error answers).
- ``server``: the runtime under gunicorn's gevent worker (the worker class,
  name resolution, the client-disconnect watch).
- ``domain``: who answers and with what text (the relay, the circuit breaker,
  the providers, the rules, request validation, the SSE decoder). No Flask,
  gevent or gunicorn.
- ``transport``: how a provider's HTTP request goes out and its body comes back
  (``requests``/``urllib3`` and their internals).

Beside them, ``config`` reads every setting (the providers' declarations
included), ``errors`` is the error tree every layer speaks, and ``logformat`` the
JSON log line. ``testing`` holds
the fakes: the fake upstream server and an in-process fake provider. ``app.py``
at the top composes it all in ``create_app()``.
"""
