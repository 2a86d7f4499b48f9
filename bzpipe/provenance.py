"""Provenance: the code version, and the record every output carries (checksums: :mod:`bzpipe.checksums`)."""

from __future__ import annotations

import functools
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bzpipe import __version__
from bzpipe.config import config_record


@functools.cache
def code_version() -> str:
    """``<package version>+g<commit>[.dirty]`` when run from a git checkout, else the version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here,
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def provenance_record(config: BaseModel | None = None, inputs: dict[str, str] | None = None,
                      **extra: Any) -> dict[str, Any]:
    """What made an output: its config, the checksums of its inputs, the code version."""
    rec: dict[str, Any] = {
        "code_version": code_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": dict(sorted((inputs or {}).items())),
    }
    if config is not None:
        rec["config"] = config_record(config)
    rec.update(extra)
    return rec
