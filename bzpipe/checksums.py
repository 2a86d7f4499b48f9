"""SHA-256 checksums of files, bytes and JSON-able values (what the manifest and the recipes use)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


def sha256_stream(f: IO[bytes]) -> str:
    """Checksum of everything left in a binary stream, read in 1 MiB blocks."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(_CHUNK), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Checksum of a local file."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    """Checksum of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Checksum of a JSON-able object in canonical form (sorted keys)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())
