"""The worker's resolver: an IP address is answered in place, a name still in gevent's thread pool.

Runs in the test process with a real gevent hub and thread pool; the pool is only
wrapped to count what reaches it.
"""

import _socket
import os
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from streamchat.resolver import Resolver

ROOT = Path(__file__).resolve().parent.parent


class CountingPool:
    def __init__(self, pool):
        self.pool = pool
        self.calls = 0

    def apply(self, *args, **kwargs):
        self.calls += 1
        return self.pool.apply(*args, **kwargs)


@pytest.fixture
def resolver():
    resolver = Resolver(gevent.get_hub())
    resolver.pool = CountingPool(resolver.pool)
    return resolver


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.1.2.3"])
def test_an_ip_address_is_answered_without_the_thread_pool(resolver, host):
    args = (host, 8000, 0, _socket.SOCK_STREAM)
    assert resolver.getaddrinfo(*args) == _socket.getaddrinfo(*args)
    assert resolver.pool.calls == 0


def test_a_name_goes_to_the_thread_pool_and_gets_the_system_answer(resolver):
    args = ("localhost", 8000, _socket.AF_INET, _socket.SOCK_STREAM)
    assert resolver.getaddrinfo(*args) == _socket.getaddrinfo(*args)
    assert resolver.pool.calls == 1


def test_the_wsgi_entry_point_installs_it():
    probe = "import wsgi, gevent; print(type(gevent.get_hub().resolver).__module__)"
    env = {**os.environ, "ENV_FILE": "", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "streamchat.resolver"
