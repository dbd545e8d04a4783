"""Warm connections and TLS session resumption, against an HTTPS upstream that counts its handshakes.

The fake upstream serves TLS with a certificate from a throwaway CA, counts full and resumed handshakes,
and closes a connection left idle for a set time, as providers do. In process (threads, the standard
``ssl``) the parts are checked one by one; through gunicorn (gevent's ``ssl``) the promise itself: after
a quiet spell longer than the upstream keeps a connection, a request starts on a connection that was
ready before it was sent.
"""

from __future__ import annotations

import json
import ssl
import threading
import time

import pytest
import trustme

from app import create_app, warm_connections
from servers import Gunicorn, chat_body, eventually, request
from streamchat.config import load_settings
from streamchat.server.drain import DRAIN
from streamchat.testing.fake_upstream import FakeUpstream
from streamchat.transport.session import new_session, send_json
from streamchat.transport.tls import verifying_context
from streamchat.transport.warm import WarmConnections, WarmTarget
from urllib3.util.ssl_ import create_urllib3_context

IDLE_CLOSE_MS = 1500  # the fake upstream's keep-alive limit


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def bundle(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def tls_upstream(ca, **options) -> FakeUpstream:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return FakeUpstream(defaults={"first_token_ms": 5, "interval_ms": 2, "tokens": 4}, tls=context,
                        **options).start_in_thread()


@pytest.fixture(scope="module")
def upstream(ca):
    server = tls_upstream(ca, idle_close_ms=IDLE_CLOSE_MS)
    yield server
    server.stop()


@pytest.fixture
def session(bundle, upstream, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    return new_session(10, f"{upstream.url}/v1")


def ask(session, upstream, tag: str, **fake):
    content = f"hi\nfake: {json.dumps({'id': tag, **fake})}"
    return send_json(session, f"{upstream.url}/v1/chat/completions", {},
                     {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}, (5, 5))


def read_whole(response) -> bytes:
    body = response.content
    response.close()
    return body


def test_the_context_checks_certificates_as_urllib3s_own_and_accepts_tickets():
    ours, theirs = verifying_context(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs"), create_urllib3_context()
    assert (ours.verify_mode, ours.check_hostname, ours.minimum_version, ours.hostname_checks_common_name) == \
        (ssl.CERT_REQUIRED, True, theirs.minimum_version, False)
    assert ours.verify_flags == theirs.verify_flags
    # The same options but one: urllib3 refuses TLS 1.2 session tickets, the very thing to resume with.
    assert ours.options | ssl.OP_NO_TICKET == theirs.options and not ours.options & ssl.OP_NO_TICKET


def test_a_burst_of_new_connections_resumes_the_first_ones_session(session, upstream):
    read_whole(ask(session, upstream, "seed"))  # a full handshake; its response brings the ticket
    handshakes, resumed = upstream.handshakes, upstream.resumed
    # Held open together: the first reuses the seed's connection, the other seven are new.
    held = [ask(session, upstream, f"burst-{n}", first_token_ms=300) for n in range(8)]
    for response in held:
        read_whole(response)
    assert upstream.handshakes - handshakes == 7
    assert upstream.resumed - resumed == 7


def test_a_session_never_stands_in_for_a_certificate_check(session, upstream, ca):
    # The same host name on another port, its certificate from a CA the session does not trust: the session
    # kept for 127.0.0.1 is offered, the server cannot resume it, and the full handshake fails the check.
    read_whole(ask(session, upstream, "trusted"))
    assert "127.0.0.1" in session.get_adapter(upstream.url).tls_context.sessions
    stranger = tls_upstream(trustme.CA())
    try:
        with pytest.raises(Exception) as raised:
            send_json(session, f"{stranger.url}/v1/chat/completions", {}, {"model": "m", "stream": True,
                                                                            "messages": []}, (5, 5))
        assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
        assert stranger.wait_for(lambda: stranger.handshake_failures == 1) and stranger.handshakes == 0
    finally:
        stranger.stop()


def test_a_warm_connection_is_opened_ahead_and_carries_the_next_request(session, upstream):
    warm = WarmConnections([WarmTarget("tls", session, f"{upstream.url}/v1")], every=60, connect_timeout=5)
    connections = upstream.connections
    assert warm.tend(warm.targets[0]) == "opened"
    assert upstream.wait_for(lambda: upstream.connections == connections + 1)
    assert upstream.requests_on(connections + 1) == 0  # opened with no request: nothing logged, no token spent
    assert warm.tend(warm.targets[0]) == "ready"  # one per round: a fresh idle connection is enough
    sent = time.monotonic()
    assert read_whole(ask(session, upstream, "after-warm"))
    record = upstream.find("after-warm")
    # Its TLS session tickets waited unread on the connection; they did not make it look closed.
    assert record.connection == connections + 1 and upstream.accepted_at[record.connection] < sent
    assert upstream.connections == connections + 1


def test_an_idle_connection_the_upstream_closed_is_replaced(session, upstream):
    warm = WarmConnections([WarmTarget("tls", session, f"{upstream.url}/v1")], every=60, connect_timeout=5)
    read_whole(ask(session, upstream, "before-spell"))
    used = upstream.find("before-spell").connection
    assert upstream.wait_for(lambda: used in upstream.closed_idle, timeout=IDLE_CLOSE_MS / 1000 + 5)
    connections = upstream.connections
    assert warm.tend(warm.targets[0]) == "opened"
    sent = time.monotonic()
    read_whole(ask(session, upstream, "after-spell"))
    record = upstream.find("after-spell")
    assert record.connection == connections + 1 and upstream.accepted_at[record.connection] < sent


def test_the_idle_connection_stays_in_the_pool_while_its_replacement_shakes_hands(ca, bundle, monkeypatch):
    # A request arriving during the replacement's handshake takes the idle connection, not a handshake of its own.
    slow = tls_upstream(ca, tls_delay_ms=400)
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        session = new_session(10, f"{slow.url}/v1")
        read_whole(ask(session, slow, "first"))
        idle = slow.find("first").connection
        warm = WarmConnections([WarmTarget("slow", session, f"{slow.url}/v1")], every=0.001, connect_timeout=5)
        time.sleep(0.01)  # the idle connection is now older than ``every``: the round replaces it
        accepted = slow.accepted
        round_ = threading.Thread(target=warm.tend, args=(warm.targets[0],))
        round_.start()
        assert slow.wait_for(lambda: slow.accepted == accepted + 1)  # the replacement is shaking hands
        read_whole(ask(session, slow, "during"))
        round_.join()
        assert slow.find("during").connection == idle and slow.accepted == accepted + 1
    finally:
        slow.stop()


def test_nothing_is_opened_while_held_or_when_every_slot_carries_a_stream(bundle, upstream, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    one_slot = new_session(1, f"{upstream.url}/v1")
    held = WarmConnections([WarmTarget("tls", one_slot, f"{upstream.url}/v1", lambda: False)], every=60,
                           connect_timeout=5)
    free = WarmConnections([WarmTarget("tls", one_slot, f"{upstream.url}/v1")], every=60, connect_timeout=5)
    connections = upstream.connections
    assert held.tend(held.targets[0]) == "held"
    streaming = ask(one_slot, upstream, "the-one-slot", first_token_ms=300)
    assert free.tend(free.targets[0]) == "full"
    read_whole(streaming)
    assert upstream.connections == connections + 1  # the stream's own


def test_an_unreachable_upstream_is_tried_again_next_round_without_a_word_above_debug(caplog, session):
    warm = WarmConnections([WarmTarget("gone", session, "https://127.0.0.1:9/v1")], every=60, connect_timeout=1)
    assert warm.tend(warm.targets[0]) == "failed"
    assert warm.tend(warm.targets[0]) == "failed"
    assert not [r for r in caplog.records if r.levelname != "DEBUG"]


def test_the_app_warms_no_upstream_that_cools_down_nor_while_draining(upstream, bundle, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    config = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"{upstream.url}/v1"}
    app = create_app(config)
    relay = app.extensions["streamchat"].relay
    warm = warm_connections(load_settings({**config, "LLM_WARM_EVERY": "15"}), relay)
    [target] = warm.targets
    assert (target.name, warm.every) == ("openai", 15.0) and target.may_open()
    relay.breaker.cool("openai", 30, "rate_limited")
    assert warm.tend(target) == "held"
    relay.breaker.cool("openai", 0, "")
    assert target.may_open()
    monkeypatch.setattr(DRAIN, "started_at", time.monotonic())
    assert warm.tend(target) == "held"


@pytest.mark.processes
def test_after_a_quiet_spell_the_first_request_finds_a_ready_connection(upstream, bundle, log_dir):
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{upstream.url}/v1", REQUESTS_CA_BUNDLE=str(bundle),
                  LLM_WARM_EVERY="0.5") as server:
        assert request(server.url, "POST", "/api/chat", chat_body("hi", id="first"))[0] == 200
        connections = upstream.connections
        time.sleep(2 * IDLE_CLOSE_MS / 1000)  # the quiet spell: twice as long as the upstream keeps a connection
        assert upstream.connections > connections  # replaced in the background while nobody asked
        sent = time.monotonic()
        status, headers, body = request(server.url, "POST", "/api/chat", chat_body("hi", id="after-quiet"))
        assert (status, headers["X-Terminal-Mode"]) == (200, "live")
        record = upstream.find("after-quiet")
        assert upstream.accepted_at[record.connection] < sent  # no handshake in the request's path
        # Warm connections are not requests: the access log has the two chats only.
        assert eventually(lambda: len([line for line in server.access_lines() if "path=/api/chat" in line]) == 2)
