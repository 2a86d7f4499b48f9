"""Provenance: code version, checksums, and the record every output carries."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from bzpipe import __version__
from bzpipe.config import config_record

_CHUNK = 1 << 20


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


def sha256_stream(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(_CHUNK), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Checksum of a JSON-able object in canonical form (sorted keys)."""
    import json

    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def provenance_record(config: BaseModel | None = None, inputs: dict[str, str] | None = None,
                      **extra: Any) -> dict[str, Any]:
    """What made an output: its config, the checksums of its inputs, the code version."""
    rec: dict[str, Any] = {
        "code_version": code_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": dict(sorted((inputs or {}).items())),
    }
    if config is not None:
        rec["config"] = config_record(config)
    rec.update(extra)
    return rec
