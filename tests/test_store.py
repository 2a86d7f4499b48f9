import errno
import json
import os

import pytest

from bzpipe.checksums import sha256_bytes
from bzpipe.errors import StoreError
from bzpipe.store import Store
from bzpipe.store.layout import manifest_key, raw_key


def test_local_layout_atomic_write_and_manifest(store_root):
    s = Store(store_root)
    key = raw_key("kazr", "nsaarsclkazr1kolliasC1.c0.20190101.000000.nc", site="nsa")
    assert key == "raw/kazr/nsa/nsaarsclkazr1kolliasC1.c0.20190101.000000.nc"
    e = s.write_bytes(key, b"abc", producer={"source": "test"})
    assert e.sha256 == sha256_bytes(b"abc") and e.size == 3
    assert s.is_complete(key) and s.is_complete(key, sha256=e.sha256)
    assert not s.is_complete(key, sha256="0" * 64)
    assert s.verify(key)
    assert s.manifest("raw/kazr")[key].producer == {"source": "test"}
    assert s.list("raw") == [key]
    assert s.uri(key) == os.path.join(str(store_root.resolve()), key)
    assert s.key_of(s.uri(key)) == key


def test_failed_write_leaves_previous_version(store_root, monkeypatch):
    s = Store(store_root)
    s.write_bytes("models/run/a.bin", b"old")

    def boom(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="no space left"):
        s.write_bytes("models/run/a.bin", b"new")
    monkeypatch.undo()
    assert s.read_bytes("models/run/a.bin") == b"old"
    assert s.verify("models/run/a.bin")
    # no temporary files left behind
    assert sorted(p.name for p in (store_root / "models" / "run").iterdir()) == ["a.bin"]


def test_atomic_local_file_block_that_raises_changes_nothing(store_root):
    s = Store(store_root)
    with pytest.raises(RuntimeError):
        with s.atomic_local_file("outputs/x.nc") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert not s.exists("outputs/x.nc") and s.entry("outputs/x.nc") is None
    with s.atomic_local_file("outputs/x.nc") as tmp:
        tmp.write_bytes(b"whole")
    assert s.read_bytes("outputs/x.nc") == b"whole" and s.is_complete("outputs/x.nc")


def test_readonly_filesystem_error_is_clear(store_root, monkeypatch):
    s = Store(store_root)
    import pathlib

    def deny(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", deny)
    with pytest.raises(StoreError, match="permission denied; nothing was changed"):
        s.write_bytes("raw/f.bin", b"x")
    monkeypatch.undo()
    assert not s.exists("raw/f.bin")


def test_keys_are_sanitized(store_root):
    s = Store(store_root)
    with pytest.raises(StoreError, match=r"'\.\.'"):
        s.uri("raw/../../etc/passwd")
    with pytest.raises(StoreError, match="unsupported store root"):
        Store("gs://bucket/x")


def test_s3_root_same_api(s3_root, tmp_path):
    s = Store(s3_root)
    assert s.uri("datasets/v1.zarr") == f"{s3_root}/datasets/v1.zarr"
    s.write_json("reports/run/scores.json", {"mae": 1.5}, producer={"x": 1})
    assert s.read_json("reports/run/scores.json") == {"mae": 1.5}
    assert s.is_complete("reports/run/scores.json") and s.verify("reports/run/scores.json")
    local = tmp_path / "f.nc"
    local.write_bytes(b"netcdf-bytes")
    s.put_file(local, "raw/era5/nsa/era5_nsa_201901.nc")
    with s.local_path("raw/era5/nsa/era5_nsa_201901.nc") as p:
        assert p.read_bytes() == b"netcdf-bytes"
    assert s.list("raw") == ["raw/era5/nsa/era5_nsa_201901.nc"]
    assert "raw/era5/nsa/era5_nsa_201901.nc" in s.manifest()
    entry = json.loads(s.read_bytes(manifest_key("raw/era5/nsa/era5_nsa_201901.nc")))
    assert entry["size"] == len(b"netcdf-bytes")
    s.remove("raw/era5/nsa/era5_nsa_201901.nc")
    assert not s.exists("raw/era5/nsa/era5_nsa_201901.nc") and s.entry("raw/era5/nsa/era5_nsa_201901.nc") is None


@pytest.mark.parametrize("where", ["local", "s3"])
def test_replace_swaps_a_folder_in_and_keeps_the_old_until_then(where, store_root, request):
    from bzpipe.store.layout import aside_key
    from bzpipe.store.replace import finish_replacement, replace, replacement_pending

    s = Store(store_root if where == "local" else request.getfixturevalue("s3_root"))
    key = "outputs/x.zarr"

    def folder(k, text):
        s.write_bytes(f"{k}/a.txt", text.encode(), manifest=False)
        s.write_bytes(f"{k}/sub/b.txt", text.encode(), manifest=False)

    for version in ("one", "two"):
        aside = aside_key(key)
        folder(aside, version)
        assert s.list("outputs") == (["outputs/x.zarr/a.txt", "outputs/x.zarr/sub/b.txt"] if version == "two"
                                     else [])                      # the aside copy is never listed
        e = replace(s, aside, key, sha256=version * 4, size=6)
        assert e.sha256 == version * 4 and s.is_complete(key) and not replacement_pending(s, key)
        assert s.read_bytes(f"{key}/sub/b.txt") == version.encode() and not s.exists(aside)
    assert s.list("outputs") == ["outputs/x.zarr/a.txt", "outputs/x.zarr/sub/b.txt"]
    assert finish_replacement(s, key) is None and not s.list("state")
