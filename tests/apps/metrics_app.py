"""A worker process serving its metrics: ``python -m tests.apps.metrics_app PORT``.

It reads ``NBJOBS_URL``, runs a worker for the ``metered`` workflow (of which it submits
``NBJOBS_SUBMIT`` jobs, default none), and serves ``/metrics`` on 127.0.0.1:PORT as
``nbjobs worker --metrics-port PORT`` does, until it is terminated.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import nbjobs
from nbjobs.metrics import serve_metrics

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.2, stale_after_seconds=5.0, poll_seconds=0.05
)


@app.workflow(name="metered")
def metered(cs: nbjobs.CallState, n: int) -> int:
    return cs.checkpoint("double", lambda: 2 * n)


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app.start(concurrency=2)
    for n in range(int(os.environ.get("NBJOBS_SUBMIT", "0"))):
        metered.submit(n)
    server = serve_metrics(app, int(sys.argv[1]))
    print(f"metrics on {server.server_address}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    app.close()


if __name__ == "__main__":
    main()
