"""The WSGI entry point for gunicorn: patch for gevent first, then build the app."""

from gevent import monkey

# Before anything imports socket, ssl or requests: a late patch leaves blocking sockets behind.
monkey.patch_all()

from streamchat.server import resolver  # noqa: E402

resolver.install()  # IP addresses without a thread, one lookup per name (see its docstring)

import logging  # noqa: E402

# Every request runs in a new greenlet, which logging's records take for a new thread: for each one
# threading.current_thread() builds a _DummyThread (10 us of the access log line's 15, measured).
# No log format here shows the thread; gunicorn's shows the process, which stays.
logging.logThreads = False

import sys  # noqa: E402

from streamchat.config import ConfigError, read_env_file  # noqa: E402

# A .env file in the working directory, for local runs: a no-op under the launcher or gunicorn.conf.py,
# which read it already; ENV_FILE="" turns it off (the tests do).
read_env_file()

from app import create_app  # noqa: E402

try:
    app = create_app()
except ConfigError as exc:  # streamchat.server.serve checks first; this is for a plain `gunicorn wsgi:app`
    print(f"streamchat: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(4) from None  # gunicorn's "App failed to load": the master stops, no restart loop
