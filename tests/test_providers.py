"""Provider pieces that need no network: event parsing, error mapping, request building."""

import email.utils

import pytest

from streamchat.errors import (BadStream, ProviderRejected, RateLimited, UpstreamServerError, UpstreamTimeout)
from streamchat.domain.providers import AnthropicMessages, OpenAIChat, Timeouts
from streamchat.domain.providers.anthropic import _alternating
from streamchat.domain.providers.base import DEFAULT_OPTIONS, EndOfStream, Options
from streamchat.domain.usage import Usage
from streamchat.transport.failures import error_for_status, parse_retry_after
from streamchat.domain.sse import ServerSentEvent


def make(cls, **overrides):
    options = dict(model="m", base_url="http://127.0.0.1:9/v1", api_keys=("k",), session=None,
                   timeouts=Timeouts(1, 1, 1, 10), max_tokens=10, temperature=None, system_prompt="Be brief.")
    options.update(overrides)
    return cls(**options)


def event(data, name="message"):
    return ServerSentEvent(name, data)


class TestOpenAIEvents:
    provider = make(OpenAIChat)

    @pytest.mark.parametrize("data, text", [
        ('{"choices":[{"delta":{"content":"hi"}}]}', "hi"),
        ('{"choices":[{"delta":{"content":null}}]}', ""),
        ('{"choices":[{"delta":{"content":""}}]}', ""),
        ('{"choices":[{"delta":{}}]}', ""),
        ('{"choices":[]}', ""),
        ('{"choices":[],"usage":{"total_tokens":3}}', ""),
        ('{"choices":[{"delta":{"reasoning_content":"hmm"}}]}', ""),
        ('{"choices":[{"delta":{"reasoning":"hmm","content":null}}]}', ""),
        ('{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}', ""),
        ('{"choices":[{"delta":{"content":[{"type":"text","text":"a"},{"type":"thinking"}]}}]}', "a"),
        ('{"choices":[{"delta":{"content":[{"type":"text","text":5},{"type":"text"},{"type":"text","text":"b"}]}}]}',
         "b"),
        ('{"choices":null}', ""),
        ('[1, 2]', ""),
    ])
    def test_text_of_chunk(self, data, text):
        assert self.provider.parse_event(event(data), Usage()) == text

    def test_done_ends_the_stream(self):
        with pytest.raises(EndOfStream):
            self.provider.parse_event(event("[DONE]"), Usage())

    def test_error_object_in_stream(self):
        with pytest.raises(UpstreamServerError, match="boom"):
            self.provider.parse_event(event('{"error":{"message":"boom","type":"server_error"}}'), Usage())

    def test_rate_limit_error_in_stream(self):
        with pytest.raises(RateLimited):
            self.provider.parse_event(event('{"error":{"message":"slow down","code":429}}'), Usage())

    def test_malformed_json_is_a_bad_stream(self):
        with pytest.raises(BadStream):
            self.provider.parse_event(event('{"choices": [{"delta": '), Usage())

    def test_request_puts_the_system_prompt_first(self):
        url, headers, body = self.provider.build_request([{"role": "user", "content": "hi"}], DEFAULT_OPTIONS, "k")
        assert url == "http://127.0.0.1:9/v1/chat/completions"
        assert headers == {"Authorization": "Bearer k"}
        assert body["stream"] is True
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}

    def test_keyless_local_server_sends_no_authorization(self):
        assert make(OpenAIChat).build_request([{"role": "user", "content": "x"}], DEFAULT_OPTIONS, "")[1] == {}


class TestAnthropicEvents:
    provider = make(AnthropicMessages, base_url="http://127.0.0.1:9")

    def test_text_delta(self):
        data = '{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hé"}}   '
        assert self.provider.parse_event(event(data, "content_block_delta"), Usage()) == "hé"

    @pytest.mark.parametrize("name, data", [
        ("ping", '{"type": "ping"}'),
        ("message_start", '{"type":"message_start","message":{"content":[]}}'),
        ("content_block_delta", '{"type":"content_block_delta","delta":{"type":"thinking_delta","thinking":"x"}}'),
        ("content_block_delta", '{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":"{"}}'),
        ("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}'),
        ("brand_new_event", '{"type":"brand_new_event"}'),
    ])
    def test_events_without_text(self, name, data):
        assert self.provider.parse_event(event(data, name), Usage()) == ""

    def test_message_stop_ends_the_stream(self):
        with pytest.raises(EndOfStream):
            self.provider.parse_event(event('{"type":"message_stop"}', "message_stop"), Usage())

    def test_error_event(self):
        data = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        with pytest.raises(UpstreamServerError, match="Overloaded"):
            self.provider.parse_event(event(data, "error"), Usage())

    def test_request_shape(self):
        url, headers, body = self.provider.build_request(
            [{"role": "assistant", "content": "Hi, how can I help?"}, {"role": "user", "content": "a"},
             {"role": "user", "content": "b"}], DEFAULT_OPTIONS, "k")
        assert url == "http://127.0.0.1:9/v1/messages"
        assert headers["x-api-key"] == "k" and headers["anthropic-version"] == "2023-06-01"
        assert body["system"] == "Be brief." and body["max_tokens"] == 10
        assert body["messages"] == [{"role": "user", "content": "a\n\nb"}]

    def test_alternating_keeps_turns(self):
        turns = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"},
                 {"role": "user", "content": "3"}]
        assert _alternating(turns) == turns


@pytest.mark.parametrize("headers, seconds", [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_retry_after(headers, seconds):
    assert parse_retry_after(headers) == seconds


def test_retry_after_http_date():
    now = 1_800_000_000
    assert parse_retry_after({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now=now) == 30


@pytest.mark.parametrize("status, error, reason", [
    (400, ProviderRejected, "upstream_error"),
    (401, ProviderRejected, "auth_rejected"),
    (403, ProviderRejected, "auth_rejected"),
    (404, ProviderRejected, "upstream_error"),
    (413, ProviderRejected, "upstream_error"),
    (429, RateLimited, "rate_limited"),
    (500, UpstreamServerError, "upstream_error"),
    (503, UpstreamServerError, "upstream_error"),
    (504, UpstreamTimeout, "timeout"),
    (529, UpstreamServerError, "upstream_error"),
])
def test_error_for_status(status, error, reason):
    exc = error_for_status("openai", status, {"retry-after": "3"}, b'{"error": {"message": "nope"}}')
    assert type(exc) is error and exc.reason == reason and "nope" in str(exc)
    if status == 429:
        assert exc.retry_after == 3


@pytest.mark.parametrize("data", ['{"a":1}', ' {"a": [1, {"b": null}]} ', '{"a":1}\r\n', '"text"', "3.5", "[]"])
def test_event_json_is_parsed_as_json_loads_would(data):
    import json

    from streamchat.domain.providers.base import load_json_event

    assert load_json_event("p", data) == json.loads(data)


@pytest.mark.parametrize("data", ['{"a":1}x', '{"a":1}{"b":2}', "", "  ", '{"a":', "nul", "[" * 100000])
def test_event_data_that_is_not_one_json_value_is_a_bad_stream(data):
    from streamchat.domain.providers.base import load_json_event

    with pytest.raises(BadStream):
        load_json_event("p", data)


def test_openai_usage_chunk_is_noted():
    usage = Usage()
    text = make(OpenAIChat).parse_event(event('{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
                                              '"total_tokens":10}}'), usage)
    assert text == "" and (usage.input_tokens, usage.output_tokens) == (7, 3)
    make(OpenAIChat).parse_event(event('{"choices":[],"usage":{"prompt_tokens":"7","completion_tokens":-1}}'), usage)
    assert (usage.input_tokens, usage.output_tokens) == (None, None)  # not counts: not believed


def test_anthropic_usage_counts_cached_input_and_takes_output_from_message_delta_only():
    provider, usage = make(AnthropicMessages, base_url="http://127.0.0.1:9"), Usage()
    provider.parse_event(event('{"type":"message_start","message":{"usage":{"input_tokens":5,'
                               '"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}',
                               "message_start"), usage)
    assert (usage.input_tokens, usage.output_tokens) == (125, None)  # message_start's output is a placeholder
    provider.parse_event(event('{"type":"message_delta","delta":{},"usage":{"output_tokens":42}}', "message_delta"),
                         usage)
    assert usage.output_tokens == 42


def test_request_options_are_capped_and_client_system_messages_kept():
    openai_body = make(OpenAIChat).build_request(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}],
        Options(max_tokens=500, temperature=0.2), "k")[2]
    assert openai_body["max_tokens"] == 10 and openai_body["temperature"] == 0.2
    assert openai_body["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in openai_body["messages"]] == ["system", "system", "user"]  # the server's first
    anthropic_body = make(AnthropicMessages, base_url="http://127.0.0.1:9").build_request(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}], Options(max_tokens=3), "k")[2]
    assert anthropic_body["system"] == "Be brief.\n\nBe kind." and anthropic_body["max_tokens"] == 3
    assert anthropic_body["messages"] == [{"role": "user", "content": "hi"}]
