"""The chunked transfer-coding decoder, fed canned byte splits."""

import pytest

from streamchat.transport.chunked import ChunkedDecoder, ChunkedFramingError

BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\nC\r\nw\xc3\xb6rld \xf0\x9f\x8c\x8d!\r\n0\r\nX-Trailer: 1\r\n\r\n"
PAYLOAD = "hello wörld 🌍!".encode()


def decode(pieces):
    decoder = ChunkedDecoder()
    payload = b"".join(decoder.feed(piece) for piece in pieces)
    return payload, decoder.done


def test_one_read():
    assert decode([BODY]) == (PAYLOAD, True)


def test_every_split_point():
    for cut in range(1, len(BODY)):
        assert decode([BODY[:cut], BODY[cut:]]) == (PAYLOAD, True), cut


def test_byte_by_byte():
    assert decode([bytes([b]) for b in BODY]) == (PAYLOAD, True)


def test_without_trailers_and_unfinished():
    assert decode([b"3\r\nabc\r\n0\r\n\r\n"]) == (b"abc", True)
    assert decode([b"3\r\nabc\r\n"]) == (b"abc", False)
    assert decode([b"3\r\nabc\r\n0\r\n"]) == (b"abc", False)


@pytest.mark.parametrize("bad", [b"zz\r\nabc\r\n", b"zz;x=1\r\nabc\r\n", b"3\r\nabcXY", b"3\r\nabcXY0\r\n\r\n", b"-1\r\n",
                                 b"1" * 2000])
def test_bad_framing(bad):
    with pytest.raises(ChunkedFramingError):
        decode([bad])
