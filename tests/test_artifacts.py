"""Artifacts: typed values out of the row, content-addressed, crash-safe, on real files.

Round trips of every built-in type, content addressing, corrupt and missing files, two
processes writing the same content, a writer SIGKILLed mid-write, the Codec seam, and the
object-storage path against a real S3-compatible server (moto's server mode) started on
127.0.0.1.  The engine wiring (checkpoints on every backend) comes with the App option.
"""

from __future__ import annotations

import html
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import polars.testing
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nbjobs
from nbjobs.artifacts import (
    MARKER,
    ArtifactStore,
    File,
    Reference,
    check_hosts,
    decode,
    default_location,
    encode,
    is_private_folder,
    register_type,
    store_value,
)
from nbjobs.artifacts.store import FINGERPRINTS, TEMP_FOLDER
from nbjobs.artifacts.types import write_parquet
from nbjobs.codec import Codec
from tests.support import ROOT, wait_until


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _finals(root: Path) -> list[Path]:
    """Files under final names (``<aa>/<sha>.<suffix>``), temporary and cache aside."""
    return sorted(p for p in root.glob("??/*") if p.is_file() and ".corrupt-" not in p.name)


def _temporary(root: Path) -> list[Path]:
    folder = root / TEMP_FOLDER
    return list(folder.iterdir()) if folder.exists() else []


def _round_trip(value, store):
    ref = encode(value, store)
    assert ref is not None and set(ref) == {MARKER}
    json.dumps(ref)  # the row form is JSON
    return decode(ref, store)


PANDAS = {
    "empty": pd.DataFrame(),
    "empty-with-columns": pd.DataFrame(
        {"a": pd.Series([], dtype="int64"), "b": pd.Series([], dtype="str")}
    ),
    "categorical": pd.DataFrame(
        {"c": pd.Categorical(["a", "b", "a", None], categories=["b", "a", "z"], ordered=True)}
    ),
    "tz-aware": pd.DataFrame(
        {"t": pd.date_range("2024-03-30", periods=4, freq="h", tz="Europe/Paris")}
    ),
    "freq-index": pd.DataFrame(
        {"x": [1.5, 2.5, 3.5]}, index=pd.date_range("2024-01-01", periods=3)
    ),
    "names": pd.DataFrame({"x": [1, 2]}, index=pd.Index([5, 6], name="k")).rename_axis(
        columns="cols"
    ),
    "int-column-names": pd.DataFrame({1: [1, 2], 2: [3, 4]}),
    "multiindex": pd.DataFrame(
        [[1, 2.0], [3, 4.0]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])
    ).set_index(pd.MultiIndex.from_tuples([("p", 1), ("q", 2)], names=["l", "n"])),
    "strings": pd.DataFrame({"s": ["a", None, "c"]}),
    "object-strings": pd.DataFrame(
        {"o": pd.Series(["a", None, "c"], dtype=object), "n": [1, 2, 3]}
    ).set_index(pd.Index(["x", "y", "z"], dtype=object)),
    "nullable": pd.DataFrame(
        {
            "i": pd.array([1, None, 3], dtype="Int64"),
            "b": pd.array([True, None, False], dtype="boolean"),
            "f": [0.5, float("nan"), -np.inf],
        }
    ),
    "range-index": pd.DataFrame({"x": [1, 2]}, index=pd.RangeIndex(10, 14, 2)),
    "mixed-dtypes": pd.DataFrame(
        {
            "u8": np.arange(3, dtype="uint8"),
            "f32": np.ones(3, dtype="float32"),
            "td": pd.to_timedelta([1, 2, 3], unit="s"),
            "naive": pd.to_datetime(["2024-01-01", None, "2024-01-03"]),
        }
    ),
}


@pytest.mark.parametrize("name", sorted(PANDAS))
def test_pandas_frames_round_trip_equal(store, name):
    df = PANDAS[name]
    back = _round_trip(df, store)
    pd.testing.assert_frame_equal(back, df)
    assert back.attrs == df.attrs


def test_a_pandas_artifact_is_plain_parquet_readable_by_others(store):
    df = PANDAS["tz-aware"]
    ref = Reference.from_dict(encode(df, store))
    assert ref.type == "pandas.DataFrame" and ref.suffix == "parquet"
    assert ref.shape == (4, 1) and ref.summary["columns"] == {"t": "datetime64[us, Europe/Paris]"}
    assert ref.uri.endswith(f"/{ref.sha256[:2]}/{ref.sha256}.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(ref.uri), df)


@pytest.mark.slow
def test_a_five_million_row_frame_round_trips(store):
    n = 5_000_000
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "i": np.arange(n, dtype="int64"),
            "f": rng.random(n),
            "c": pd.Categorical.from_codes(rng.integers(0, 3, n), ["lo", "mid", "hi"]),
            "t": pd.date_range("2020-01-01", periods=n, freq="s", tz="UTC"),
        }
    )
    ref = encode(df, store)
    assert ref[MARKER]["summary"]["shape"] == [n, 4]
    pd.testing.assert_frame_equal(decode(ref, store), df)


def test_polars_arrow_numpy_and_bytes_round_trip(store):
    frame = pl.DataFrame(
        {
            "a": [1, None, 3],
            "b": ["x", None, "z"],
            "c": pl.Series(["u", "v", "u"], dtype=pl.Categorical),
        }
    )
    polars.testing.assert_frame_equal(_round_trip(frame, store), frame)
    polars.testing.assert_frame_equal(_round_trip(frame.clear(), store), frame.clear())

    table = pa.table({"x": [1, 2, None], "y": ["a", "b", "c"]}).replace_schema_metadata({"k": "v"})
    back = _round_trip(table, store)
    assert back.equals(table, check_metadata=True)

    for array in (
        np.arange(12, dtype="int16").reshape(3, 4),
        np.asfortranarray(np.ones((2, 3))),
        np.array([], dtype="float64"),
        np.array(3.5),
        np.array(["ab", "c"]),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ):
        loaded = _round_trip(array, store)
        assert loaded.dtype == array.dtype and loaded.shape == array.shape
        np.testing.assert_array_equal(loaded, array)

    for data in (b"", b"\x00\xff" * 1000):
        assert _round_trip(data, store) == data


def test_values_with_no_typed_form_are_refused_clearly(store):
    with pytest.raises(nbjobs.SerializationError, match="holds Python objects"):
        encode(np.array([{"a": 1}, None]), store)
    with pytest.raises(nbjobs.SerializationError, match="mixed values"):
        encode(pd.DataFrame({"o": [1, "a"]}), store)
    with pytest.raises(nbjobs.SerializationError, match="Duplicate column"):
        encode(pd.DataFrame([[1, 2]], columns=["a", "a"]), store)
    assert not _finals(Path(store.root))
    assert not _temporary(Path(store.root))  # failed writes cleaned up


def test_files_and_folders_round_trip_as_private_copies(store, tmp_path):
    single = tmp_path / "report.csv"
    single.write_text("a,b\n1,2\n")
    loaded = _round_trip(File(single), store)
    assert isinstance(loaded, File) and loaded.name == "report.csv"
    assert loaded.path != single and loaded.path.read_text() == "a,b\n1,2\n"
    assert loaded == File(single)

    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(1000))
    (folder / "sub" / "config.json").write_text("{}")
    ref = Reference.from_dict(encode(File(folder), store))
    assert ref.suffix == "tar" and ref.summary == {"name": "model", "folder": True}
    copy = decode(ref, store)
    assert copy.is_dir and copy == File(folder)
    assert (copy.path / "sub" / "config.json").read_text() == "{}"
    assert decode(ref, store).path == copy.path  # unpacked once, then reused

    # equal folders written at different times have one digest
    time.sleep(0.01)
    os.utime(folder / "weights.bin")
    assert Reference.from_dict(encode(File(folder), store)).sha256 == ref.sha256

    (folder / "link").symlink_to(folder / "weights.bin")
    with pytest.raises(nbjobs.SerializationError, match="symbolic link"):
        encode(File(folder), store)
    with pytest.raises(nbjobs.SerializationError, match="does not exist"):
        encode(File(tmp_path / "nope"), store)


def test_equal_content_is_stored_once(store):
    df = pd.DataFrame({"x": np.arange(100_000), "y": np.arange(100_000) * 0.5})
    first = encode(df, store)[MARKER]
    second = encode(df.copy(), store)[MARKER]
    assert first == second
    assert _finals(Path(store.root)) == [Path(first["uri"])]
    assert not _temporary(Path(store.root))
    assert encode(b"same", store) == encode(b"same", store)
    assert len(_finals(Path(store.root))) == 2


def test_a_corrupt_artifact_raises_and_is_moved_aside(store):
    df = pd.DataFrame({"x": np.arange(1000)})
    ref = encode(df, store)
    path = Path(ref[MARKER]["uri"])
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(nbjobs.ArtifactError, match="is corrupt") as caught:
        decode(ref, store)
    assert str(path) in str(caught.value)
    assert not path.exists() and list(path.parent.glob("*.corrupt-*"))
    # recomputing the value stores it again, and it loads
    assert encode(df, store) == ref
    pd.testing.assert_frame_equal(decode(ref, store), df)

    # a corruption that still parses (bytes) is caught too
    raw = encode(b"hello", store)
    Path(raw[MARKER]["uri"]).chmod(0o644)
    Path(raw[MARKER]["uri"]).write_bytes(b"jello")
    with pytest.raises(nbjobs.ArtifactError, match="is corrupt"):
        decode(raw, store)


def test_a_missing_artifact_raises_naming_its_uri(store):
    ref = encode(np.arange(10), store)
    os.unlink(ref[MARKER]["uri"])
    with pytest.raises(nbjobs.ArtifactError, match="is missing") as caught:
        decode(ref, store)
    assert ref[MARKER]["uri"] in str(caught.value)


def test_a_malformed_or_foreign_reference_is_refused(store, tmp_path):
    ref = encode(b"x", store)[MARKER]
    for bad in (
        {**ref, "sha256": "../../etc/passwd"},
        {**ref, "suffix": "/../x"},
        {**ref, "size": "1"},
        {"type": "bytes"},
        "nonsense",
    ):
        with pytest.raises(nbjobs.ArtifactError, match="malformed"):
            decode(bad, store)
    # the URI a row carries is not where a load reads: the digest decides
    assert decode({**ref, "uri": str(tmp_path / "elsewhere")}, store) == b"x"
    with pytest.raises(nbjobs.ArtifactError, match=r"no artifact type 'x\.Y'"):
        decode({**ref, "type": "x.Y"}, store)


def _write_many(root: str, seed: int, rounds: int) -> list[str]:
    store = ArtifactStore(root)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.random((200_000, 4)), columns=list("abcd"))
    return [encode(df, store)[MARKER]["sha256"] for _ in range(rounds)]


def test_two_processes_writing_the_same_content_at_once(tmp_path):
    root = str(tmp_path / "shared")
    ArtifactStore(root)
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_write_many, [(root, 7, 6), (root, 7, 6)])
    digests = {d for result in results for d in result}
    assert len(digests) == 1
    [final] = _finals(Path(root))
    assert final.name.startswith(digests.pop())
    assert not _temporary(Path(root))
    expected = pd.DataFrame(np.random.default_rng(7).random((200_000, 4)), columns=list("abcd"))
    pd.testing.assert_frame_equal(pd.read_parquet(final), expected)


KILLED_WRITER = """
import sys, numpy as np, pandas as pd
from nbjobs.artifacts import ArtifactStore, encode
store = ArtifactStore(sys.argv[1])
df = pd.DataFrame(np.random.default_rng(3).random((8_000_000, 4)), columns=list("abcd"))
print("writing", flush=True)
encode(df, store)
print("done", flush=True)
"""


def test_a_writer_killed_mid_write_leaves_no_file_under_a_final_name(tmp_path):
    root = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout.readline().strip() == "writing"

        def partial() -> list[Path]:
            return [p for p in (root / TEMP_FOLDER).glob("*.part") if p.stat().st_size > 1 << 20]

        wait_until(partial, timeout=120, interval=0.005, what="a partial artifact")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert _finals(root) == []
    store = ArtifactStore(root)
    assert store.sweep_temporary(older_than=3600) == 0  # young: maybe a write in flight
    assert store.sweep_temporary(older_than=0) == 1
    # the step recomputed: stored complete, loadable
    df = pd.DataFrame(np.random.default_rng(3).random((8_000_000, 4)), columns=list("abcd"))
    ref = encode(df, store)
    pd.testing.assert_frame_equal(decode(ref, store), df)


class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def test_register_type_adds_a_user_type(store):
    register_type(
        Point,
        dump=lambda p, f: f.write(json.dumps([p.x, p.y]).encode()),
        load=lambda f: Point(*json.load(f)),
        suffix="point.json",
    )
    ref = encode(Point(1, 2), store)[MARKER]
    assert ref["type"] == "tests.test_artifacts.Point" and ref["uri"].endswith(".point.json")
    assert decode(ref, store) == Point(1, 2)
    with pytest.raises(nbjobs.ConfigurationError, match="suffix"):
        register_type(Point, dump=print, load=print, suffix=".bad")


def test_large_json_goes_out_of_the_row_and_small_json_stays(store):
    assert encode({"a": [1, 2, 3]}, store) is None
    big = {"rows": [{"i": i, "s": "x" * 20} for i in range(20_000)]}
    ref = encode(big, store)
    assert ref[MARKER]["type"] == "json"
    assert decode(ref, store) == big


# ------------------------------------------------------------------------ the Codec seam


def test_codec_writes_nested_artifacts_and_reads_them_back(store):
    codec = Codec(artifacts=store)
    df = PANDAS["categorical"]
    value = {"frame": df, "parts": [np.arange(3), b"raw"], "n": 1, "s": "text"}
    text = codec.dumps(value)
    assert len(text) < 2000 and text.count(MARKER) == 3
    back = codec.loads(text)
    pd.testing.assert_frame_equal(back["frame"], df)
    np.testing.assert_array_equal(back["parts"][0], np.arange(3))
    assert back["parts"][1] == b"raw" and back["n"] == 1 and back["s"] == "text"


def test_codec_keeps_json_values_as_before(store):
    plain, with_store = Codec(), Codec(artifacts=store)
    for value in (None, 1, "x", [1, 2.5, "a"], {"a": {"b": [None, True]}}, float("nan")):
        assert with_store.dumps(value) == plain.dumps(value)
    assert with_store.loads('{"a": 1}') == {"a": 1}
    with pytest.raises(nbjobs.SerializationError, match=r"pandas\.DataFrame as JSON"):
        plain.dumps(pd.DataFrame({"x": [1]}))
    assert not _finals(Path(store.root))


def test_codec_spills_big_json_and_bounds_only_the_row(store):
    codec = Codec(artifacts=store, max_payload_bytes=1000, inline_bytes=500)
    big = list(range(10_000))
    text = codec.dumps(big)
    assert len(text) < 500 and json.loads(text)[MARKER]["type"] == "json"
    assert codec.loads(text) == big
    with pytest.raises(nbjobs.SerializationError, match="over the limit"):
        Codec(max_payload_bytes=1000).dumps(big)


def test_user_json_cannot_forge_a_reference(store, tmp_path):
    forged = {MARKER: encode(b"secret", store)[MARKER]}
    for codec in (Codec(), Codec(artifacts=store)):
        with pytest.raises(nbjobs.SerializationError, match="reserves it"):
            codec.dumps({"payload": [forged]})
    # a string holding the marker is plain text
    codec = Codec(artifacts=store)
    assert codec.loads(codec.dumps(f'"{MARKER}"')) == f'"{MARKER}"'
    # text with a reference, read by an app without the store, fails clearly
    text = codec.dumps(b"secret")
    with pytest.raises(nbjobs.ArtifactError, match="artifact store"):
        Codec().loads(text)


def test_codec_hash_only_text_writes_nothing(store):
    codec = Codec(artifacts=store)
    df = pd.DataFrame({"x": np.arange(10)})
    hashed = codec.dumps([[df], {}], check_keys=False)
    assert hashed == codec.dumps([[df.copy()], {}], check_keys=False)
    assert hashed != codec.dumps([[df + 1], {}], check_keys=False)
    assert not _finals(Path(store.root))


def test_codec_with_pickle_keeps_artifacts_out_of_the_pickle(store):
    codec = Codec("pickle", artifacts=store)
    df = pd.DataFrame({"x": np.arange(100_000)})
    text = codec.dumps({"df": df, "obj": {1, 2}})
    assert len(text) < 2000
    back = codec.loads(text)
    pd.testing.assert_frame_equal(back["df"], df)
    assert back["obj"] == {1, 2}
    # What Parquet cannot hold (a column of mixed objects) is pickled: the pickle opt-in.
    mixed = pd.DataFrame({"o": [1, "a", None]})
    pd.testing.assert_frame_equal(codec.loads(codec.dumps({"m": mixed}))["m"], mixed)
    big = codec.dumps(list(range(100_000)))
    assert json.loads(big)[MARKER]["type"] == "pickle" and codec.loads(big) == list(range(100_000))
    with pytest.raises(nbjobs.SerializationError, match="stored with pickle"):
        Codec(artifacts=store).loads(big)


# ----------------------------------------------------------------- imports and locations


def test_import_nbjobs_imports_no_optional_library(tmp_path):
    probe = (
        "import sys, nbjobs, nbjobs.artifacts as a, nbjobs.codec as c\n"
        f"store = a.ArtifactStore({str(tmp_path / 'store')!r})\n"
        "codec = c.Codec(artifacts=store)\n"
        "assert codec.loads(codec.dumps({'raw': b'x' * 10})) == {'raw': b'x' * 10}\n"
        "print(' '.join(sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    loaded = {m.split(".")[0] for m in done.stdout.split()}
    assert loaded & {"pandas", "pyarrow", "polars", "numpy", "fsspec", "s3fs"} == set()
    assert "nbjobs" in loaded


def test_default_location_and_the_several_hosts_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_location(f"sqlite:///{tmp_path}/p.db") == f"{tmp_path}/p.db.artifacts"
    assert default_location("sqlite:///rel.db") == f"{tmp_path}/rel.db.artifacts"
    assert default_location(f"duckdb:///{tmp_path}/d.duckdb") == f"{tmp_path}/d.duckdb.artifacts"
    assert default_location("sqlite://") == f"{tmp_path}/nbjobs-artifacts"
    assert default_location("postgresql+psycopg://u@h/db") == f"{tmp_path}/nbjobs-artifacts"

    local = ArtifactStore(default_location("postgresql+psycopg://u@h/db"))
    assert is_private_folder(local)
    assert not is_private_folder(ArtifactStore(f"file://{tmp_path}/shared"))
    pg = "postgresql+psycopg://u@h/db"
    check_hosts(pg, True, ["a", "a"])  # one host: fine
    check_hosts("sqlite:///x.db", True, ["a", "b"])  # embedded: single-host by nature
    check_hosts(pg, False, ["a", "b"])  # a shared store
    with pytest.raises(nbjobs.ConfigurationError, match="2 hosts \\(a, b\\)"):
        check_hosts(pg, True, ["b", "a", "b"])


# ----------------------------------------------------------------- object storage (S3)


def _s3_store(endpoint: str, prefix: str) -> ArtifactStore:
    return ArtifactStore(
        f"s3://nbjobs/{prefix}", endpoint_url=endpoint, key="testing", secret="testing",
        skip_instance_cache=True,
    )  # fmt: skip


def test_s3_files_and_folders_round_trip(s3_endpoint, tmp_path):
    store = _s3_store(s3_endpoint, "files")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    ref = Reference.from_dict(encode(File(folder), store))
    copy = decode(ref, store)
    assert copy == File(folder) and (copy.path / "a.txt").read_text() == "alpha"
    assert copy.path.parent.name == ref.sha256
    single = decode(encode(File(folder / "a.txt"), store), store)
    assert single.name == "a.txt" and single.path.read_text() == "alpha"


def test_s3_round_trip_dedup_missing_and_corrupt(s3_endpoint, request):
    store = _s3_store(s3_endpoint, request.node.name)
    assert not store.local
    df = PANDAS["tz-aware"]
    ref = encode(df, store)
    assert ref[MARKER]["uri"].startswith(f"s3://nbjobs/{request.node.name}/")
    pd.testing.assert_frame_equal(decode(ref, store), df)
    assert encode(df, store) == ref
    assert _s3_store(s3_endpoint, request.node.name).fs.ls(
        store.root + "/" + ref[MARKER]["sha256"][:2]
    ) == [store.path(ref[MARKER]["sha256"], "parquet")]
    for value in (np.arange(5), b"bytes", {"big": list(range(100_000))}):
        back = decode(encode(value, store), store)
        assert np.array_equal(back, value) if isinstance(value, np.ndarray) else back == value

    raw = encode(b"hello", store)[MARKER]
    path = store.path(raw["sha256"], raw["suffix"])
    store.fs.pipe_file(path, b"jello")
    with pytest.raises(nbjobs.ArtifactError, match=r"is corrupt.*deleted"):
        decode(raw, store)
    with pytest.raises(nbjobs.ArtifactError, match="is missing") as caught:
        decode(raw, store)
    assert raw["uri"] in str(caught.value)
    assert encode(b"hello", store)[MARKER] == raw and decode(raw, store) == b"hello"
    assert not list(Path(store.cache_dir).glob("*.part"))


def _s3_writer(endpoint: str, prefix: str, seed: int) -> list[str]:
    store = _s3_store(endpoint, prefix)
    df = pd.DataFrame(np.random.default_rng(seed).random((50_000, 3)), columns=list("abc"))
    return [encode(df, store)[MARKER]["sha256"] for _ in range(3)]


def test_s3_two_processes_share_the_store(s3_endpoint):
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_s3_writer, [(s3_endpoint, "two", 5), (s3_endpoint, "two", 5)])
    [digest] = {d for r in results for d in r}
    # the other process (here: a fresh store) loads what they wrote
    store = _s3_store(s3_endpoint, "two")
    expected = pd.DataFrame(np.random.default_rng(5).random((50_000, 3)), columns=list("abc"))
    got = store_value(expected, store)
    assert got.sha256 == digest
    pd.testing.assert_frame_equal(decode(got, store), expected)


# ------------------------------------------------------------------- fingerprints


def test_a_stored_table_is_found_by_its_fingerprint_and_not_encoded_again(store):
    table = pa.table({"x": np.arange(200_000), "y": np.arange(200_000) * 0.5})
    sha, size = store.write_arrow(table, "parquet", write_parquet)
    [entry] = Path(store.root, FINGERPRINTS).glob("*/*.json")
    assert json.loads(entry.read_text()) == {"sha256": sha, "size": size, "suffix": "parquet"}

    calls = {"started": 0, "finished": 0}

    def slow_dump(t, f):  # a Parquet write slow enough to be overtaken by the fingerprint
        calls["started"] += 1
        for _ in range(500):
            f.write(b"\0" * 65536)
            time.sleep(0.01)
        calls["finished"] += 1

    # Seen before (its quick print is known): hashed alone, the write never starts.
    assert store.write_arrow(table.select(["x", "y"]), "parquet", slow_dump) == (sha, size)
    assert calls == {"started": 0, "finished": 0}
    assert not _temporary(Path(store.root))

    # The same ends but another middle: the quick print matches, the fingerprint does
    # not, so it is written (and stored under its own digest).
    y = np.arange(200_000) * 0.5
    y[100_000] = -1.0
    other = pa.table({"x": np.arange(200_000), "y": y})
    other_sha, _ = store.write_arrow(other, "parquet", write_parquet)
    assert other_sha != sha
    assert pq.read_table(store.path(other_sha, "parquet")).equals(other)

    # A table never seen: the write starts at once and stops when the fingerprint of a
    # stored table matches (here: the quick print marker is gone, the entry is not).
    for marker in Path(store.root, FINGERPRINTS, "quick").glob("*/*"):
        marker.unlink()
    assert store.write_arrow(table, "parquet", slow_dump) == (sha, size)
    assert calls == {"started": 1, "finished": 0}  # stopped once the fingerprint matched
    assert not _temporary(Path(store.root))


def test_a_stale_or_broken_fingerprint_entry_is_ignored(store):
    df = pd.DataFrame({"x": np.arange(1000)})
    ref = encode(df, store)[MARKER]
    [entry] = Path(store.root, FINGERPRINTS).glob("*/*.json")
    Path(ref["uri"]).chmod(0o644)
    os.unlink(ref["uri"])  # the artifact went away (a sweep, a disk error)
    assert encode(df, store)[MARKER] == ref
    pd.testing.assert_frame_equal(decode(ref, store), df)
    entry.write_text("{not json")
    assert encode(df, store)[MARKER] == ref
    assert json.loads(entry.read_text())["sha256"] == ref["sha256"]  # written anew


def test_a_local_store_makes_no_folder_until_used_and_takes_no_options(tmp_path):
    store = ArtifactStore(f"file://{tmp_path}/later")
    assert store.local and store.root == f"{tmp_path}/later"
    assert not (tmp_path / "later").exists()
    with pytest.raises(nbjobs.ConfigurationError, match="for object storage"):
        ArtifactStore(tmp_path / "x", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(nbjobs.ConfigurationError, match="not ''"):
        ArtifactStore("")


# -- seeing artifacts without loading them: references in rows, bounded previews ---------


def _read_chars() -> int:
    """Bytes this process has read through system calls so far (Linux)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def test_a_preview_reads_the_first_rows_not_the_frame(store):
    from nbjobs.artifacts.artifact import head, preview_html

    rows = 3_000_000
    frame = pd.DataFrame({f"c{i}": np.random.default_rng(i).random(rows) for i in range(4)})
    ref = store_value(frame, store)
    size = os.path.getsize(ref.uri)
    before = _read_chars()
    first = head(ref, store, 5)
    read = _read_chars() - before
    assert read < size / 10, (read, size)  # a data page per column, not the row group
    assert first.shape == (5, 4)
    np.testing.assert_array_equal(first.to_numpy(), frame.head(5).to_numpy())
    page = preview_html(ref, store)
    assert f"first 5 of {rows:,} rows" in page and page.count("<tr>") == 6  # names + 5
    assert "float64" in page and f"{frame['c0'].iloc[0]}"[:10] in page
    array = np.arange(40, dtype="float32").reshape(10, 4)
    arr = store_value(array, store)
    np.testing.assert_array_equal(head(arr, store, 3), array[:3])


def test_a_preview_escapes_names_and_values_is_kept_and_reports_a_missing_file(store):
    from nbjobs.artifacts.artifact import preview_html

    hostile = "<img src=x onerror=alert(1)>"
    ref = store_value(pd.DataFrame({hostile: [hostile, "ok"]}), store)
    page = preview_html(ref, store)
    assert "<img" not in page and html.escape(hostile) in page
    raw = store_value(hostile.encode() * 100, store)
    assert "<img" not in preview_html(raw, store)
    # An artifact never changes: a second preview is the first, not read again.
    Path(ref.uri).unlink()
    assert preview_html(ref, store) == page
    gone = store_value(pd.DataFrame({"a": [1]}), store)
    Path(gone.uri).unlink()
    assert "no preview: FileNotFoundError" in preview_html(gone, store)


class _Boom:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_references_are_found_in_json_and_pickle_text_without_running_code(store, tmp_path):
    """Listing reads rows others may have written: a pickle's code never runs."""
    from nbjobs.artifacts.reference import find_references

    ref = store_value(np.arange(3), store)
    text = json.dumps({"a": [1, {MARKER: ref.to_dict()}], "b": {MARKER: {"type": "x"}}})
    assert find_references(text) == [("['a'][1]", ref)]  # the malformed one is skipped
    assert find_references("not json " + MARKER) == []
    assert find_references('{"plain": 1}') == [] and find_references(None) == []
    codec = Codec("pickle", artifacts=store)
    pwned = tmp_path / "pwned"
    pickled = codec.dumps({"boom": _Boom(pwned), "frames": (np.arange(3), b"raw" * 10)})
    assert pickled.startswith("pickle:") and MARKER not in pickled
    found = find_references(pickled)
    assert [(w, r.type) for w, r in found] == [("['frames'][0]", "numpy.ndarray"),
                                               ("['frames'][1]", "bytes")]  # fmt: skip
    assert not pwned.exists()
    codec.loads(pickled)  # what loading would do (the check above can fail)
    assert pwned.exists()


def test_listing_references_walks_a_shared_or_cyclic_pickle_once():
    """A row written by someone else: 60 levels of a list holding the level below twice
    (2**60 paths) and a list that holds itself are listed at once, not for ever."""
    import base64
    import pickle

    from nbjobs.artifacts.reference import find_references

    deep: list = []
    for _ in range(60):
        deep = [deep, deep]
    cycle: list = []
    cycle.append(cycle)
    text = "pickle:" + base64.b64encode(pickle.dumps([deep, cycle, MARKER])).decode()
    started = time.monotonic()
    assert find_references(text) == []
    assert time.monotonic() - started < 5
