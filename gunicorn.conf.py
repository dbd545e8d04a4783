"""gunicorn settings: gevent workers so one worker holds thousands of open streams.

Start it with ``python -m streamchat.server.serve`` (the Procfile does): it checks
every setting, these included, before gunicorn reads any of them. The server's
settings come from the one table (``streamchat.config``, which imports no HTTP
stack: nothing here may import ``requests`` or ``ssl`` into the master, before
the workers' gevent patching).
"""

import gc
import math
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from streamchat.config import SERVER_SETTINGS, ConfigError, parse_settings, read_env_file

read_env_file()  # for a plain `gunicorn -c gunicorn.conf.py wsgi:app`; the launcher has read it already
try:
    server_settings = parse_settings(SERVER_SETTINGS)
except ConfigError as exc:  # one line and exit 2, as the launcher says it, not gunicorn's traceback
    print(f"streamchat: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

bind = f"{server_settings.host}:{server_settings.port}"
workers = server_settings.web_concurrency
worker_class = "streamchat.server.worker.StreamingWorker"  # gevent's worker with a cheaper client write
# Connection slots per worker. Idle and slow connections hold one each (a head must arrive within
# CLIENT_HEADER_TIMEOUT of its first byte), so there are enough for thousands of them and the live
# streams besides; each open stream also holds an upstream socket: see _allow_open_files.
worker_connections = server_settings.worker_connections
# For gevent workers this is a liveness heartbeat, not a request limit: streams may run longer.
timeout = 30
# On SIGTERM a worker lets replies run DRAIN_SECONDS, then ends them with a notice (streamchat.server.drain)
# and exits; gunicorn's own deadline, after which it kills the worker, comes a margin later.
DRAIN_MARGIN = 5  # whole seconds: gunicorn wants an int
graceful_timeout = math.ceil(server_settings.drain_seconds) + DRAIN_MARGIN
keepalive = 75
# gunicorn's control socket is shared by every gunicorn of the user: one app must not use another's.
control_socket_disable = True
accesslog = None  # the app logs one line per request itself
errorlog = "-"
loglevel = server_settings.gunicorn_log_level
if server_settings.log_format == "json":
    logger_class = "streamchat.server.gunicorn_log.JsonLogger"  # gunicorn's lines as JSON objects too
# Never preload: the app imports requests/ssl, which must come after gevent's monkey-patching.
preload_app = False
GC_YOUNG_THRESHOLD = 10_000


def _allow_open_files(wanted: int) -> None:
    # Many systems start processes with 1,024 open files: far fewer than worker_connections client
    # sockets plus an upstream socket per stream. Raise the soft limit (as far as the hard one allows).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_allow_open_files(2 * worker_connections + 256)


def post_worker_init(worker):
    """Tune the garbage collector once the worker has built the app (figures in BENCHMARKS.md)."""
    # What start-up built lives as long as the worker: keep it out of every collection from now on.
    gc.freeze()
    # An open stream holds ~140 objects the collector tracks, yet a request leaves only ~16 in a
    # reference cycle (werkzeug's URL matcher). With CPython's default of a young collection every
    # 700 net allocations, 1,000 streams' objects were promoted and rescanned until full collections
    # of 75-90 ms stalled every stream; collecting young objects every 10,000 cuts that out.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


# Metrics (METRICS_TOKEN set): prometheus_client's multiprocess mode. Each worker writes its counts to files
# in one directory, and whichever worker answers GET /metrics adds them all up. The directory is emptied
# at start (counts from a previous run must not be added in), and a dead worker's live gauges (open
# streams) are dropped; its counters stay, so the totals survive a worker being replaced.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_made_metrics_dir = None


def on_starting(server):
    """Before any worker forks: give the metrics a fresh directory the workers inherit."""
    global _made_metrics_dir
    if not server_settings.metrics_token:
        return
    chosen = os.environ.get(METRICS_DIR_VARIABLE)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        _made_metrics_dir = tempfile.mkdtemp(prefix="streamchat-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = _made_metrics_dir


def child_exit(server, worker):
    """A worker ended (or was killed): its open-stream gauge must stop counting."""
    if os.environ.get(METRICS_DIR_VARIABLE) and server_settings.metrics_token:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
