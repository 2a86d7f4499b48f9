"""One way to address raw files, datasets, models and outputs under a root.

The root is a local folder or ``s3://bucket/prefix`` (s3fs; the endpoint comes
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` so MinIO / moto work).

The layout under the root (every key, ``/``-separated) is :mod:`bzpipe.store.layout`.

Writes are atomic: a file is written under a temporary name in the same
folder and renamed (local), or uploaded in one PUT (S3, where an object only
appears once complete).  A Zarr store is a folder of many objects, so it is
complete only once its manifest entry exists (:meth:`Store.is_complete`); a
new version of one is written aside and swapped in
(:func:`bzpipe.store.replace.replace`), so the old version stays complete
until the new one is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec

from bzpipe.checksums import sha256_bytes, sha256_file
from bzpipe.errors import StoreError, is_credentials_error
from bzpipe.store.layout import MANIFEST_PREFIX, clean_key, is_temp, manifest_key


def s3_storage_options() -> dict[str, Any]:
    """s3fs options, honouring ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict[str, Any] = {}
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def url_fs(uri: str) -> tuple[Any, str]:
    """``(filesystem, path)`` of a local path, ``file://`` or ``s3://`` URI (S3 with the endpoint options)."""
    uri = str(uri).removeprefix("file://")
    return fsspec.core.url_to_fs(uri, **(s3_storage_options() if uri.startswith("s3://") else {}))


def file_version(uri: str) -> str:
    """What changes whenever a file's content does, without reading it: ``<size>:<mtime>`` locally,
    ``<size>:<ETag>`` on S3 (a content hash).  Raises ``FileNotFoundError`` when it is absent."""
    fs, path = url_fs(uri)
    info = fs.info(path)
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    if isinstance(tag, float):
        tag = repr(tag)
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


@dataclass
class ManifestEntry:
    """What the manifest knows of one object: checksum, size, and what made it."""

    key: str
    sha256: str
    size: int
    created: str
    producer: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size,
                "created": self.created, "producer": self.producer}


class Store:
    """A local or S3 root with atomic writes and a checksum manifest."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = str(root)
        if root.startswith("s3://"):
            self.protocol = "s3"
            self.root = root.rstrip("/")
            self.storage_options = s3_storage_options()
            self.fs = fsspec.filesystem("s3", **self.storage_options)
        elif "://" in root and not root.startswith("file://"):
            raise StoreError(f"unsupported store root {root!r}: use a local folder or s3://bucket/prefix")
        else:
            self.protocol = "file"
            self.root = str(Path(root.removeprefix("file://")).expanduser().resolve())
            self.storage_options = {}
            self.fs = fsspec.filesystem("file")

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ------------------------------------------------------------------ addressing
    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def _fs_root(self) -> str:
        """The root as the filesystem lists paths (no ``s3://``)."""
        return self.root if self.is_local else self.root.removeprefix("s3://")

    def uri(self, key: str) -> str:
        """Full address of ``key`` (a local path, or ``s3://...``)."""
        key = clean_key(key)
        return self.root if not key else f"{self.root}/{key}"

    def key_of(self, uri: str) -> str:
        """The key of a full address under this root (inverse of :meth:`uri`)."""
        uri = str(uri).removeprefix("file://")
        if uri.startswith(self.root + "/"):
            return uri[len(self.root) + 1:]
        if uri == self.root:
            return ""
        raise StoreError(f"{uri} is not under the store root {self.root}")

    # ------------------------------------------------------------------ reading
    def exists(self, key: str) -> bool:
        with self._access(key):
            return bool(self.fs.exists(self.uri(key)))

    def read_bytes(self, key: str) -> bytes:
        with self._access(key):
            try:
                return self.fs.cat_file(self.uri(key))
            except FileNotFoundError:
                raise
            except OSError as e:
                raise StoreError(f"{self.uri(key)}: cannot read ({e})") from e

    @contextlib.contextmanager
    def _access(self, key: str) -> Iterator[None]:
        """Missing or refused S3 credentials become a StoreError naming the address (never retried)."""
        try:
            yield
        except Exception as e:
            if is_credentials_error(e):
                raise StoreError(f"{self.uri(key)}: cannot access the store ({type(e).__name__}: {e}); "
                                 "set AWS credentials for it") from e
            raise

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def list(self, prefix: str = "", suffix: str = "") -> list[str]:
        """Keys of the files under ``prefix`` (recursive), sorted."""
        base = self.uri(prefix)
        if not self.exists(prefix):
            return []
        found = self.fs.find(base)
        root = self._fs_root
        keys = []
        for p in found:
            p = str(p)
            if p.startswith(root + "/"):
                k = p[len(root) + 1:]
                if not is_temp(k) and k.endswith(suffix):
                    keys.append(k)
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate children of ``prefix`` (files and folders), as keys."""
        base = self.uri(prefix)
        if not self.fs.exists(base):
            return []
        root = self._fs_root
        out = []
        for p in self.fs.ls(base, detail=False):
            p = str(p).rstrip("/")
            if p.startswith(root + "/") and not is_temp(p):
                out.append(p[len(root) + 1:])
        return sorted(out)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file holding the object: itself when local, else a temporary download.

        Needed for readers that only take local paths (pyhdf, netCDF4).
        """
        if self.is_local:
            yield Path(self.uri(key))
            return
        suffix = posixpath.splitext(key)[1]
        with tempfile.TemporaryDirectory(prefix="bzpipe-") as d:
            local = Path(d) / f"object{suffix}"
            try:
                self.fs.get_file(self.uri(key), str(local))
            except OSError as e:
                raise StoreError(f"{self.uri(key)}: cannot download ({e})") from e
            yield local

    # ------------------------------------------------------------------ atomic writes
    def write_bytes(self, key: str, data: bytes, *, producer: dict[str, Any] | None = None,
                    manifest: bool = True) -> ManifestEntry | None:
        """Write ``data`` to ``key`` atomically; record it in the manifest."""
        target = self.uri(key)
        try:
            with self._access(key):
                if self.is_local:
                    self._local_atomic(target, lambda tmp: Path(tmp).write_bytes(data))
                else:
                    self.fs.pipe_file(target, data)
        except OSError as e:
            raise write_error(target, e) from e
        if not manifest:
            return None
        return self.record(key, sha256=sha256_bytes(data), size=len(data), producer=producer)

    def write_json(self, key: str, obj: Any, **kw: Any) -> ManifestEntry | None:
        return self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), **kw)

    def put_file(self, local: str | os.PathLike[str], key: str, *,
                 producer: dict[str, Any] | None = None, sha256: str | None = None) -> ManifestEntry:
        """Copy a finished local file into the store atomically and record it."""
        local = Path(local)
        digest = sha256 or sha256_file(local)
        size = local.stat().st_size
        target = self.uri(key)
        try:
            with self._access(key):
                if self.is_local:
                    if Path(target) != local.resolve():
                        self._local_atomic(target, lambda tmp: shutil.copyfile(local, tmp))
                else:
                    self.fs.put_file(str(local), target)
        except OSError as e:
            raise write_error(target, e) from e
        return self.record(key, sha256=digest, size=size, producer=producer)

    @contextlib.contextmanager
    def atomic_local_file(self, key: str, *, producer: dict[str, Any] | None = None,
                          suffix: str = "") -> Iterator[Path]:
        """Yield a temporary local path; when the block ends cleanly, move it to ``key``.

        If the block raises, nothing at ``key`` changes and the temporary is removed.
        """
        with tempfile.TemporaryDirectory(prefix="bzpipe-w-", dir=self._tmp_parent(key)) as d:
            tmp = Path(d) / (posixpath.basename(key) + suffix)
            yield tmp
            if not tmp.exists():
                raise StoreError(f"{self.uri(key)}: writer produced no file")
            self.put_file(tmp, key, producer=producer)

    def _tmp_parent(self, key: str) -> str | None:
        if not self.is_local:
            return None
        parent = Path(self.uri(key)).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(str(parent), e) from e
        return str(parent)

    def _local_atomic(self, target: str, write) -> None:  # type: ignore[no-untyped-def]
        parent = Path(target).parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{Path(target).name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # ------------------------------------------------------------------ manifest
    def record(self, key: str, *, sha256: str, size: int,
               producer: dict[str, Any] | None = None) -> ManifestEntry:
        """Write the manifest entry of ``key`` (after the object itself is complete)."""
        entry = ManifestEntry(key=clean_key(key), sha256=sha256, size=size,
                              created=datetime.now(UTC).isoformat(timespec="seconds"),
                              producer=producer or {})
        self.write_json(manifest_key(key), entry.to_json(), manifest=False)
        return entry

    def entry(self, key: str) -> ManifestEntry | None:
        """The manifest entry of ``key``, or None if it was never completed."""
        try:
            d = self.read_json(manifest_key(key))
        except FileNotFoundError:
            return None
        return ManifestEntry(**d)

    def is_complete(self, key: str, sha256: str | None = None) -> bool:
        """True if ``key`` exists and has a manifest entry (matching ``sha256`` if given)."""
        e = self.entry(key)
        if e is None or not self.exists(key):
            return False
        return sha256 is None or e.sha256 == sha256

    def verify(self, key: str) -> bool:
        """Re-checksum a file object against its manifest entry."""
        e = self.entry(key)
        if e is None or not self.exists(key):
            return False
        return sha256_bytes(self.read_bytes(key)) == e.sha256

    def manifest(self, prefix: str = "") -> dict[str, ManifestEntry]:
        """All manifest entries whose key starts with ``prefix``."""
        out = {}
        for mk in self.list(f"{MANIFEST_PREFIX}/{prefix}".rstrip("/"), suffix=".json"):
            d = self.read_json(mk)
            out[d["key"]] = ManifestEntry(**d)
        return out

    def remove(self, key: str) -> None:
        """Remove an object or folder and its manifest entry (entry first)."""
        for k in (manifest_key(key), key):
            with contextlib.suppress(FileNotFoundError):
                if self.fs.exists(self.uri(k)):
                    self.fs.rm(self.uri(k), recursive=True)


def write_error(target: str, e: OSError, after: str = "nothing was changed at this key") -> StoreError:
    """A failed write as a StoreError naming ``target``, the reason (full disk, permission, ...) and
    what the failure left (``after``)."""
    if e.errno == errno.ENOSPC:
        why = "no space left on the device"
    elif isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied"
    else:
        why = str(e)
    return StoreError(f"{target}: write failed: {why}; {after}")
