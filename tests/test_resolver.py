"""The worker's resolver: an IP address answered in place, a name looked up once for many.

Runs in the test process with a real gevent hub and thread pool; the pool is only
wrapped, to count what reaches it and to make a lookup slow or failing on demand.
"""

import _socket
import os
import subprocess
import sys
from pathlib import Path

import gevent
import gevent.event
import pytest

from streamchat.server import resolver as resolver_module
from streamchat.server.resolver import Resolver

ROOT = Path(__file__).resolve().parent.parent
NAME = ("localhost", 8000, _socket.AF_INET, _socket.SOCK_STREAM)  # /etc/hosts: no DNS server is asked


class Pool:
    """gevent's thread pool, counting calls; ``gate`` holds lookups back, ``error`` makes them fail."""

    def __init__(self, pool):
        self.pool = pool
        self.calls = 0
        self.gate = None
        self.error = None

    def apply(self, function, args, kwargs=None):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.pool.apply(function, args, kwargs)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def resolver(clock):
    resolver = Resolver(gevent.get_hub(), clock=clock)
    resolver.pool = Pool(resolver.pool)
    return resolver


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.1.2.3"])
def test_an_ip_address_is_answered_without_the_thread_pool(resolver, host):
    args = (host, 8000, 0, _socket.SOCK_STREAM)
    assert resolver.getaddrinfo(*args) == _socket.getaddrinfo(*args)
    assert resolver.pool.calls == 0


def test_a_name_is_looked_up_in_the_thread_pool_and_its_answer_kept_for_a_while(resolver, clock):
    assert resolver.getaddrinfo(*NAME) == _socket.getaddrinfo(*NAME)
    clock.now += resolver_module.NAME_CACHE_SECONDS - 1
    assert resolver.getaddrinfo(*NAME) == _socket.getaddrinfo(*NAME)
    assert resolver.pool.calls == 1
    clock.now += 2
    resolver.getaddrinfo(*NAME)
    assert resolver.pool.calls == 2


def test_greenlets_asking_for_a_name_together_share_one_lookup(resolver):
    resolver.pool.gate = gate = gevent.event.Event()
    askers = [gevent.spawn(resolver.getaddrinfo, *NAME) for _ in range(5)]
    gevent.sleep(0.01)
    gate.set()
    gevent.joinall(askers, timeout=10, raise_error=True)
    assert [asker.value for asker in askers] == [_socket.getaddrinfo(*NAME)] * 5
    assert resolver.pool.calls == 1


def test_a_failed_lookup_reaches_those_waiting_for_it_and_is_not_kept(resolver):
    resolver.pool.gate = gate = gevent.event.Event()
    resolver.pool.error = _socket.gaierror(_socket.EAI_NONAME, "Name or service not known")
    askers = [gevent.spawn(resolver.getaddrinfo, *NAME) for _ in range(3)]
    gevent.sleep(0.01)
    gate.set()
    gevent.joinall(askers, timeout=10)
    assert all(isinstance(asker.exception, _socket.gaierror) for asker in askers)
    assert resolver.pool.calls == 1
    resolver.pool.error = None
    assert resolver.getaddrinfo(*NAME) == _socket.getaddrinfo(*NAME)
    assert resolver.pool.calls == 2


def test_when_the_greenlet_looking_up_is_interrupted_the_others_ask_again(resolver):
    resolver.pool.gate = gate = gevent.event.Event()
    first = gevent.spawn(resolver.getaddrinfo, *NAME)
    gevent.sleep(0.01)
    waiting = gevent.spawn(resolver.getaddrinfo, *NAME)
    gevent.sleep(0.01)
    first.kill(RuntimeError("client gone"))  # e.g. ClientDisconnected thrown into a request's greenlet
    gate.set()
    waiting.join(timeout=10)
    assert waiting.value == _socket.getaddrinfo(*NAME)
    assert resolver.pool.calls == 2


def test_the_wsgi_entry_point_installs_it():
    probe = ("import wsgi, gevent; hub = gevent.get_hub(); "
             "print(type(hub.resolver).__module__, hub.threadpool._idle_task_timeout)")
    env = {**os.environ, "ENV_FILE": "", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [resolver_module.__name__, str(resolver_module.IDLE_THREAD_SECONDS)]
