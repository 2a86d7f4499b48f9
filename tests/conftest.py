"""Shared fixtures: the real sample files, a fresh store, the Prefect test server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("BZPIPE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


SHARED_DATA = _shared_data_dir()


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
