"""A worker app for artifact tests: ``nbjobs worker tests.apps.artifact_app:app``.

It reads ``NBJOBS_URL`` and keeps artifacts where ``NBJOBS_ARTIFACTS`` says (object
storage takes its endpoint and keys from the ``AWS_*`` variables, as s3fs does).  Steps
append to the ledger file ``NBJOBS_LEDGER``; with ``NBJOBS_SLOW_WRITE`` set, the "make"
step returns a frame large enough that the test can SIGKILL the process while the
artifact is being written.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

import nbjobs
from tests.apps.events import record

app = nbjobs.App(
    os.environ["NBJOBS_URL"], heartbeat_seconds=0.5, stale_after_seconds=300, poll_seconds=0.1
)


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    record(f"start make {seed}")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"c{i}": rng.random(rows) for i in range(8)})
    record(f"done make {seed}")
    return frame


def first(seed: int, pause: float) -> int:
    record(f"start first {seed}")
    time.sleep(pause)
    return seed


@app.workflow(name="frames")
def frames(cs: nbjobs.CallState, rows: int, seed: int, pause: float = 0.0) -> dict:
    cs.checkpoint("first", first, seed, pause)
    frame = cs.checkpoint("make", make_frame, rows, seed)
    total = cs.checkpoint("total", lambda f: float(f.to_numpy().sum()), frame)
    return {"frame": frame, "total": total}
