"""The gevent socket reader (one watcher and one timer per stream, and the deadlines still hold) and the pool check.

gevent's own sockets work without monkey-patching, so these run in the test
process on a real socket pair; the sender is a second greenlet.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import gevent
import gevent.socket
import pytest

from streamchat.transport.socket_reader import GeventSocketReader, SocketReader, socket_reader


@pytest.fixture
def pair():
    ours, theirs = gevent.socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.fixture
def reader(pair):
    reader = GeventSocketReader(pair[0])
    yield reader
    reader.close()


def test_a_gevent_socket_gets_the_gevent_reader(pair):
    ours, _ = pair
    reader = socket_reader(ours)
    assert isinstance(reader, GeventSocketReader)
    reader.close()


def test_reads_what_is_waiting_and_what_comes_later(pair, reader):
    _, theirs = pair
    theirs.sendall(b"ready")
    assert reader.recv(100, 5) == b"ready"
    later = gevent.spawn_later(0.05, theirs.sendall, b"later")
    assert reader.recv(100, 5) == b"later"
    later.get()
    theirs.close()
    assert reader.recv(100, 5) == b""  # end of stream


def test_silence_past_the_timeout_raises_timeout_error(reader):
    with pytest.raises(TimeoutError):
        reader.recv(100, 0.05)


def test_a_deadline_that_moved_later_is_not_cut_short_by_the_old_timer(pair, reader):
    # The first read arms the timer for its deadline; the second read's deadline is later, so the
    # timer fires in the middle of the second wait and must re-arm itself instead of raising.
    _, theirs = pair
    gevent.spawn_later(0.05, theirs.sendall, b"one")
    assert reader.recv(100, 0.3) == b"one"
    sender = gevent.spawn_later(0.5, theirs.sendall, b"two")
    assert reader.recv(100, 3) == b"two"
    sender.get()


def test_the_timer_firing_while_the_stream_is_busy_elsewhere_throws_nothing(pair, reader):
    _, theirs = pair
    theirs.sendall(b"x")
    assert reader.recv(100, 0.05) == b"x"
    gevent.sleep(0.1)  # the timer fires now, while nobody waits in recv()
    theirs.sendall(b"y")
    assert reader.recv(100, 5) == b"y"


def test_an_earlier_deadline_rearms_the_timer(pair, reader):
    # First a long deadline (the first-token wait), then a short one (the idle timeout after text).
    _, theirs = pair
    theirs.sendall(b"first")
    assert reader.recv(100, 30) == b"first"
    with pytest.raises(TimeoutError):
        # Were the timer left at 30 s, gevent.Timeout would end this wait instead.
        gevent.with_timeout(5, reader.recv, 100, 0.05)


def test_close_stops_the_watchers(reader):
    with pytest.raises(TimeoutError):
        reader.recv(100, 0.01)
    reader.close()
    reader.close()  # twice is harmless
    assert reader._readable is None and reader._timer is None


def test_the_plain_reader_uses_the_socket_timeout():
    import socket

    ours, theirs = socket.socketpair()
    try:
        reader = SocketReader(ours)
        theirs.sendall(b"hi")
        assert reader.recv(100, 1) == b"hi"
        with pytest.raises(TimeoutError):
            reader.recv(100, 0.01)
    finally:
        ours.close()
        theirs.close()


def test_the_pool_sees_whether_an_idle_connection_is_still_open(pair):
    from streamchat.transport.pool import HTTPConnection

    ours, theirs = pair
    connection = HTTPConnection("127.0.0.1", 9)
    connection.sock = ours
    assert connection.is_connected
    theirs.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")  # bytes on an idle connection: not reusable
    assert not connection.is_connected
    ours.recv(100)
    assert connection.is_connected
    theirs.close()
    assert not connection.is_connected  # closed by the server
    connection.sock = None


def test_new_sessions_use_the_peeking_pools():
    from streamchat.transport.session import new_session
    from streamchat.transport.pool import HTTPConnectionPool

    session = new_session(2, "http://127.0.0.1:9/v1")
    pool = session.get_adapter("http://127.0.0.1:9/v1").poolmanager.connection_from_url("http://127.0.0.1:9/v1")
    assert isinstance(pool, HTTPConnectionPool)


def test_a_body_urllib3_reads_lets_other_greenlets_run_between_reads():
    # The raw reader cannot wait first: it passes the turn after each read instead (turn_passer).
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(root / "tests" / "greedy_upstream_probe.py")],
                            env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["texts"] == ["A", "B"]
    assert report["others_ran"] >= 2  # ~210 KB in 64 KB reads: 0 when a greedy stream holds the worker
