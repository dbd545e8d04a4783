"""Check a rules file before deploying it: ``./run check-rules [FILE]``.

    python -m streamchat.domain.rules_check [FILE]

Only that file is read: no other setting is looked at (a bad one elsewhere is
not this command's business), nothing else is logged. Without ``FILE``, the
``RULES_PATH`` variable or ``rules.yaml``. Prints each problem as
``path:line:column: message`` and exits 1 if there is any.
"""

from __future__ import annotations

import os
import sys

from .rules import check_file


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0] in ("-h", "--help")):
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    path = argv[0] if argv else os.environ.get("RULES_PATH") or "rules.yaml"
    ok, lines = check_file(path)
    for line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
