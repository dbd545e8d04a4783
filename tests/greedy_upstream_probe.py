"""Run by test_socket_reader.py in its own process (monkey-patching is for a whole process).

An upstream answers with a close-delimited body (no chunked framing: urllib3 reads it) that is
wholly in the socket buffers, so no read has to wait: text "A", ~210 KB of SSE comments, text "B".
Prints the two texts, what followed, and how often another greenlet ran while the stream went
from "A" to "B".
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402

import gevent  # noqa: E402

from streamchat.domain.providers import OpenAIChat, Timeouts  # noqa: E402
from streamchat.transport.session import new_session  # noqa: E402

PADDING = b": padding to keep the reader busy\n\n" * 6000  # ~210 KB of comments between the two texts


def event(text):
    return b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % text.encode()


BODY = event("A") + PADDING + event("B") + b"data: [DONE]\n\n"


def serve(listener):
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(65536)
    head, _, body = request.partition(b"\r\n\r\n")
    length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + BODY)
    conn.close()


listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
server = gevent.spawn(serve, listener)
ticks = [0]


def ticker():
    while True:
        ticks[0] += 1
        gevent.sleep(0)


provider = OpenAIChat(model="m", base_url=url, api_keys=(), session=new_session(1, url),
                      timeouts=Timeouts(5, 5, 5, 30), max_tokens=5, temperature=None, system_prompt="")
stream = provider.stream([{"role": "user", "content": "hi"}])
first = next(stream)
server.join(10)  # the whole body is now in the socket buffers: no read below has to wait
tick_runner = gevent.spawn(ticker)
gevent.sleep(0)
before = ticks[0]
second = next(stream)
during = ticks[0] - before
rest = list(stream)
tick_runner.kill()
print(json.dumps({"texts": [first, second, *rest], "others_ran": during}))
