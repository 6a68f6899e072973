"""Run one measure of one system and print its figure as a JSON line.

    python -m benchmarks.peers MODULE MEASURE '{"option": value, ...}'

The system's module is imported here, in a process of its own, and never by the parent
``bench_peers.py``, which only reads the line this prints.
"""

from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    module, name, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    measures = importlib.import_module(f"benchmarks.peers.{module}").MEASURES
    value = measures[name](**options)
    print(json.dumps({"value": value}), flush=True)


if __name__ == "__main__":
    main()
