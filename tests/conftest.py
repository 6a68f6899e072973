"""Shared fixtures: one ``app`` fixture parametrized over every database backend.

``NBJOBS_TEST_BACKENDS`` (comma-separated) narrows the backends for a local run; CI runs
them all, and a backend whose server cannot be reached there is a failure, not a skip.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbjobs
from tests import backends

ALL_BACKENDS = ("sqlite", "postgres", "mysql", "duckdb")
BACKENDS = [
    b.strip()
    for b in os.environ.get("NBJOBS_TEST_BACKENDS", ",".join(backends.AVAILABLE)).split(",")
    if b.strip()
]

# Timings that keep tests quick: a lost worker is noticed within about a second.
FAST = dict(
    heartbeat_seconds=0.2,
    stale_after_seconds=1.0,
    poll_seconds=0.05,
    retry_backoff_seconds=0.01,
    retry_backoff_max_seconds=0.05,
)


def make_app(url: str, **options) -> nbjobs.App:
    return nbjobs.App(url, **{**FAST, **options})


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path) -> Iterator[str]:
    """A fresh, empty database of the backend under test."""
    with backends.fresh_database(backend, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'nbjobs.db'}"


@pytest.fixture
def app(db_url: str) -> Iterator[nbjobs.App]:
    """An App on a fresh database of each backend, stopped and closed afterwards."""
    application = make_app(db_url)
    yield application
    application.close()


@pytest.fixture
def sqlite_app(sqlite_url: str) -> Iterator[nbjobs.App]:
    application = make_app(sqlite_url)
    yield application
    application.close()


#: nbjobs' warning, shown in the notebook cell, that no live worker will run a submitted job.
NO_WORKER = r"^job \S+ of workflow .* waits in queue "


@pytest.fixture(autouse=True)
def _artifacts_in_tmp_path(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's apps (and the worker processes it starts) keep artifacts in its own
    folder: a server database's default, ``./nbjobs-artifacts``, would be shared by all
    tests in the working directory.  Tests of the default location unset it."""
    monkeypatch.setenv("NBJOBS_ARTIFACTS", str(tmp_path / "artifacts"))


@pytest.fixture(autouse=True)
def _no_worker_warning(request: pytest.FixtureRequest) -> Iterator[None]:
    """``@pytest.mark.no_worker``: the test submits jobs that no live worker runs (yet), on
    purpose, so nbjobs warns (once per workflow and queue); the warning is expected, and
    missing it fails the test.  ``no_worker(strict=False)``: it may not come (a worker
    elsewhere may be up already, a generated name may be refused before the submit).
    Any other warning still fails the test (``filterwarnings = error``)."""
    marker = request.node.get_closest_marker("no_worker")
    if marker is None:
        yield
    elif marker.kwargs.get("strict", True):
        with pytest.warns(UserWarning, match=NO_WORKER):
            yield
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", NO_WORKER, UserWarning)
            yield


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 with the bucket
    ``nbjobs``; its endpoint URL.  Keys: ``testing`` / ``testing``."""
    from tests.support import accepts, free_port, server_process  # support imports this

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = Path(sys.executable).with_name("moto_server")
    with server_process([str(moto), "-H", "127.0.0.1", "-p", str(port)], log, accepts(port)):
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="nbjobs")
        yield endpoint


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first (a fresh virtual environment, Chromium, fleets of
    worker processes, a five-million-row frame): under pytest-xdist each starts at once
    beside the quick ones, instead of one being the last test running while the other
    processes sit idle.  The sort is stable: the rest keep their order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
