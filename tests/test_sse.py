"""The SSE decoder, fed canned byte splits."""

import pytest

from streamchat.domain.sse import ServerSentEvent, SSEDecoder, iter_sse

STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b"data: {\"a\": 1}\n\n"
    b"event: content_block_delta\n"
    b"data: {\"text\": \"h\xc3\xa9llo \xf0\x9f\x8c\x8d\"}\n\n"
    b"data:no-space\n\n"
    b"data: line one\n"
    b"data: line two\n\n"
    b"id: 7\nretry: 100\nunknown: x\ndata: [DONE]\n\n"
)
EXPECTED = [
    ServerSentEvent("message", '{"a": 1}'),
    ServerSentEvent("content_block_delta", '{"text": "héllo 🌍"}'),
    ServerSentEvent("message", "no-space"),
    ServerSentEvent("message", "line one\nline two"),
    ServerSentEvent("message", "[DONE]", "7"),
]


def decode(chunks):
    return list(iter_sse(chunks))


def test_one_read():
    assert decode([STREAM]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_other_line_endings(newline):
    assert decode([STREAM.replace(b"\n", newline)]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_split_point(newline):
    # Cutting the stream at any byte, including inside a UTF-8 character or a CRLF pair,
    # gives the same events.
    stream = STREAM.replace(b"\n", newline)
    for cut in range(1, len(stream)):
        assert decode([stream[:cut], stream[cut:]]) == EXPECTED, cut


def test_byte_by_byte():
    assert decode([bytes([b]) for b in STREAM.replace(b"\n", b"\r\n")]) == EXPECTED


def test_events_are_returned_as_soon_as_their_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent("message", "one")]
    # A lone \r ends the line at once; the \n that may follow belongs to it.
    assert decoder.feed(b"data: two\r\r") == [ServerSentEvent("message", "two")]
    assert decoder.feed(b"\ndata: three\r\n\r\n") == [ServerSentEvent("message", "three")]


def test_comments_and_empty_events_dispatch_nothing():
    assert decode([b": keep-alive\n\n\n\nevent: ping\n\n: x\n\n"]) == []


def test_data_without_value_is_an_empty_line():
    assert decode([b"data\ndata\n\n"]) == [ServerSentEvent("message", "\n")]


def test_only_one_space_is_removed():
    assert decode([b"data:  two spaces\n\n"]) == [ServerSentEvent("message", " two spaces")]


def test_byte_order_mark_at_start_is_ignored():
    assert decode([b"\xef\xbb", b"\xbfdata: x\n\n"]) == [ServerSentEvent("message", "x")]


def test_event_type_resets_after_dispatch():
    assert decode([b"event: error\ndata: 1\n\ndata: 2\n\n"]) == [
        ServerSentEvent("error", "1"), ServerSentEvent("message", "2")]


def test_stream_ending_without_blank_line_is_flushed():
    assert decode([b"data: {\"last\": true}"]) == [ServerSentEvent("message", '{"last": true}')]
    assert decode([b"data: a\ndata: b\n"]) == [ServerSentEvent("message", "a\nb")]


def test_invalid_utf8_is_replaced_not_raised():
    assert decode([b"data: \xff\xfe\n\n"]) == [ServerSentEvent("message", "\ufffd\ufffd")]
