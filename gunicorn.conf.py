"""gunicorn settings: gevent workers so one worker holds thousands of open streams."""

import gc
import os
import resource

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "streamchat.server.worker.StreamingWorker"  # gevent's worker with a cheaper client write
# Connection slots per worker. Idle and slow connections hold one each (a head must arrive within
# CLIENT_HEADER_TIMEOUT of its first byte), so there are enough for thousands of them and the live
# streams besides; each open stream also holds an upstream socket: see _allow_open_files.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))
# For gevent workers this is a liveness heartbeat, not a request limit: streams may run longer.
timeout = 30
graceful_timeout = 20
keepalive = 75
# gunicorn's control socket is shared by every gunicorn of the user: one app must not use another's.
control_socket_disable = True
accesslog = None  # the app logs one line per request itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
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
