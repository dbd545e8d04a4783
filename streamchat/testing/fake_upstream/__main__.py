"""``python -m streamchat.testing.fake_upstream --port 8400``: serve the fake upstream until Ctrl-C."""

import argparse
import asyncio
import ssl

from .server import DEFAULTS, FakeUpstream
from .server import __doc__ as server_doc


def main() -> None:
    parser = argparse.ArgumentParser(description=server_doc.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--first-token-ms", type=float, default=DEFAULTS["first_token_ms"])
    parser.add_argument("--interval-ms", type=float, default=DEFAULTS["interval_ms"])
    parser.add_argument("--tokens", type=int, default=DEFAULTS["tokens"])
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain...")
    parser.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    parser.add_argument("--tls-delay-ms", type=float, default=0, help="hold every TLS handshake back this long")
    parser.add_argument("--idle-close-ms", type=float, default=0, help="close connections idle this long")
    args = parser.parse_args()
    defaults = {"first_token_ms": args.first_token_ms, "interval_ms": args.interval_ms, "tokens": args.tokens}
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        asyncio.run(FakeUpstream(args.host, args.port, defaults, keep_records=2000, tls=tls,
                                tls_delay_ms=args.tls_delay_ms, idle_close_ms=args.idle_close_ms).serve_forever())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
