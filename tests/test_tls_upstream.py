"""Every hosted provider speaks HTTPS: the streams of the other tests, over TLS, through a real gevent worker.

The fake upstream serves TLS with a certificate from a throwaway CA (``trustme``); the worker trusts it
through ``REQUESTS_CA_BUNDLE``. Over TLS the socket carries encrypted records and the TLS layer buffers
what it decrypted, so the worker's own socket reader (``transport/socket_reader.py``) reads differently.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading

import pytest
import trustme

from servers import Gunicorn, chat_body, eventually, parse_chunked, raw_exchange, request
from streamchat.testing.fake_upstream import FakeUpstream
from streamchat.testing.fake_upstream.server import tokens_of
from streamchat.transport.session import new_session, send_json
from streamchat.web.framing.text import CUT_SHORT_NOTICE


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_fake(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = FakeUpstream(defaults={"first_token_ms": 20, "interval_ms": 5, "tokens": 12}, tls=context)
    yield server.start_in_thread()
    server.stop()


@pytest.fixture(scope="module")
def tls_live(tls_fake, ca, log_dir, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{tls_fake.url}/v1", REQUESTS_CA_BUNDLE=str(bundle),
                  RESUME_GRACE="0", LLM_FIRST_TOKEN_TIMEOUT="3", LLM_IDLE_TIMEOUT="1", LLM_COOLDOWN="0") as server:
        yield server


def chat(server, **fake):
    return request(server.url, "POST", "/api/chat", chat_body("hi", **fake))


@pytest.mark.processes
def test_replies_stream_whole_over_tls_on_one_kept_connection(tls_live, tls_fake):
    assert chat(tls_live, text="warm up")[2] == b"warm up"
    connections = tls_fake.connections
    for n in range(3):
        text = f"reply {n}: " + "words cut across reads and records " * 20
        status, headers, body = chat(tls_live, text=text, split=7, split_ms=1, first_token_ms=0)
        assert (status, headers["X-Terminal-Mode"], body.decode()) == (200, "live", text)
    # The reader gave the connection back as it found it: the next request reused it.
    assert tls_fake.connections == connections


@pytest.mark.processes
@pytest.mark.parametrize("framing", ["chunked", "chunked-close", "close", "gzip"])
def test_a_burst_arrives_byte_for_byte_whatever_the_framing(tls_live, framing):
    # Everything in one write: many TLS records at once, most of them decrypted without a wait.
    params = {"tokens": 4000, "interval_ms": 0, "first_token_ms": 0, "framing": framing}
    status, headers, body = chat(tls_live, **params)
    assert (status, headers["X-Terminal-Mode"]) == (200, "live")
    assert body.decode() == "".join(tokens_of(params))


@pytest.mark.processes
@pytest.mark.parametrize("fault", ["drop_after", "error_after", "bad_json"])
def test_a_reply_broken_over_tls_ends_with_a_notice(tls_live, fault):
    raw = raw_exchange(tls_live.url, chat_body("hi", text="one two three four five six", first_token_ms=0,
                                               fault=fault, after=3))
    head, chunks, terminated = parse_chunked(raw)
    assert b"X-Terminal-Mode: live" in head and terminated
    assert b"".join(chunks).decode() == "one two three " + CUT_SHORT_NOTICE


@pytest.mark.processes
def test_a_stall_over_tls_ends_at_the_idle_timeout_and_closes_the_upstream(tls_live, tls_fake):
    text = "one two three four five six"
    raw = raw_exchange(tls_live.url, chat_body("hi", text=text, first_token_ms=0, fault="stall_after", after=3,
                                               id="tls-stall"))
    head, chunks, terminated = parse_chunked(raw)
    body = b"".join(chunks).decode()
    assert b"X-Terminal-Mode: live" in head and terminated
    assert body == "one two three " + CUT_SHORT_NOTICE
    assert tls_fake.wait_for(lambda: tls_fake.find("tls-stall").peer_closed)


@pytest.mark.processes
def test_a_client_that_leaves_closes_the_tls_upstream(tls_live, tls_fake):
    host, port = tls_live.url.removeprefix("http://").split(":")
    body = chat_body("hi", tokens=100000, interval_ms=10, first_token_ms=0, id="tls-leave")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"POST /api/chat HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        assert b"X-Terminal-Mode: live" in client.recv(65536)
    assert tls_fake.wait_for(lambda: tls_fake.find("tls-leave").peer_closed)
    assert eventually(lambda: "ended=client_gone" in "\n".join(tls_live.access_lines()))


@pytest.mark.processes
def test_an_untrusted_certificate_is_a_fallback_and_says_why(tls_fake, log_dir):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{tls_fake.url}/v1", LLM_COOLDOWN="0") as server:
        status, headers, body = chat(server, text="never seen")
        assert (status, headers["X-Terminal-Mode"]) == (200, "fallback") and body
        assert eventually(lambda: "CERTIFICATE_VERIFY_FAILED" in server.log())


@pytest.mark.processes
def test_a_ca_bundle_that_cannot_be_loaded_is_said_once_and_the_rules_answer(tls_fake, log_dir):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{tls_fake.url}/v1", REQUESTS_CA_BUNDLE="/nonexistent/ca.pem",
                  LLM_COOLDOWN="0") as server:
        assert [chat(server, text="never seen")[1]["X-Terminal-Mode"] for _ in range(2)] == ["fallback"] * 2
        assert server.log().count("the CA bundle /nonexistent/ca.pem could not be loaded") == 1


def test_connections_share_one_context_and_the_bundle_is_read_once(tls_fake, ca, tmp_path, monkeypatch):
    # Loading a bundle (certifi's: 40 ms of CPU) for each new connection stalled every stream of a worker.
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    session = new_session(4, f"{tls_fake.url}/v1")
    bundle.unlink()  # read when the session was made, never again
    statuses = []
    for n in range(3):  # "chunked-close": each reply ends its connection, so three connections, three handshakes
        content = f"hi\nfake: {json.dumps({'framing': 'chunked-close', 'text': f'reply {n}'})}"
        response = send_json(session, f"{tls_fake.url}/v1/chat/completions", {},
                             {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}, (5, 5))
        statuses.append(response.status_code)
        response.content
        response.close()
    assert statuses == [200] * 3
    assert session.get_adapter(tls_fake.url).tls_context.session_stats()["connect"] == 3


class ConnectProxy:
    """An HTTP proxy that tunnels ``CONNECT host:port`` (what ``HTTPS_PROXY`` asks of it), counting the tunnels."""

    def __init__(self):
        self.tunnels = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():  # the loop is started in its own thread: the test's thread may be inside another one
            self._server = self._loop.run_until_complete(asyncio.start_server(self._tunnel, "127.0.0.1", 0))
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="connect-proxy", daemon=True)
        self._thread.start()
        assert started.wait(10)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _tunnel(self, client_reader, client_writer):
        self._writers.add(client_writer)
        head = await client_reader.readuntil(b"\r\n\r\n")
        method, target = head.split(b" ")[:2]
        assert method == b"CONNECT", head
        host, port = target.decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        self._writers.add(upstream_writer)
        self.tunnels += 1
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer),
                             return_exceptions=True)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def stop(self):
        async def close_all():
            self._server.close()
            await self._server.wait_closed()
            for writer in self._writers:
                writer.close()
                await asyncio.gather(writer.wait_closed(), return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_through_https_proxy_connections_share_the_context_too(tls_fake, ca, tmp_path, monkeypatch):
    proxy = ConnectProxy()
    try:
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        for name in ("NO_PROXY", "no_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        session = new_session(4, f"{tls_fake.url}/v1")
        bundle.unlink()
        for n in range(3):  # a connection each, as above, each through its own tunnel
            content = f"hi\nfake: {json.dumps({'framing': 'chunked-close', 'text': f'proxied {n}'})}"
            response = send_json(session, f"{tls_fake.url}/v1/chat/completions", {},
                                 {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]},
                                 (5, 5))
            assert response.status_code == 200 and response.content.endswith(b"data: [DONE]\n\n")
            response.close()
        assert proxy.tunnels == 3
        assert session.get_adapter(tls_fake.url).tls_context.session_stats()["connect"] == 3
    finally:
        proxy.stop()
