"""Fuzzed request bodies and raw HTTP against a real gunicorn worker: never a 5xx, never a restart."""

import collections
import re

import pytest

from servers import Gunicorn, chat_body, request
from streamchat.testing.fuzz import fuzz

pytestmark = pytest.mark.processes  # every test here starts gunicorn, redis-server, nginx or Chromium

EXAMPLES = 150  # of each kind; bench/fuzz runs 10,000


def test_fuzzed_requests_never_get_a_5xx_and_the_worker_keeps_serving(log_dir, fake):
    key = "fuzzing-service-key-0123456789"
    with Gunicorn(log_dir, OPENAI_BASE_URL=f"{fake.url}/v1", LLM_FIRST_TOKEN_TIMEOUT="3",
                  CHAT_MAX_BODY_BYTES="4096", SERVICE_API_KEYS=key, API_RATE_LIMIT="off") as server:
        host, port = server.url.removeprefix("http://").split(":")
        counts = fuzz(host, int(port), EXAMPLES, collections.Counter(), api_key=key)
        assert sum(counts.values()) >= 3 * EXAMPLES
        assert all(any(key.startswith(f"{kind} 4") for key in counts) for kind in ("body", "raw", "api"))
        status, headers, body = request(server.url, "POST", "/api/chat", chat_body("hi", text="still here"))
        assert (status, body) == (200, b"still here")
        log = server.log()
        assert len(re.findall(r"Booting worker with pid", log)) == 1, "a worker was restarted"
        assert "Traceback" not in log
