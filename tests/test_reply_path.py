"""The one path to a reply's first byte, through every API, in process: parsers, guards, framers, records.

The fast tier's view of the web layer: Flask's test client and the in-process fake provider. What
spans processes (gevent, a real client leaving, Redis, nginx) is tested against real gunicorn elsewhere.
"""

from __future__ import annotations

import ast
import json
import pytest

from app import create_app
from servers import REPO
from streamchat.errors import RateLimited, UpstreamTimeout
from streamchat.testing.fake_provider import FakeProvider
from streamchat.web.framing.text import CUT_SHORT_NOTICE
from streamchat.web.service import service

KEY = "a-service-key-of-32-characters-x"
HELLO = [{"role": "user", "content": "hello"}]
SURFACES = REPO / "streamchat" / "web" / "surfaces"


@pytest.fixture
def provider():
    return FakeProvider(model="fake-1")


@pytest.fixture
def records():
    return []


def make_client(provider, records, **settings):
    app = create_app({"CHAT_RATE_LIMIT": "off", "RESUME_GRACE": "0", "SERVICE_API_KEYS": KEY, "API_RATE_LIMIT": "off",
                      **settings}, providers=[provider])
    with app.app_context():
        service().relay.listeners.append(records.append)
    return app.test_client()


@pytest.fixture
def client(provider, records):
    return make_client(provider, records)


def post(client, path, body, headers=None):
    """POST, read the whole body and close the response, as a server does."""
    with client.post(path, json=body, headers=headers or {}) as response:
        response.body = response.get_data()
    return response


def chat(client, messages=HELLO, **headers):
    return post(client, "/api/chat", {"messages": messages}, headers)


def completion(client, **body):
    return post(client, "/v1/chat/completions", {"model": "fake-1", "messages": HELLO, **body},
                {"Authorization": f"Bearer {KEY}"})


def sse_data(body: bytes) -> list:
    events = [block for block in body.decode().split("\n\n") if block.startswith("data: ")]
    return [event[6:] if event[6:] == "[DONE]" else json.loads(event[6:]) for event in events]


# -- every surface opens its reply through the one path -------------------------------------------------

def test_no_surface_takes_a_step_of_the_path_itself():
    # Budgets, reservations, the client watch and the relay are the path's (web/opening.py); a surface parses
    # and frames. A surface that imported one of them would be a second copy of the path.
    path_steps = {"streamchat.web.guards.budgets", "streamchat.server.disconnect", "streamchat.domain.relay",
                  "streamchat.domain.record"}
    for module in SURFACES.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {("streamchat.web.surfaces." + (node.module or "")) if node.level == 1 else
                    ("streamchat.web." + (node.module or "")) if node.level == 2 else
                    ("streamchat." + (node.module or "")) if node.level == 3 else node.module or ""
                    for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & path_steps, f"{module.name} takes a step of the reply path: {imported & path_steps}"
    callers = sorted(p.name for p in SURFACES.glob("*.py") if "open_reply(" in p.read_text())
    assert callers == ["chat.py", "openai.py"]


def test_both_apis_fill_one_typed_record(client, provider, records):
    provider.enqueue("Hi")
    provider.enqueue("Hi")
    chat(client, **{"X-Request-Id": "plain-1"})
    completion(client, user="visitor-7")
    plain, api = records
    assert (plain.caller.request_id, plain.caller.endpoint, plain.caller.service_key) == ("plain-1", "/api/chat", None)
    assert api.caller.endpoint == "/v1/chat/completions" and api.caller.service_key  # the key's id, never the key
    assert KEY not in api.caller.service_key
    assert (plain.mode, plain.ended, api.mode, api.ended) == ("live", "complete", "live", "complete")


# -- text/plain, recorded and read again -----------------------------------------------------------------

@pytest.fixture
def recorded(provider, records):
    return make_client(provider, records, RESUME_TTL="60")


def test_a_plain_reply_is_recorded_and_read_again_whole_or_from_a_byte(recorded, provider):
    provider.enqueue("Grüße ", "aus ", "Köln")
    response = chat(recorded)
    stream_id = response.headers["X-Stream-Id"]
    assert response.body == "Grüße aus Köln".encode()
    again = recorded.get(f"/api/chat/streams/{stream_id}")
    assert again.get_data() == response.body and again.headers["X-Terminal-Mode"] == "live"
    assert recorded.get(f"/api/chat/streams/{stream_id}?offset=8").get_data() == "aus Köln".encode()
    status = recorded.get(f"/api/chat/streams/{stream_id}/status").get_json()
    assert status == {"state": "complete", "bytes": len(response.body), "mode": "live"}
    stop = recorded.post(f"/api/chat/streams/{stream_id}/stop")
    assert (stop.status_code, stop.get_json()) == (202, {"state": "complete", "stopping": False})
    assert len(provider.history) == 1


@pytest.mark.parametrize("path, status, code", [
    ("/api/chat/streams/nope", 404, "unknown_stream"),
    ("/api/chat/streams/{id}?offset=3", 400, "invalid_offset"),  # inside the "ü"
    ("/api/chat/streams/{id}?offset=99", 400, "invalid_offset"),
    ("/api/chat/streams/{id}?offset=%C2%B2", 400, "invalid_offset"),
    ("/api/chat/streams/{id}?offset=-1", 400, "invalid_offset"),
])
def test_bad_offsets_and_unknown_ids_are_clear_json_errors(recorded, provider, path, status, code):
    provider.enqueue("Grüße")
    stream_id = chat(recorded).headers["X-Stream-Id"]
    response = recorded.get(path.format(id=stream_id))
    assert (response.status_code, response.get_json()["error"]["code"]) == (status, code)


def test_a_reply_cut_short_ends_with_its_notice_in_the_body_and_the_record(recorded, provider):
    provider.enqueue("Half a repl", then=UpstreamTimeout("stalled"))
    response = chat(recorded)
    assert response.body == b"Half a repl" + CUT_SHORT_NOTICE.encode()
    status = recorded.get(f"/api/chat/streams/{response.headers['X-Stream-Id']}/status").get_json()
    assert (status["state"], status["reason"]) == ("cut_short", "timeout")


def test_without_records_there_is_no_stream_id(provider, records):
    client = make_client(provider, records, RESUME_TTL="0")
    assert "X-Stream-Id" not in chat(client).headers
    assert client.get("/api/chat/streams/anything").status_code == 404


# -- the OpenAI-compatible API: its parser and its framers ----------------------------------------------

def test_a_streamed_completion_is_framed_as_openai_frames_it(client, provider):
    provider.enqueue("Hel", "lo")
    response = completion(client, stream=True, stream_options={"include_usage": True})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_data(response.body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-2] if e["choices"]) == "Hello"
    finish = next(e for e in events if e != "[DONE]" and e["choices"] and e["choices"][0]["finish_reason"])
    assert finish["x_terminal"]["mode"] == "live" and events[-2]["usage"]["completion_tokens"] > 0
    assert events[-1] == "[DONE]"


def test_a_whole_completion_carries_the_request_options_and_the_headers(client, provider):
    provider.enqueue("Hello")
    response = completion(client, max_tokens=7, temperature=0.5)
    body = response.get_json()
    assert body["choices"][0]["message"]["content"] == "Hello" and body["model"] == "fake-1"
    assert response.headers["X-Terminal-Mode"] == "live"
    assert (provider.history[0].options.max_tokens, provider.history[0].options.temperature) == (7, 0.5)


def test_the_rules_model_answers_from_the_rules_without_a_call(client, provider):
    body = completion(client, model="rules").get_json()
    assert body["model"] == "rules" and body["x_terminal"]["reason"] == "requested" and provider.history == []


def test_a_model_that_fails_first_is_answered_by_the_rules_labelled(client, provider):
    provider.enqueue(then=RateLimited("429"))
    body = completion(client).get_json()
    assert (body["x_terminal"]["mode"], body["x_terminal"]["reason"]) == ("fallback", "rate_limited")


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"tools": [{"type": "function"}]}, "tools"), ({"frobnicate": 1}, "frobnicate"),
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": 3}, "temperature"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
])
def test_what_the_api_cannot_honour_is_a_400_naming_the_field(client, provider, extra, param):
    response = completion(client, **extra)
    error = response.get_json()["error"]
    assert response.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    assert provider.history == []


def test_content_parts_and_the_developer_role_are_what_the_sdks_send(client, provider):
    completion(client, messages=[{"role": "developer", "content": "Be brief."},
                                 {"role": "user", "content": [{"type": "text", "text": "hel"},
                                                              {"type": "text", "text": "lo"}]}])
    assert provider.history[0].messages == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "hello"}]


def test_keys_guard_the_api_and_without_keys_it_is_not_there(provider, records):
    client = make_client(provider, records)
    wrong = post(client, "/v1/chat/completions", {"model": "x", "messages": HELLO}, {"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.get_json()["error"]["code"]) == (401, "invalid_api_key")
    off = make_client(provider, records, SERVICE_API_KEYS="")
    assert off.get("/v1/models").status_code == 404
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).get_json()
    assert [m["id"] for m in models["data"]] == ["fake-1", "rules"]


# -- the guards on the path -------------------------------------------------------------------------------

def test_over_the_rate_limit_is_a_429_with_retry_after_and_json(provider, records):
    client = make_client(provider, records, CHAT_RATE_LIMIT="2/minute")
    assert [chat(client).status_code for _ in range(2)] == [200, 200]
    over = chat(client)
    assert over.status_code == 429 and int(over.headers["Retry-After"]) > 0
    assert over.get_json()["error"]["code"] == "rate_limited" and len(provider.history) == 2


def test_past_the_live_budget_the_rules_answer_on_both_apis(provider, records):
    client = make_client(provider, records, LLM_BUDGET_PER_CLIENT="1/minute")
    assert chat(client).headers["X-Terminal-Mode"] == "live"
    second = chat(client)
    assert (second.headers["X-Terminal-Mode"], second.headers["X-Terminal-Reason"]) == ("fallback", "budget")
    api = completion(client).get_json()  # the key is a client of its own: its first reply is live
    assert api["x_terminal"]["mode"] == "live"
    assert completion(client).get_json()["x_terminal"]["reason"] == "budget"


def test_a_chat_past_its_rate_limit_spends_no_budget_and_a_bad_body_gets_its_budget_back(provider, records):
    client = make_client(provider, records, CHAT_RATE_LIMIT="3/minute;100/day", LLM_BUDGET_PER_CLIENT="2/minute")
    bad = post(client, "/api/chat", {"messages": []})
    assert bad.status_code == 400 and bad.headers["X-RateLimit-Remaining"] == "2"  # counted, its budget given back
    first, second = chat(client), chat(client)
    assert [r.headers["X-Terminal-Mode"] for r in (first, second)] == ["live", "live"]
    # The first limit of the string is the one the headers show, until one is breached.
    assert (second.headers["X-RateLimit-Limit"], second.headers["X-RateLimit-Remaining"]) == ("3", "0")
    over = chat(client)
    assert over.status_code == 429 and over.get_json()["error"]["message"].startswith("Too many requests (3 per 1 minute)")
    assert over.headers["X-RateLimit-Limit"] == "3" and int(over.headers["Retry-After"]) > 0
    with client.application.app_context():
        storage = service().budget.counting_storage()
        budget_keys = [key for key in storage._counts if "budget" in key]
        # Two live replies spent two units; the 400 gave its unit back and the 429 spent none.
        assert [storage.get(key) for key in budget_keys] == [2]
        assert [storage.get(key) for key in storage._counts if "day" in key] == [3]  # the 429 stopped at the first


def test_tokens_are_reserved_then_settled_and_the_header_says_what_is_left(provider, records):
    client = make_client(provider, records, LLM_TOKEN_BUDGET_PER_CLIENT="5000/day", LLM_MAX_TOKENS="100")
    provider.enqueue("Hello there")  # three tokens, estimated
    first = chat(client)
    left = int(first.headers["X-Token-Budget-Remaining"])
    assert left == 5000 - 3 - 100  # the reservation: "hello" is 2 tokens, 3 with the margin, and the reply's maximum
    [record] = records
    assert record.tokens.reservation.settled and record.tokens.reservation.tokens == 103
    second = chat(client)
    assert int(second.headers["X-Token-Budget-Remaining"]) == 5000 - record.input_tokens - record.output_tokens - 103


def test_a_reservation_that_does_not_fit_sends_the_reply_to_the_rules(provider, records):
    client = make_client(provider, records, LLM_TOKEN_BUDGET_PER_CLIENT="50/day", LLM_MAX_TOKENS="100")
    response = chat(client)
    assert (response.headers["X-Terminal-Reason"], response.headers["X-Token-Budget-Remaining"]) == ("budget", "50")
    assert provider.history == []


def test_the_widget_and_the_page_are_served_with_the_owners_words(provider, records):
    client = make_client(provider, records, CHAT_TITLE="Shop help")
    assert b"Shop help" in client.get("/").get_data()
    widget = client.get("/widget.js")
    assert widget.headers["Content-Type"].startswith("text/javascript") and b"Shop help" in widget.get_data()
    assert client.get("/widget.js").get_data() == widget.get_data()  # built once, kept


def test_health_and_readiness_say_what_the_worker_uses(client):
    health = client.get("/healthz").get_json()
    assert health["status"] == "ok" and [p["name"] for p in health["providers"]] == ["fake"]
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_the_static_files_the_page_names_are_served(client):
    page = client.get("/").get_data().decode()
    for name in ("chat.js", "markdown.js", "chat.css"):
        with client.get(f"/static/{name}") as response:
            assert f"/static/{name}" in page and response.status_code == 200


def test_commands_check_a_rules_file(tmp_path, capsys):
    from streamchat.commands import main

    assert main(["check-rules", str(REPO / "rules.yaml")]) == 0
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: x\n    keywords: 3\n")
    assert main(["check-rules", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_the_launcher_warns_about_counts_kept_apart_in_each_worker():
    from streamchat.config import load_settings
    from streamchat.server.serve import start_warnings

    assert start_warnings(load_settings({"WEB_CONCURRENCY": "1"})) == []
    [warning] = start_warnings(load_settings({"WEB_CONCURRENCY": "3"}))
    assert "separately in each of the 3 workers" in warning
    assert start_warnings(load_settings({"WEB_CONCURRENCY": "3", "REDIS_URL": "redis://127.0.0.1:1"})) == []
