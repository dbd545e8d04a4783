"""Named upstreams: the file and its checks, today's variables as two upstreams, routing by tier and weight,
and keys that take turns, in process. The same through real gunicorn and the fake upstream is in
``test_upstreams_live.py``."""

from __future__ import annotations

import logging
import random
import subprocess
import sys

import pytest

from servers import REPO, clean_env
from streamchat.config import ConfigError, load_settings
from streamchat.domain.breaker import CircuitBreaker
from streamchat.domain.relay import Relay
from streamchat.domain.routing import Router
from streamchat.domain.rules import RulesStore
from streamchat.domain.upstreams import UpstreamsError, parse_upstreams
from streamchat.errors import ProviderRejected, RateLimited, UpstreamServerError
from streamchat.testing.fake_provider import FakeProvider

ENV = {"GROQ_KEY_A": "gsk-aaaa", "GROQ_KEY_B": "gsk-bbbb", "OPENAI_KEY": "sk-cccc", "AZURE_KEY": "az-dddd"}
GOOD = """
upstreams:
  - name: groq
    protocol: openai
    base_url: https://api.groq.com/openai/v1
    model: llama-3.3-70b-versatile
    api_keys: ["${GROQ_KEY_A}", "${GROQ_KEY_B}"]
  - name: azure
    protocol: openai
    base_url: https://example.openai.azure.com/openai/v1
    headers: {api-key: "${AZURE_KEY}"}
    tier: 2
    weight: 3
  - name: claude
    protocol: anthropic
    api_key: "${OPENAI_KEY}"
    tier: 3
"""
HELLO = [{"role": "user", "content": "hello"}]


def test_a_file_declares_upstreams_with_their_keys_and_defaults():
    groq, azure, claude = parse_upstreams(GOOD, "up.yaml", ENV)
    assert (groq.name, groq.protocol, groq.api_keys, groq.tier, groq.weight) == (
        "groq", "openai", ("gsk-aaaa", "gsk-bbbb"), 1, 1.0)
    assert azure.headers == (("api-key", "az-dddd"),) and azure.api_keys == () and azure.model == "gpt-4o-mini"
    assert "az-dddd" in azure.secrets  # a header read from ${VAR} is never logged
    assert (claude.base_url, claude.model, claude.tier) == ("https://api.anthropic.com", "claude-haiku-4-5", 3)
    assert "gsk" not in repr(groq) and "az-dddd" not in repr(azure)  # what a traceback or a log line would show


@pytest.mark.parametrize("text, expected", [
    ("upstreams: []", "up.yaml: 'upstreams' must be a non-empty list"),
    ("models: []", "up.yaml: the file must hold one key, 'upstreams'"),
    ("upstreams: [{name: a, protocol: openai, colour: red}]", "up.yaml: upstream 1 (a): colour: unknown field"),
    ("upstreams: [{name: A!, protocol: openai}]", "up.yaml: upstream 1 (A!): name: required: 1-32 of a-z"),
    ("upstreams: [{name: a, protocol: gemini}]", "up.yaml: upstream 1 (a): protocol: required: one of openai, anthropic"),
    ("upstreams: [{name: a, protocol: openai}, {name: a, protocol: openai}]",
     "up.yaml: upstream 2 (a): name: 'a' is used twice"),
    ("upstreams: [{name: a, protocol: openai, api_key: '${NOPE}'}]",
     "up.yaml: upstream 1 (a): api_key: ${NOPE} is not set in the environment or .env"),
    ("upstreams: [{name: a, protocol: openai, api_keys: ['sk-literal-key']}]",
     "up.yaml: upstream 1 (a): api_keys: key 1 must be \"${VARIABLE}\": keys live in the environment"),
    ("upstreams: [{name: a, protocol: openai, api_key: '${GROQ_KEY_A}', api_keys: []}]",
     "up.yaml: upstream 1 (a): api_keys: set api_keys or api_key, not both"),
    ("upstreams: [{name: a, protocol: openai, tier: 0}]", "up.yaml: upstream 1 (a): tier: must be a whole number"),
    ("upstreams: [{name: a, protocol: openai, weight: -1}]", "up.yaml: upstream 1 (a): weight: must be a number above 0"),
    ("upstreams: [{name: a, protocol: openai, base_url: 'ftp://x'}]", "up.yaml: upstream 1 (a): base_url: must be"),
    ("upstreams: [{name: a, protocol: openai, headers: {'bad name': x}}]", "up.yaml: upstream 1 (a): headers: 'bad name'"),
    ("upstreams: [oops", "up.yaml: not valid YAML at line 1"),
])
def test_every_problem_is_one_line_naming_the_file_the_entry_and_the_field(text, expected):
    with pytest.raises(UpstreamsError) as caught:
        parse_upstreams(text, "up.yaml", ENV)
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message
    assert "sk-literal-key" not in message  # what was written where a key belongs is never echoed


def test_today_s_variables_are_two_upstreams_named_openai_and_anthropic():
    settings = load_settings({"OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "a-2", "LLM_PROVIDERS": "anthropic,openai"})
    assert [(u.name, u.protocol, u.api_keys, u.tier) for u in settings.upstreams] == [
        ("anthropic", "anthropic", ("a-2",), 1), ("openai", "openai", ("sk-1",), 2)]
    assert load_settings({}).upstreams == ()
    assert "sk-1" not in repr(settings) and "a-2" not in repr(settings)  # secret settings never in a repr


def test_the_file_and_today_s_variables_together_is_an_error_that_says_which_to_keep(tmp_path):
    path = tmp_path / "up.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError, match="UPSTREAMS_PATH and OPENAI_API_KEY are both set: keep UPSTREAMS_PATH"):
        load_settings({**ENV, "UPSTREAMS_PATH": str(path), "OPENAI_API_KEY": "sk-x"})
    settings = load_settings({**ENV, "UPSTREAMS_PATH": str(path)})
    assert [u.name for u in settings.upstreams] == ["groq", "azure", "claude"]


def test_a_bad_file_stops_the_launcher_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "up.yaml"
    path.write_text("upstreams: [{name: a, protocol: openai, api_key: '${MISSING_KEY}'}]")
    result = subprocess.run([sys.executable, "-m", "streamchat.server.serve"], cwd=REPO, capture_output=True,
                            text=True, env=clean_env(UPSTREAMS_PATH=str(path)), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"streamchat: configuration error: {path}: upstream 1 (a): api_key: "
                                          "${MISSING_KEY} is not set in the environment or .env"]


def test_check_upstreams_lists_a_good_file_and_refuses_a_bad_one(tmp_path, monkeypatch, capsys):
    from streamchat.commands import main

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text("upstreams: [{name: a, protocol: openai, tier: x}]")
    assert main(["check-upstreams", str(good)]) == 0
    out = capsys.readouterr().out
    assert "3 upstreams" in out and "tier 1: groq (openai, llama-3.3-70b-versatile" in out and "2 keys" in out
    assert "gsk-" not in out and "az-dddd" not in out
    assert main(["check-upstreams", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == f"{bad}: upstream 1 (a): tier: must be a whole number, 1 or more"


# -- routing and keys, through the relay -------------------------------------------------------------------

def relay_of(*providers, seed=1):
    relay = Relay(list(providers), RulesStore(str(REPO / "rules.yaml")), CircuitBreaker(30))
    relay.router = Router(relay.chain, relay.breaker, random.Random(seed))
    return relay


def answer(relay):
    reply = relay.open(HELLO)
    list(reply.text())
    reply.close()
    return reply.record


def test_tiers_go_in_order_and_weights_share_the_first_picks_within_a_tier():
    heavy, light, backup = FakeProvider(name="heavy", weight=3), FakeProvider(name="light"), FakeProvider(
        name="backup", tier=2)
    relay = relay_of(backup, light, heavy)
    picks = [answer(relay).provider for _ in range(400)]
    assert "backup" not in picks
    assert 250 < picks.count("heavy") < 350 and picks.count("heavy") + picks.count("light") == 400
    heavy.enqueue(then=UpstreamServerError("500"))
    light.enqueue(then=UpstreamServerError("500"))
    record = answer(relay)  # the whole first tier fails: the next tier answers
    assert record.provider == "backup" and [name for name, _ in record.failures] in (
        ["heavy", "light"], ["light", "heavy"])


def test_a_429_on_one_key_is_answered_at_once_by_the_next_key_of_the_same_upstream():
    groq = FakeProvider(name="groq", keys=2)
    relay = relay_of(groq)
    groq.enqueue(then=RateLimited("429", retry_after=60))
    first = answer(relay)
    assert (first.mode, first.provider, first.failures) == ("live", "groq", [("groq#1", "rate_limited")])
    assert [call.key for call in groq.history] == [0, 1]
    assert [answer(relay).mode for _ in range(3)] == ["live"] * 3
    assert [call.key for call in groq.history[2:]] == [1, 1, 1]  # key 1 cools down; its turn is skipped
    assert relay.health()["providers"][0]["keys_cooling"] == 1 and "groq#1" in relay.breaker.state()


class Lines(logging.Handler):
    """The service's log lines while it is attached (its logger may not propagate to pytest's)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_keys_take_turns_and_a_refused_key_is_set_aside_with_one_warning():
    groq = FakeProvider(name="groq", keys=3)
    relay = relay_of(groq)
    [answer(relay) for _ in range(3)]
    assert [call.key for call in groq.history] == [0, 1, 2]
    groq.enqueue(then=ProviderRejected("bad key", status=401))
    logger, lines = logging.getLogger("streamchat"), Lines()
    logger.addHandler(lines)
    try:
        record = answer(relay)
    finally:
        logger.removeHandler(lines)
    assert record.mode == "live" and record.failures == [("groq#1", "auth_rejected")]
    assert [line for line in lines.lines if "refused key" in line] == [
        "groq refused key 1 of 3 (401): it is skipped for 60 minutes; check it"]
    assert relay.breaker.state()["groq#1"]["retry_in"] > 3000


def test_an_upstream_s_own_fault_cools_the_upstream_not_a_key_and_the_rules_answer_last():
    only = FakeProvider(name="only", keys=2)
    relay = relay_of(only)
    only.enqueue(then=UpstreamServerError("502"))
    first = answer(relay)
    assert (first.mode, first.reason, first.failures) == ("fallback", "upstream_error", [("only#1", "upstream_error")])
    assert len(only.history) == 1  # its other key would meet the same fault
    second = answer(relay)
    assert second.failures == [("only", "cooling_down")] and "only" in relay.breaker.state()


def test_a_preferred_upstream_goes_first_then_the_chain_as_usual():
    a, b = FakeProvider(name="a", model="model-a"), FakeProvider(name="b", model="model-b", tier=2)
    relay = relay_of(a, b)
    assert relay.open(HELLO, prefer="b").record.provider == "b"
    b.enqueue(then=UpstreamServerError("500"))
    assert relay.open(HELLO, prefer="b").record.provider == "a"


# -- what the upstream says is left ------------------------------------------------------------------------

@pytest.mark.parametrize("headers, seconds", [
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1h2m3.5s"}, 3600),  # capped
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "120ms"}, 0.12),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2.5"}, 2.5),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "7.66s",
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "59.1s"}, 59.1),  # the longest wait
    ({"anthropic-ratelimit-requests-remaining": "0",
      "anthropic-ratelimit-requests-reset": "2026-12-07T10:00:30Z"}, 30),
    ({"x-ratelimit-remaining-requests": "14", "x-ratelimit-reset-requests": "6m0s"}, None),
    ({"x-ratelimit-remaining-requests": "0"}, None),  # no reset said: the 429 will tell
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}, None),
    ({}, None),
])
def test_a_spent_limit_is_read_from_either_naming_scheme(headers, seconds):
    from streamchat.transport.rate_limits import exhausted_for

    now = 1796637600.0  # 2026-12-07T10:00:00Z
    found = exhausted_for(headers, now=now)
    assert (found is None and seconds is None) or found == pytest.approx(seconds)


def test_metrics_count_failures_and_cooling_keys_by_upstream():
    from prometheus_client.parser import text_string_to_metric_families

    from app import create_app

    groq = FakeProvider(name="groq", keys=2)
    client = create_app({"METRICS_TOKEN": "metrics-token-for-upstreams", "CHAT_RATE_LIMIT": "off",
                         "RESUME_GRACE": "0"}, providers=[groq]).test_client()
    groq.enqueue(then=RateLimited("429", retry_after=60))
    with client.post("/api/chat", json={"messages": HELLO}) as response:
        assert response.get_data() and response.headers["X-Terminal-Provider"] == "groq"
    exposition = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-for-upstreams"})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(exposition.get_data(as_text=True)) for s in family.samples}
    assert samples[("streamchat_upstream_keys_cooling", (("gen_ai_provider_name", "groq"),))] == 1
    assert samples[("streamchat_upstream_failures_total",
                    (("gen_ai_provider_name", "groq"), ("reason", "rate_limited")))] >= 1


# -- hedged first tokens -------------------------------------------------------------------------------------

def hedged_relay(*providers, after=0.05):
    relay = relay_of(*providers)
    relay.hedge_after = after
    return relay


def test_a_slow_first_token_gets_the_next_candidate_beside_it_and_the_first_to_write_answers():
    slow, fast = FakeProvider(name="slow"), FakeProvider(name="fast", tier=2)
    slow.enqueue("late", wait=1.0)
    fast.enqueue("quick")
    relay = hedged_relay(slow, fast)
    reply = relay.open(HELLO)
    assert "".join(reply.text()) == "quick"
    reply.close()
    assert (reply.record.provider, reply.record.hedge, reply.record.hedge_won) == ("fast", "fast", True)
    assert reply.record.failures == []  # being slow is not a failure: nothing cools down
    from servers import eventually

    assert eventually(lambda: slow.history[0].closed, 5)  # the loser's request is closed (here, once it wakes)
    assert relay.breaker.state() == {}


def test_the_chosen_upstream_may_still_win_and_there_is_one_hedge_per_reply():
    first, second, third = FakeProvider(name="a"), FakeProvider(name="b", tier=2), FakeProvider(name="c", tier=3)
    first.enqueue("from a", wait=0.2)
    second.enqueue("from b", wait=5)
    relay = hedged_relay(first, second, third)
    record = answer(relay)
    assert (record.provider, record.hedge, record.hedge_won) == ("a", "b", False)
    assert third.history == []  # one hedge: c was never started


def test_no_hedge_starts_when_the_budget_would_not_allow_it():
    slow, fast = FakeProvider(name="slow"), FakeProvider(name="fast", tier=2)
    slow.enqueue("late", wait=0.3)
    relay = hedged_relay(slow, fast)
    reply = relay.open(HELLO, may_hedge=lambda: False)
    assert "".join(reply.text()) == "late" and reply.record.hedge == "" and fast.history == []
    reply.close()


def test_a_hedge_failing_leaves_the_chosen_one_to_answer_and_a_failing_chosen_one_leaves_the_hedge():
    slow, broken = FakeProvider(name="slow"), FakeProvider(name="broken", tier=2)
    slow.enqueue("late", wait=0.3)
    broken.enqueue(then=UpstreamServerError("500"))
    record = answer(hedged_relay(slow, broken))
    assert (record.provider, record.hedge, record.failures) == ("slow", "broken", [("broken", "upstream_error")])
    failing, hedge = FakeProvider(name="failing"), FakeProvider(name="hedge", tier=2)
    failing.enqueue(then=UpstreamServerError("500"), wait=0.3)
    hedge.enqueue("hedged", wait=0.6)
    record = answer(hedged_relay(failing, hedge))
    assert (record.provider, record.hedge_won, record.failures) == ("hedge", True, [("failing", "upstream_error")])


def test_a_hedge_reserves_tokens_like_any_call_and_settles_on_the_prompt_it_was_sent():
    from app import create_app

    slow, fast = FakeProvider(name="slow"), FakeProvider(name="fast", tier=2)
    records = []
    app = create_app({"CHAT_RATE_LIMIT": "off", "RESUME_GRACE": "0", "LLM_HEDGE_AFTER": "0.05",
                      "LLM_TOKEN_BUDGET_PER_CLIENT": "1000/day", "LLM_MAX_TOKENS": "100"}, providers=[slow, fast])
    app.extensions["streamchat"].relay.listeners.append(records.append)
    client = app.test_client()
    slow.enqueue("late", wait=1.0)
    fast.enqueue("quick")
    with client.post("/api/chat", json={"messages": HELLO}) as response:
        assert response.get_data() == b"quick"
        # Two reservations of 103 were taken before the answer came: the header says so.
        assert response.headers["X-Token-Budget-Remaining"] == str(1000 - 2 * 103)
    [record] = records
    assert record.hedge == "fast" and record.tokens.hedge.settled and record.tokens.reservation.settled
    with client.post("/api/chat", json={"messages": HELLO}) as again:  # the default reply, no hedge needed
        again.get_data()
    spent = record.input_tokens + record.output_tokens + record.input_tokens  # the reply, and the loser's prompt
    assert int(again.headers["X-Token-Budget-Remaining"]) == 1000 - spent - 103


def test_no_hedge_when_its_tokens_do_not_fit_the_budget():
    from app import create_app

    slow, fast = FakeProvider(name="slow"), FakeProvider(name="fast", tier=2)
    app = create_app({"CHAT_RATE_LIMIT": "off", "RESUME_GRACE": "0", "LLM_HEDGE_AFTER": "0.05",
                      "LLM_TOKEN_BUDGET_PER_CLIENT": "150/day", "LLM_MAX_TOKENS": "100"}, providers=[slow, fast])
    slow.enqueue("late", wait=0.3)
    with app.test_client().post("/api/chat", json={"messages": HELLO}) as response:
        assert response.get_data() == b"late" and response.headers["X-Terminal-Provider"] == "slow"
    assert fast.history == []


def test_a_429_without_retry_after_waits_for_the_spent_limit_s_reset():
    from streamchat.transport.failures import error_for_status

    error = error_for_status("groq", 429, {"x-ratelimit-remaining-requests": "0",
                                           "x-ratelimit-reset-requests": "7.5s"}, b"{}")
    assert isinstance(error, RateLimited) and error.retry_after == 7.5
    assert error_for_status("groq", 429, {"retry-after": "2", "x-ratelimit-remaining-requests": "0",
                                          "x-ratelimit-reset-requests": "7.5s"}, b"{}").retry_after == 2
    assert error_for_status("groq", 429, {}, b"{}").retry_after is None  # then LLM_COOLDOWN
