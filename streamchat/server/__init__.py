"""The server runtime under gunicorn's gevent worker: the launcher, the worker class, restarts, DNS and the client watch.

``serve`` (the launcher the Procfile runs: checks every setting, then becomes
gunicorn), ``worker`` (a bounded, cheaper write to the client, bounded request
heads), ``drain`` (a graceful restart: replies get ``DRAIN_SECONDS``, then end
with a notice), ``resolver`` (IP addresses without a thread, one lookup per
name), ``disconnect`` (a client that left, or is slow to send its body) and
``gunicorn_log`` (gunicorn's own lines as JSON). Each does nothing special
outside gevent.

With ``streamchat.transport`` this is the only place that reaches into
libraries' private attributes. What this package relies on:

- gunicorn: ``environ["gunicorn.socket"]`` (the client socket), ``GeventWorker.handle``
  and ``load_wsgi`` (overridden) — ``worker.py``, ``disconnect.py``.
- gevent: a socket's ``_sock`` (the OS socket, non-blocking); re-classing the
  ``gevent.socket.socket`` gunicorn's server built (same slots); ``get_hub().loop.io()``
  watchers; ``gevent.resolver.thread.Resolver`` (subclassed) and
  ``gevent.config.threadpool_idle_task_timeout`` — ``worker.py``, ``disconnect.py``, ``resolver.py``.
"""
