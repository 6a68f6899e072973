"""Artifacts: storing and loading a large DataFrame, against plain Parquet on the same disk.

    .venv/bin/python benchmarks/bench_artifacts.py                  # 10,000,000 x 8 floats
    .venv/bin/python benchmarks/bench_artifacts.py --rows 2000000   # a busy machine

Measures, for an N-row frame of 8 float64 columns (N x 64 bytes), each operation in its
own child process (so that one operation's memory, which pyarrow's allocator keeps, does
not hide the next one's), ``--repeat`` times, median:

* ``df.to_parquet`` and ``pd.read_parquet`` on a file in the same folder (the yardstick);
* ``encode`` into an :class:`ArtifactStore` (Parquet written while hashed, then renamed)
  and ``decode`` (read while the digest is checked in a second thread);
* the second ``encode`` of the same frame (already stored), against SHA-256 of the
  Parquet file alone (the target: at most the cost of hashing);
* through the engine: ``cs.checkpoint`` of the frame in a durable run (``wf.run()`` on
  SQLite, the artifact store beside it), a second run checkpointing the same frame, and
  the replay of the stored step (``h.checkpoints``, digest checked);
* peak extra memory: the peak resident set size sampled every 2 ms during the operation,
  minus the resident set size before it, as a multiple of the frame's size;
* pickle in the row (``Codec('pickle')``, base64 text) at the largest frame the default
  16 MiB row limit holds, against the artifact path at that size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = 8


def _frame(rows: int):
    import numpy as np
    import pandas as pd

    data = np.random.default_rng(0).random((rows, COLUMNS))
    return pd.DataFrame(data, columns=[f"c{i}" for i in range(COLUMNS)])


class PeakRss:
    """Samples this process's resident set size in a thread while the block runs."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.base = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def warm_up(scratch: str) -> None:
    """Every code path once on a tiny frame: imports and first-call costs are not timed."""
    import pandas as pd

    from nbjobs.artifacts import ArtifactStore, decode, encode
    from nbjobs.codec import Codec

    tiny = _frame(10)
    tiny.to_parquet(os.path.join(scratch, "tiny.parquet"))
    pd.read_parquet(os.path.join(scratch, "tiny.parquet"))
    store = ArtifactStore(os.path.join(scratch, "store"))
    decode(encode(tiny, store), store)
    codec = Codec("pickle")
    codec.loads(codec.dumps(tiny))


def child(op: str, rows: int, folder: str) -> dict:
    """One measured operation, run in a fresh process."""
    import pandas as pd

    from nbjobs.artifacts import ArtifactStore, decode, encode
    from nbjobs.codec import Codec

    store = ArtifactStore(os.path.join(folder, "store"))
    plain = os.path.join(folder, "plain.parquet")
    ref_path = os.path.join(folder, "ref.json")
    needs_frame = op in (
        "to_parquet", "encode", "encode_again", "pickle_dumps", "checkpoint", "checkpoint_again"
    )  # fmt: skip
    df = _frame(rows) if needs_frame else None
    pickled = Path(folder, "pickled.txt").read_text() if op == "pickle_loads" else None
    ref = json.loads(Path(ref_path).read_text()) if op == "decode" else None
    codec = Codec("pickle")
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        warm_up(scratch)
    app, workflow = _engine(folder, df) if op.startswith(("checkpoint", "replay")) else (None, None)
    start = time.perf_counter()
    with PeakRss() as rss:
        if op == "to_parquet":
            df.to_parquet(plain)
        elif op == "read_parquet":
            out = pd.read_parquet(plain)
        elif op in ("encode", "encode_again"):
            Path(ref_path).write_text(json.dumps(encode(df, store)))
        elif op == "decode":
            out = decode(ref, store)
        elif op == "sha256":
            digest = hashlib.sha256()
            with open(plain, "rb") as f:
                while chunk := f.read(8 << 20):
                    digest.update(chunk)
        elif op == "pickle_dumps":
            Path(folder, "pickled.txt").write_text(codec.dumps(df))
        elif op == "pickle_loads":
            out = codec.loads(pickled)
        elif op in ("checkpoint", "checkpoint_again"):
            workflow.run()
        elif op == "replay":
            (job,) = app.jobs(workflow="hold", limit=1)
            out = job.checkpoints["frame"]
        else:
            raise SystemExit(f"unknown operation {op}")
    seconds = time.perf_counter() - start
    if app is not None:
        app.close()
    if op in ("read_parquet", "decode", "pickle_loads", "replay"):
        assert out.shape == (rows, COLUMNS)
    return {"seconds": seconds, "extra": rss.peak - rss.base}


def _engine(folder: str, df: Any) -> tuple[Any, Any]:
    """An App on SQLite in ``folder`` (artifacts beside it) with a workflow whose one
    step returns ``df``; a warm-up run on a tiny frame first."""
    import nbjobs

    app = nbjobs.App(f"sqlite:///{folder}/engine.db", artifacts=os.path.join(folder, "engine"))
    held = {"frame": _frame(10)}

    @app.workflow(name="hold")
    def hold(cs: Any) -> None:
        cs.checkpoint("frame", lambda: held["frame"])

    if df is not None:
        hold.run()  # warm-up: the engine's first-call costs are not timed
        held["frame"] = df
    else:  # a replay: load the oldest (tiny, warm-up) run's step first, untimed
        app.jobs(workflow="hold", limit=1000)[-1].checkpoints  # noqa: B018
    return app, hold


def run(op: str, rows: int, folder: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", op, "--rows", str(rows), "--dir", folder],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{op} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(ops: list[str], rows: int, folder: str, repeat: int) -> dict[str, list[dict]]:
    """Each op in order, ``repeat`` interleaved rounds (the first encode of a round
    starts from an empty store)."""
    results: dict[str, list[dict]] = {op: [] for op in ops}
    for _ in range(repeat):
        for op in ops:
            if op in ("encode", "checkpoint"):
                kind = "store" if op == "encode" else "engine"
                for path in Path(folder, kind).glob("??/*"):
                    path.chmod(0o644)
                    path.unlink()
                for path in Path(folder, kind).glob("fingerprints/??/*"):
                    path.unlink()
            results[op].append(run(op, rows, folder))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="folder on the disk to measure (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.dir)))
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        frame_bytes = args.rows * COLUMNS * 8
        ops = ["to_parquet", "read_parquet", "sha256", "encode", "encode_again", "decode",
               "checkpoint", "checkpoint_again", "replay"]  # fmt: skip
        big = measure(ops, args.rows, folder, args.repeat)
        # the largest frame pickle-in-row holds: base64 of about 64 bytes a row < 16 MiB
        small_rows = (16 * 1024 * 1024 * 3 // 4 - 4096) // (COLUMNS * 8)
        small = measure(
            ["pickle_dumps", "pickle_loads", "encode", "decode"], small_rows, folder, args.repeat
        )

    def cell(results: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in results)

    def line(label: str, results: list[dict], yard: list[dict] | None, size: int) -> str:
        seconds = cell(results, "seconds")
        ratio = f"{seconds / cell(yard, 'seconds'):5.2f}x" if yard else "     "
        extra = cell(results, "extra") / size
        return f"{label:<44} {seconds:8.3f} s  {ratio}  {extra:6.2f}x"

    print(
        f"\nnbjobs artifacts benchmark: {args.rows:,} rows x {COLUMNS} float64 "
        f"({frame_bytes / 1e6:,.0f} MB), median of {args.repeat}, each in a fresh process"
    )
    print(f"{'operation':<44} {'time':>10}  {'ratio':>6}  {'peak extra / frame':>6}")
    print("-" * 84)
    print(line("df.to_parquet (yardstick)", big["to_parquet"], None, frame_bytes))
    print(
        line(
            "store: encode (Parquet, hashed, renamed)",
            big["encode"],
            big["to_parquet"],
            frame_bytes,
        )
    )
    print(line("pd.read_parquet (yardstick)", big["read_parquet"], None, frame_bytes))
    print(line("load: decode (digest checked)", big["decode"], big["read_parquet"], frame_bytes))
    print(line("sha256 of the Parquet file (yardstick)", big["sha256"], None, frame_bytes))
    print(line("second encode of the same frame", big["encode_again"], big["sha256"], frame_bytes))
    print(line("cs.checkpoint of the frame (wf.run)", big["checkpoint"], big["to_parquet"],
               frame_bytes))  # fmt: skip
    print(line("second run, same frame", big["checkpoint_again"], big["sha256"], frame_bytes))
    print(line("replay of the step (h.checkpoints)", big["replay"], big["read_parquet"],
               frame_bytes))  # fmt: skip
    small_bytes = small_rows * COLUMNS * 8
    print(f"\nat {small_rows:,} rows ({small_bytes / 1e6:.1f} MB), the most pickle-in-row holds:")
    print(line("pickle in the row: dumps", small["pickle_dumps"], None, small_bytes))
    print(line("artifact: encode", small["encode"], small["pickle_dumps"], small_bytes))
    print(line("pickle in the row: loads", small["pickle_loads"], None, small_bytes))
    print(line("artifact: decode", small["decode"], small["pickle_loads"], small_bytes))


if __name__ == "__main__":
    main()
