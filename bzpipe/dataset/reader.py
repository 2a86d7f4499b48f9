"""Read a dataset Zarr back: the one place that opens one and decodes its root attributes.

:func:`open_dataset` takes a dataset version in a store (``v1`` -> ``datasets/v1.zarr``, refused
unless complete, i.e. with a manifest entry) or the full path / ``s3://`` URI of a ``.zarr``, and
returns a :class:`DatasetZarr`: its address, root group, and root attributes with the JSON ones
(``normalization``, ``config``, ``provenance``, ...) decoded.  The torch patch dataset, the
evaluation, training and inference all read datasets through it; :func:`sample_selection` says, from
the recorded build config, how its patches were chosen.  Layout: "Zarr dataset" in
:mod:`bzpipe.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zarr

from bzpipe.errors import StoreError
from bzpipe.store import Store, s3_storage_options
from bzpipe.store.layout import dataset_key, is_dataset_version
from bzpipe.store.replace import replacement_pending

if TYPE_CHECKING:
    import xarray as xr


class IncompleteDatasetError(StoreError):
    """The dataset has no manifest entry (never built, or its build was interrupted)."""


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Root attributes with every JSON string decoded (other values as they are)."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


@dataclass
class DatasetZarr:
    """An opened dataset Zarr: where it is, its root group, and its decoded root attributes."""

    uri: str
    storage_options: dict[str, Any]
    root: zarr.Group
    attrs: dict[str, Any]

    @property
    def splits(self) -> list[str]:
        """The splits (groups) it holds, sorted."""
        return sorted(self.root.group_keys())

    def group(self, split: str) -> zarr.Group:
        """The Zarr group of ``split``; a StoreError naming the groups there are when it is absent."""
        if split not in set(self.root.group_keys()):
            raise StoreError(f"{self.uri}: no split {split!r} (groups: {self.splits})")
        return self.root[split]

    def open_split(self, split: str) -> xr.Dataset:
        """``split`` as a lazy xarray Dataset whose ``attrs`` also hold the decoded root attributes."""
        import xarray as xr

        self.group(split)
        ds = xr.open_zarr(self.uri, group=split, storage_options=self.storage_options or None,
                          consolidated=False)
        ds.attrs = {**ds.attrs, **self.attrs}
        return ds


def _incomplete(store: Store, key: str, version: str) -> IncompleteDatasetError:
    state = ("being replaced (a build was killed while swapping in the new version)"
             if replacement_pending(store, key) else
             "half-written (an interrupted build?)" if store.exists(key) else "missing")
    return IncompleteDatasetError(
        f"{store.uri(key)}: dataset {version!r} is missing or incomplete, {state}: it has no manifest entry, "
        "so it is not complete; run the build again (it resumes) before reading it")


def open_dataset(store: Store | str | None, version_or_uri: str, *,
                 require_complete: bool = True) -> DatasetZarr:
    """Open a dataset: a version in ``store`` (a :class:`Store` or its root), or a ``.zarr`` path / URI.

    A version must be complete in the store's manifest (else :class:`IncompleteDatasetError`)
    unless ``require_complete`` is False; a path or URI is opened as it is (``store`` may be None).
    """
    if is_dataset_version(version_or_uri):
        if store is None:
            raise StoreError(f"dataset version {version_or_uri!r} needs a store to find it in")
        store = store if isinstance(store, Store) else Store(store)
        key = dataset_key(version_or_uri)
        if require_complete and not store.is_complete(key):
            raise _incomplete(store, key, version_or_uri)
        uri, opts = store.uri(key), dict(store.storage_options)
    else:
        uri = str(version_or_uri)
        opts = s3_storage_options() if uri.startswith("s3://") else {}
    try:
        root = (zarr.open_group(uri, mode="r", storage_options=opts) if opts
                else zarr.open_group(uri, mode="r"))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:  # type: ignore[attr-defined]
        raise StoreError(f"{uri}: no Zarr dataset here ({e})") from e
    return DatasetZarr(uri=uri, storage_options=opts, root=root, attrs=decode_attrs(root.attrs))


def build_values(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The build config values a dataset records in its (decoded) root attributes ({} if absent)."""
    rec = attrs.get("config")
    return rec.get("values", {}) if isinstance(rec, dict) else {}


def sample_selection(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """How the dataset's patches were chosen (:func:`_filter_rule`) and where its test split came from
    (``split_rule``: :func:`split_rule`)."""
    return {**_filter_rule(attrs), "split_rule": split_rule(attrs)}


def _filter_rule(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """How the dataset's patches were chosen: King et al.'s echo-block filter from the recorded build
    config, and the splits it applied to as the build's plan recorded them (``provenance.counts``;
    datasets built before the plan recorded them filtered every split)."""
    patch = build_values(attrs).get("patch")
    if not isinstance(patch, dict):
        return {"rule": "not recorded in the dataset"}
    block = int(patch.get("echo_block", 0) or 0)
    min_frac = float(patch.get("min_echo_fraction", 0.0) or 0.0)
    counts = (attrs.get("provenance") or {}).get("counts") or {}
    splits = list(counts.get("filtered_splits", ["train", "val", "test"]))
    if block <= 0 and min_frac <= 0:
        return {"echo_block": 0, "min_echo_fraction": 0.0, "filtered_splits": [],
                "rule": "every window kept (no sample filter)"}
    what = [f"an echo block of {block} x {block} pixels in the observed rows above the blind zone"] \
        if block > 0 else []
    what += [f"echo in at least {min_frac:g} of those rows"] if min_frac > 0 else []
    return {"echo_block": block, "min_echo_fraction": min_frac, "filtered_splits": splits,
            "rule": f"{'/'.join(splits)} patches kept only with {' and '.join(what)}"
                    + ("; training on every window" if "train" not in splits else "")}


def split_rule(attrs: Mapping[str, Any]) -> str:
    """Where the test split came from, in words, from the recorded build config: a held-out period
    (``split.test_from``) or blocks drawn among the others by the split fractions."""
    sp = build_values(attrs).get("split")
    if not isinstance(sp, dict):
        return "not recorded in the dataset"
    f = [float(x) for x in sp.get("fractions", ())]
    shares = "/".join(f"{x:g}" for x in f)
    if sp.get("test_from"):
        return (f"test: every split block from {sp['test_from']} on (a held-out period); train/val: "
                f"{shares[:shares.rfind('/')]} of the blocks before it")
    return f"train/val/test: {shares} of the split blocks, drawn among them"
