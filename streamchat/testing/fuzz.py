"""Fuzz a running service over real HTTP: chat request bodies, and raw requests that break HTTP itself.

Each example is one connection to the service. What must hold, whatever was sent:

- never a 5xx, except gunicorn's 501 for a ``Transfer-Encoding`` it does not
  implement, which RFC 9112 (section 6.1) asks a server to answer with;
- every answer the app itself gave (it carries ``X-Request-Id``) to a 4xx on
  ``/api/chat`` is the JSON error ``{"error": {"code", "message"}}``;
- a 200 from ``/api/chat`` says who answered (``X-Terminal-Mode``).

``tests/test_fuzz.py`` runs a few hundred examples against a real gunicorn
worker; ``bench/fuzz`` runs ``python -m streamchat.testing.fuzz URL --examples N``
(10,000 by default) and prints the status counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

TIMEOUT = 10.0
ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool", "", "USER", "user "])
TEXT = st.text(max_size=60) | st.sampled_from(["hello", "\x00", "\ud800".encode("utf-8", "surrogatepass").decode(
    "utf-8", "replace"), "é" * 300, " ", "\u2028", "a" * 5000])
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                        max_leaves=12)
CONTENT = TEXT | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]),
                                                 "text": TEXT}), max_size=3) | JSON_ANY
MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": CONTENT}) | st.dictionaries(TEXT, JSON_ANY, max_size=3)
CHAT = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=8)}) | st.dictionaries(
    st.sampled_from(["messages", "model", "stream", "x"]), JSON_ANY, max_size=3) | JSON_ANY


API_FIELDS = st.sampled_from(["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                              "temperature", "user", "n", "tools", "tool_choice", "response_format", "logprobs",
                              "top_p", "stop", "metadata", "seed", "store", "frobnicate"])
API_VALUES = JSON_ANY | st.integers(-2, 3) | st.sampled_from([{"include_usage": True}, {"type": "text"}, "auto"])
#: The OpenAI-compatible API's bodies: mostly well-formed requests with odd extras, then anything.
API = st.builds(lambda base, extra: {**base, **extra},
                st.fixed_dictionaries({"model": st.sampled_from(["m", "rules", ""]) | JSON_LEAF,
                                       "messages": st.lists(MESSAGE, max_size=6)}),
                st.dictionaries(API_FIELDS, API_VALUES, max_size=3)) | st.dictionaries(API_FIELDS, JSON_ANY, max_size=4)


@st.composite
def chat_bodies(draw, shapes=CHAT) -> tuple[bytes, str]:
    """A request body and its content type: JSON of every shape, other encodings, and bytes that are not JSON."""
    value = draw(shapes)
    form = draw(st.sampled_from(["json", "json", "ascii", "utf-16", "nested", "bytes", "truncated"]))
    if form == "bytes":
        body = draw(st.binary(max_size=200))
    elif form == "nested":
        depth = draw(st.integers(1, 5000))
        body = b'{"messages":' + b"[" * depth + b"]" * depth + b"}"
    else:
        text = json.dumps(value, ensure_ascii=form == "ascii")
        body = text.encode("utf-16" if form == "utf-16" else "utf-8", "surrogatepass")
        if form == "truncated":
            body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                         "APPLICATION/JSON", "", "application/json; charset=latin-1"]))
    return body, content_type


TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~",
                min_size=1, max_size=12)
RAW_BYTES = st.binary(max_size=40)


@st.composite
def raw_requests(draw) -> bytes:
    """A whole HTTP/1.1 request, with any of its parts malformed: line, method, path, headers, chunked framing."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"]) | TOKEN)
    path = draw(st.sampled_from(["/api/chat", "/healthz", "/", "/static/chat.js", "/api/chat?x=1",
                                 "/api/chat/streams/x", "/api/chat/streams/x/status", "/api/chat/streams/x/stop"])
                | st.text(alphabet="0123456789-+%CB2x. ", max_size=12).map(lambda o: "/api/chat/streams/x?offset=" + o)
                | st.text(alphabet="/%0123456789abcdefABCDEF.?=&#;:@~", max_size=40).map(lambda p: "/" + p))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "", "HTTP/9.9"]))
    line = f"{method} {path} {version}".encode("utf-8", "replace")
    if draw(st.booleans()):
        line = draw(RAW_BYTES) + line if draw(st.booleans()) else line.replace(b" ", draw(st.sampled_from(
            [b"  ", b"\t", b" "])))
    headers = [b"Host: fuzz"]
    headers += [f"{name}: {value}".encode("latin-1", "replace") for name, value in draw(st.lists(
        st.tuples(TOKEN | st.sampled_from(["Content-Length", "Transfer-Encoding", "Content-Type", "Expect",
                                           "X-Request-Id", "Origin", "X-Forwarded-For", "Connection"]),
                  st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30)), max_size=4))]
    if draw(st.booleans()):
        headers.append(draw(RAW_BYTES))  # a header line that is not a header
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    framing = draw(st.sampled_from(["length", "chunked", "bad-chunked", "none", "wrong-length"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        headers.append(b"Content-Length: %d" % draw(st.integers(0, 2 * len(body))))
    elif framing in ("chunked", "bad-chunked"):
        headers.append(b"Transfer-Encoding: chunked")
        size = b"%x" % len(body)
        if framing == "bad-chunked":
            size = draw(st.sampled_from([b"zz", b"-1", b"0x3a", b"", b"ffffffffffffffffff", b"5;x", size + b" "]))
        terminator = draw(st.sampled_from([b"\r\n", b"\n", b"", b"XX"])) if framing == "bad-chunked" else b"\r\n"
        body = size + b"\r\n" + body + terminator + b"0\r\n\r\n"
    headers.append(b"Content-Type: application/json")
    headers.append(b"Connection: close")
    return line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + (body if framing != "none" else b"")


def exchange(host: str, port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and return everything the service answers until it closes."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the service may close before it has read everything: what it answered still counts
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def chat_request(body: bytes, content_type: str, path: str = "/api/chat", key: str = "") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            + (f"Content-Type: {content_type}\r\n" if content_type else "")
            + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n")
    return head.encode() + body


def check(answer: bytes, request: bytes) -> int:
    """Check one answer against the rules in the module docstring; return its status (0: none)."""
    if not answer:
        return 0
    line = request.split(b"\r\n", 1)[0]
    method, path_is_chat, path_is_api = line.split(b" ")[0], b" /api/chat" in line, b" /v1/" in line
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split(b" ")[1])
    headers = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
               for line in header_lines if b":" in line}
    if status == 501 and b"x-request-id" not in headers and _unknown_transfer_coding(request):
        return status
    assert status < 500, f"{status_line!r} for a client's request"
    if path_is_chat and b"x-request-id" in headers and method != b"HEAD":
        if 400 <= status < 500:
            if headers.get(b"transfer-encoding") == b"chunked":
                body = _unchunk(body)
            elif b"content-length" in headers:
                body = body[: int(headers[b"content-length"])]  # what follows answers a pipelined request
            payload = json.loads(body)
            assert set(payload["error"]) == {"code", "message"}, payload
        elif status == 200 and method == b"POST":
            assert headers[b"x-terminal-mode"] in (b"live", b"fallback")
    if path_is_api and b"x-request-id" in headers and 400 <= status < 500 and method != b"HEAD":
        if headers.get(b"transfer-encoding") == b"chunked":
            body = _unchunk(body)
        elif b"content-length" in headers:
            body = body[: int(headers[b"content-length"])]
        payload = json.loads(body)
        assert set(payload["error"]) == {"message", "type", "param", "code"}, payload  # OpenAI's shape
    return status


def _unknown_transfer_coding(request: bytes) -> bool:
    head = request.split(b"\r\n\r\n", 1)[0].lower()
    codings = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
               if line.startswith(b"transfer-encoding:")]
    return any(coding != b"chunked" for coding in codings)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def fuzz(host: str, port: int, examples: int, counts: collections.Counter | None = None,
         api_key: str = "") -> collections.Counter:
    """Run ``examples`` chat bodies and as many raw requests against the service (and with ``api_key``, as many
    ``/v1/chat/completions`` bodies); return the status counts."""
    counts = collections.Counter() if counts is None else counts
    options = settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                       suppress_health_check=list(HealthCheck))

    @options
    @given(chat_bodies())
    def bodies(case: tuple[bytes, str]) -> None:
        data = chat_request(*case)
        counts[f"body {check(exchange(host, port, data), data)}"] += 1

    @options
    @given(raw_requests())
    def raw(data: bytes) -> None:
        counts[f"raw {check(exchange(host, port, data), data)}"] += 1

    @options
    @given(chat_bodies(API))
    def api_bodies(case: tuple[bytes, str]) -> None:
        data = chat_request(*case, path="/v1/chat/completions", key=api_key)
        counts[f"api {check(exchange(host, port, data), data)}"] += 1

    bodies()
    raw()
    if api_key:
        api_bodies()
    return counts


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--examples", type=int, default=10_000, help="examples of each kind (bodies, raw requests)")
    parser.add_argument("--api-key", default="", help="one of the service's SERVICE_API_KEYS: fuzz /v1 too")
    args = parser.parse_args(argv)
    host, port = args.url.removeprefix("http://").rstrip("/").split(":")
    counts = fuzz(host, int(port), args.examples, api_key=args.api_key)
    print(json.dumps({"examples": sum(counts.values()), "statuses": dict(sorted(counts.items()))}, indent=1))


if __name__ == "__main__":
    main()
