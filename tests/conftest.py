"""Shared fixtures: a clean environment, the fake upstream, gunicorn servers and Flask's test client.

Two tiers. A test that starts a real process (gunicorn, redis-server, nginx, Chromium) is marked
``processes``, on its own or through a fixture listed in ``PROCESS_FIXTURES``; ``./run-tests --fast``
runs the others, in-process, and the harness refuses to start a real process there
(``NotInFastTier``), so a test that needs one and is not marked fails instead of slowing the tier.
"""

from __future__ import annotations

import os
import shutil

import pytest

from servers import REAL_SETTINGS, REPO, Gunicorn, RedisServer
from streamchat.testing.fake_upstream import FakeUpstream
from streamchat.testing.processes import MissingComponent

#: Fixtures that start a real process: a test that uses one is in the full tier only.
PROCESS_FIXTURES = {"live", "live_anthropic", "redis_server", "shared_redis", "browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


def _missing(exc: MissingComponent):
    if os.environ.get("CI"):
        pytest.fail(str(exc))  # in CI a missing component is a failure, never a silent skip
    pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    try:
        return (yield)
    except MissingComponent as exc:
        _missing(exc)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except MissingComponent as exc:
        _missing(exc)

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(autouse=True)
def _no_real_settings(monkeypatch):
    """Remove real keys and settings from the environment so no test can reach a real provider."""
    for name in REAL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RULES_PATH", str(REPO / "rules.yaml"))
    # An in-process app lives as long as its test, its warm-connection thread as long as the test process,
    # opening connections to the shared fake upstream: tests/test_warm_tls.py turns it on where it is tested.
    monkeypatch.setenv("LLM_WARM_EVERY", "0")
    # Tests ask the same question many times, each meant as a model call: tests/test_reply_cache.py turns it on.
    monkeypatch.setenv("REPLY_CACHE_TTL", "0")


@pytest.fixture(scope="session")
def fake():
    """The fake upstream, on a loopback port, fast by default."""
    server = FakeUpstream(defaults={"first_token_ms": 20, "interval_ms": 5, "tokens": 12}).start_in_thread()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def live(fake, log_dir):
    """gunicorn (one gevent worker) answering from the fake upstream as an OpenAI-compatible server.

    With no resume grace: a client that leaves ends its reply at once (``test_resume`` has the grace).
    """
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", OPENAI_MODEL="fake-gpt", RESUME_GRACE="0",
                  LLM_CONNECT_TIMEOUT="1", LLM_FIRST_TOKEN_TIMEOUT="3", LLM_IDLE_TIMEOUT="2",
                  LLM_MAX_DURATION="20", LLM_COOLDOWN="0") as server:
        yield server


@pytest.fixture(scope="session")
def live_anthropic(fake, log_dir):
    """gunicorn answering from the fake upstream as the Anthropic Messages API."""
    with Gunicorn(log_dir, ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=fake.url, ANTHROPIC_MODEL="fake-claude",
                  LLM_CONNECT_TIMEOUT="1", LLM_FIRST_TOKEN_TIMEOUT="3", LLM_IDLE_TIMEOUT="2",
                  LLM_COOLDOWN="0") as server:
        yield server


@pytest.fixture
def app():
    from app import create_app

    return create_app({"CHAT_RATE_LIMIT": "100000/minute", "CHAT_MAX_MESSAGES": "5", "CHAT_MAX_CHARS": "200",
                       "CHAT_MAX_BODY_BYTES": "2048", "RESUME_GRACE": "0"})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory):
    """One redis-server for a module's instances to share (its tests tell their keys apart)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# -- the one headless Chromium of the session (test_browser, test_widget) ---------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: ./run-tests installs it with apt-get")
        pytest.skip(f"{CHROMIUM} is not installed (./run-tests installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
