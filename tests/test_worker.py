"""The gunicorn worker's client socket: one plain send when the kernel takes it all, gevent's sendall for the rest.

Real gevent sockets in the test process; the reader is a second greenlet.
"""

import errno

import gevent
import gevent.socket
import pytest

from streamchat.errors import ClientDisconnected
from streamchat.server.worker import ClientSocket

MORE_THAN_THE_BUFFERS = b"x" * 20_000_000


@pytest.fixture
def pair():
    ours, theirs = gevent.socket.socketpair()
    ours.__class__ = ClientSocket  # as StreamingWorker.handle does
    yield ours, theirs
    ours.close()
    theirs.close()


def read_exactly(sock, size):
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            break
        data += piece
    return bytes(data)


def test_a_small_write_arrives_whole(pair):
    ours, theirs = pair
    ours.sendall(b"5\r\nhello\r\n")
    assert read_exactly(theirs, 10) == b"5\r\nhello\r\n"


def test_a_write_larger_than_the_socket_buffer_waits_for_the_reader_and_arrives_whole(pair):
    ours, theirs = pair
    data = bytes(range(256)) * 40_000  # 10 MB: far more than the kernel takes at once
    reader = gevent.spawn(read_exactly, theirs, len(data))
    ours.sendall(data)
    assert reader.get(timeout=30) == data


def test_writing_to_a_client_that_left_raises(pair):
    ours, theirs = pair
    theirs.close()
    with pytest.raises(OSError):
        for _ in range(100):
            ours.sendall(b"x" * 65536)



def test_a_client_that_reads_nothing_is_given_up_on_as_a_broken_pipe(pair, monkeypatch, caplog):
    ours, theirs = pair
    monkeypatch.setattr(ClientSocket, "send_timeout", 0.2)
    with pytest.raises(BrokenPipeError) as info:
        ours.sendall(MORE_THAN_THE_BUFFERS)
    assert info.value.errno == errno.EPIPE  # what gunicorn takes quietly as the client being gone
    assert ours.timeout is None  # the socket's own timeout is left as it was
    assert "the client read nothing for 0.2 s" in caplog.text


def test_a_client_seen_leaving_while_a_write_waits_is_a_broken_pipe(pair):
    ours, theirs = pair
    writer = gevent.spawn(ours.sendall, MORE_THAN_THE_BUFFERS)
    gevent.sleep(0)  # it runs until its write waits for the reader
    writer.kill(ClientDisconnected(), block=True, timeout=5)  # thrown into it from the hub, as the client watch does
    assert isinstance(writer.exception, BrokenPipeError)
