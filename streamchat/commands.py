"""The ``./run`` commands that are not the service itself.

    ./run check-rules [FILE]    (python -m streamchat.commands check-rules [FILE])

``check-rules`` checks a rules file before it is deployed. Only that file is
read: no other setting is looked at (a bad one elsewhere is not this
command's business), nothing else is logged. Without ``FILE``, ``RULES_PATH``
(from the environment or ``.env``), else ``rules.yaml``. Prints each problem as
``path:line:column: message`` and exits 1 if there is any.
"""

from __future__ import annotations

import sys

from .config import ConfigError, parse_settings, read_env_file
from .domain.rules import check_file

USAGE = __doc__.split("\n\n")[1].strip()


def check_rules(argv: list[str]) -> int:
    """Check the rules file named by ``argv`` (or the configured one); return the exit status."""
    if len(argv) > 1 or (argv and argv[0] in ("-h", "--help")):
        print(USAGE, file=sys.stderr)
        return 2
    if argv:
        path = argv[0]
    else:
        read_env_file()
        try:
            path = parse_settings(["RULES_PATH"]).rules_path
        except ConfigError as exc:
            print(f"streamchat: configuration error: {exc}", file=sys.stderr)
            return 2
    ok, lines = check_file(path)
    for line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


COMMANDS = {"check-rules": check_rules}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
