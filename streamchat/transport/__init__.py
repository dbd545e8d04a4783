"""Upstream transport: how a provider's HTTP request goes out and its streamed body comes back.

``session`` (the pooled session and the one call that sends), ``body`` (a
body read one network read at a time under a deadline), ``chunked`` (a pure
chunked-coding decoder), ``socket_reader`` (gevent's socket waited on with one
watcher and one timer per stream), ``pool`` (idle-connection checks without
the event loop, idle ages), ``tls`` (the shared TLS context that resumes
sessions), ``warm`` (an idle connection kept ready ahead of need) and ``failures`` (every ``requests``/``urllib3``/socket
failure, HTTP error status and in-stream error object named in the
``streamchat.errors`` tree) and ``rate_limits`` (what an upstream's headers say
is left of a key's limits). Nothing here knows a provider or a web framework.

This package and ``streamchat.server`` are the only places that reach into
libraries' private attributes. What this package relies on, to check when
upgrading (versions pinned in ``requirements.txt``):

- http.client (``urllib3.HTTPResponse._fp`` is an ``http.client.HTTPResponse``):
  ``_fp.fp`` (its ``BufferedReader``), ``_fp.chunked``, ``_fp.chunk_left``
  (set to ``None`` to mark the body read), ``_fp.will_close``, ``_fp._close_conn()``,
  and, for a connection that closes after the response, ``_fp.fp.raw._sock``
  (``socket.SocketIO``'s socket) — ``body.py``.
- urllib3: ``HTTPResponse._fp``, ``HTTPResponse.connection.sock``,
  ``HTTPConnection.is_connected`` (overridden), ``PoolManager.pool_classes_by_scheme``
  (replaced), ``HTTPConnectionPool._put_conn`` (extended) — ``body.py``, ``pool.py``,
  ``session.py``; ``HTTPConnectionPool.pool`` (the queue of idle connections and
  free slots), ``._new_conn()``, ``._get_conn()``, ``._put_conn()``, ``._prepare_proxy()`` — ``warm.py``;
  ``urllib3.util.ssl_.SSLContext`` (the class subclassed; ``create_urllib3_context``'s
  settings mirrored, a test compares them) — ``tls.py``.
- ssl (CPython, and gevent's copy): ``SSLContext.wrap_socket(session=)``,
  ``SSLSocket.session`` / ``.session_reused`` — ``tls.py``.
- requests: ``HTTPAdapter.build_response`` (overridden; a documented hook) —
  ``session.py``.
- gevent: a gevent socket's ``_sock`` (the OS socket, non-blocking; over TLS it
  carries encrypted records, so TLS reads go through the SSL socket instead),
  ``get_hub().loop.io()`` / ``.timer()`` watchers and ``hub.wait()`` —
  ``socket_reader.py``, ``pool.py``.
"""
