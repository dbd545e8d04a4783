"""gunicorn settings: gevent workers so one worker holds thousands of open streams.

Start it with ``python -m streamchat.server.serve`` (the Procfile does): it checks
every setting, these included, before gunicorn reads any of them. This file must
not import ``streamchat.config``: that imports ``requests`` and ``ssl`` into the
master, before the workers' gevent patching.
"""

import gc
import math
import os
import resource
import shutil
import tempfile
from pathlib import Path

from dotenv import load_dotenv

# Read here too for a plain `gunicorn -c gunicorn.conf.py wsgi:app` (serve.py has read it already).
if os.environ.get("ENV_FILE", ".env"):
    load_dotenv(os.environ.get("ENV_FILE", ".env"), override=False)

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "streamchat.server.worker.StreamingWorker"  # gevent's worker with a cheaper client write
# Connection slots per worker. Idle and slow connections hold one each (a head must arrive within
# CLIENT_HEADER_TIMEOUT of its first byte), so there are enough for thousands of them and the live
# streams besides; each open stream also holds an upstream socket: see _allow_open_files.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
# For gevent workers this is a liveness heartbeat, not a request limit: streams may run longer.
timeout = 30
# On SIGTERM a worker lets replies run DRAIN_SECONDS, then ends them with a notice (streamchat.server.drain)
# and exits; gunicorn's own deadline, after which it kills the worker, comes a margin later.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "20"))
DRAIN_MARGIN = 5  # whole seconds: gunicorn wants an int
graceful_timeout = math.ceil(DRAIN_SECONDS) + DRAIN_MARGIN
keepalive = 75
# gunicorn's control socket is shared by every gunicorn of the user: one app must not use another's.
control_socket_disable = True
accesslog = None  # the app logs one line per request itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info").lower()
if os.environ.get("LOG_FORMAT", "text").strip().lower() == "json":
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
    if not os.environ.get("METRICS_TOKEN", "").strip():
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
    if os.environ.get(METRICS_DIR_VARIABLE) and os.environ.get("METRICS_TOKEN", "").strip():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
