"""Shared fixtures: the real sample files, a fresh store, the Prefect test server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # before eccodes (via cfgrib), else the interpreter crashes on exit; absent: no clash
    import pyproj  # noqa: F401
except ImportError:  # pragma: no cover - pyproj is no dependency of bzpipe
    pass

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# library functions called outside a flow run log normally, without a warning per line
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("BZPIPE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data_dir()


#: the files with the longest running times (seconds on the 2-core VM: e2e stack ~230, reliability
#: ~110, reprocess flow ~100), collected first
LONGEST_FIRST = ("test_e2e_stack.py", "test_reliability.py", "test_reprocess_flow.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the longest test files first.  pytest-xdist hands whole files to its workers in
    collection order (pyproject addopts), so starting the longest ones first keeps the workers'
    finishing times together; within a file the order is unchanged."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or ``$BZPIPE_SHARED_DATA``)."""
    if not (SHARED_DATA / "PROVENANCE.md").exists():
        pytest.skip(f"real sample data not found at {SHARED_DATA} "
                    "(set BZPIPE_SHARED_DATA or put the shared/ folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (SQLite, temporary) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Moto's S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_root(s3_server, monkeypatch, request) -> str:
    """A fresh ``s3://bucket/prefix`` store root on the moto server (env points s3fs at it)."""
    import re
    import uuid

    import boto3

    for k, v in {"AWS_ENDPOINT_URL_S3": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    bucket = "bz-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{bucket}/bzpipe"
