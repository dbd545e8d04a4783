"""The gunicorn entry point, imported as gunicorn's gevent worker imports it: in a process of its own."""

import subprocess
import sys

from servers import REPO, clean_env

LOG_IN_NEW_GREENLETS = """
import logging, threading
import wsgi  # patches for gevent and builds the app, as in the worker
import gevent

grew = []

def request_like():
    before = len(threading._active)
    logging.getLogger("streamchat.access").info("request_id=test status=200")
    grew.append(len(threading._active) - before)

gevent.joinall([gevent.spawn(request_like) for _ in range(20)])
print(sorted(set(grew)))
"""


def test_a_log_line_in_a_request_greenlet_does_not_make_it_a_thread():
    # Each greenlet is a request; a _DummyThread built for each would cost more than the line itself.
    result = subprocess.run([sys.executable, "-c", LOG_IN_NEW_GREENLETS], cwd=REPO, env=clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[0]"
