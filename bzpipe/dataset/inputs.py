"""Stage 1-2 of the dataset build: find the raw inputs, colocate each site-day.

:func:`colocate_day` runs as one dask task per site and day: it reads the raw
files from the store (radar, met, ERA-5), puts them on the grid
(:mod:`bzpipe.colocate`) and writes ``work/colocated/<site>/<YYYY-MM-DD>.zarr``,
recorded complete in the store manifest only once fully written; a re-run with
the same inputs, settings and code skips it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bzpipe.checksums import sha256_file, sha256_json
from bzpipe.cluster import current_client
from bzpipe.colocate import colocate
from bzpipe.config import BuildConfig, Site, resolve_site
from bzpipe.errors import InputFileError
from bzpipe.provenance import code_version
from bzpipe.store import Store, write_error
from bzpipe.store.layout import colocated_key, era5_key, raw_prefix

log = logging.getLogger("bzpipe.dataset")

_ARM_NAME = re.compile(r"\.(\d{8})\.(\d{6})\.[A-Za-z0-9]+$")
#: config fields that do not change the dataset's content (excluded from the recipe id); the store
#: root is one of them: a store moved elsewhere holds the same recipe
_RUNTIME_FIELDS = ("store_root", "dask_address", "n_workers", "threads_per_worker", "dask_processes",
                   "overwrite", "max_in_flight")


# --------------------------------------------------------------------------- inputs


@dataclass
class DayInputs:
    """Raw files (store keys) for one site and day."""

    site: str
    day: date
    kazr: list[str] = field(default_factory=list)
    met: list[str] = field(default_factory=list)
    era5: list[str] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [*self.kazr, *self.met, *self.era5]

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "day": self.day.isoformat(), "kazr": self.kazr, "met": self.met,
                "era5": self.era5}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DayInputs:
        return cls(site=d["site"], day=date.fromisoformat(d["day"]), kazr=list(d["kazr"]),
                   met=list(d["met"]), era5=list(d["era5"]))


def _arm_day(key: str) -> date | None:
    m = _ARM_NAME.search(key)
    return date(int(m.group(1)[:4]), int(m.group(1)[4:6]), int(m.group(1)[6:])) if m else None


def find_inputs(store: Store, config: BuildConfig) -> list[DayInputs]:
    """The raw files of every configured site and day that has radar data (days without are logged).

    Radar and met files are matched to days by the date in their ARM names
    (``<datastream>.<YYYYMMDD>.<hhmmss>.<ext>``); ERA-5 by month, including the
    months of the previous and next day (for the time interpolation at the
    day's ends).  A file ``era5_<site>_<YYYYMM>.nc`` may hold ERA-5 pressure
    levels (either CDS layout) or an IFS model-level column.
    """
    out = []
    for site in config.site_objects():
        kazr = store.list(raw_prefix("kazr", site.name))
        met = store.list(raw_prefix("met", site.name))
        by_day_k: dict[date, list[str]] = {}
        by_day_m: dict[date, list[str]] = {}
        for k in kazr:
            d = _arm_day(k)
            if d is not None:
                by_day_k.setdefault(d, []).append(k)
        for k in met:
            d = _arm_day(k)
            if d is not None:
                by_day_m.setdefault(d, []).append(k)
        era5 = set(store.list(raw_prefix("era5", site.name)))
        missing = []
        for day in config.days():
            if day not in by_day_k:
                missing.append(day)
                continue
            months = {(day - timedelta(days=1)).strftime("%Y%m"), day.strftime("%Y%m"),
                      (day + timedelta(days=1)).strftime("%Y%m")}
            ek = sorted(era5_key(site.name, m) for m in months)
            out.append(DayInputs(site.name, day, sorted(by_day_k[day]), sorted(by_day_m.get(day, [])),
                                 [k for k in ek if k in era5]))
        if missing:
            log.info("site %s: %d of %d days have no radar file", site.name, len(missing), len(config.days()))
    return out


def input_checksums(store: Store, keys: list[str]) -> dict[str, str]:
    """sha256 of each key from the store manifest (computed, with a warning, when not recorded)."""
    out = {}
    for k in sorted(set(keys)):
        e = store.entry(k)
        if e is None:
            log.warning("%s has no manifest entry; checksumming it", store.uri(k))
            with store.local_path(k) as p:
                out[k] = sha256_file(p)
        else:
            out[k] = e.sha256
    return out


def recipe_config(config: BuildConfig) -> dict[str, Any]:
    """The config values that determine the dataset's content."""
    d = config.model_dump(mode="json")
    for k in _RUNTIME_FIELDS:
        d.pop(k, None)
    if d.get("months") is None:    # every day of start..end: the recipe of the builds before `months`
        d.pop("months", None)
    if d.get("split", {}).get("test_from") is None:      # ... and before `split.test_from`
        d.get("split", {}).pop("test_from", None)
    return d


# --------------------------------------------------------------------------- colocation


def _read_era5_any(path: Any) -> xr.Dataset:
    from bzpipe.sources import era5 as e5
    from bzpipe.sources.fileio import netcdf_probe

    try:  # an IFS model-level column (time, level, height) or ERA-5 pressure levels?
        with netcdf_probe(path, engine="netcdf4") as probe:
            is_column = ("level" in probe.dims and "height" in probe.variables
                         and "latitude" not in probe.dims and "pressure_level" not in probe.dims)
    except Exception:  # noqa: BLE001 - let the ERA-5 reader name what is wrong with the file
        is_column = False
    ds = e5.read_ifs_column(path) if is_column else e5.read_era5(path)
    return ds.load()


@functools.lru_cache(maxsize=4)
def _era5_file(store_root: str, key: str, sha256: str) -> xr.Dataset:
    """A raw ERA-5 file read once per worker process (by its checksum: a replaced file is read anew).

    A file holds a month, and every day of the month is colocated from it; reading it once instead of
    per day is a third of the colocation's time.  Callers get a shallow copy (the arrays are shared
    and never written to).
    """
    with Store(store_root).local_path(key) as p:
        return _read_era5_any(p)


def _read_all(store: Store, keys: list[str], reader: Callable[[Any], xr.Dataset]) -> list[xr.Dataset]:
    out = []
    for k in keys:
        with store.local_path(k) as p:
            out.append(reader(p).load())
    return out


def _concat_time(parts: list[xr.Dataset], what: str) -> xr.Dataset | None:
    if not parts:
        return None
    if len(parts) == 1:
        ds = parts[0]
    else:
        try:
            ds = xr.concat(parts, dim="time", join="exact", data_vars="minimal", coords="minimal",
                           compat="override", combine_attrs="drop_conflicts")
        except ValueError as e:
            srcs = [p.attrs.get("source_file", "?") for p in parts]
            raise InputFileError(srcs[0], f"cannot join the {what} files of one day {srcs}: {e}") from e
    ds = ds.sortby("time")
    _, idx = np.unique(ds["time"].values, return_index=True)
    return ds.isel(time=np.sort(idx))


def _site(cfg: BuildConfig, name: str) -> Site:
    """The configured site of that name (a known code or a full site mapping)."""
    for s in cfg.site_objects():
        if s.name == name:
            return s
    return resolve_site(name)


def colocate_day(store_root: str, inputs: dict[str, Any] | DayInputs, config: dict[str, Any] | BuildConfig
                 ) -> dict[str, Any]:
    """Colocate one site-day into ``work/colocated/<site>/<day>.zarr``; runs on a dask worker.

    Returns ``{"key", "skipped", "profiles", "bins", "valid_bins"}``.  The
    intermediate store is only recorded (complete) in the manifest after it
    has been written in full; it is skipped when already complete with the
    same recipe (inputs, grid and colocation settings, code version).
    """
    cfg = config if isinstance(config, BuildConfig) else BuildConfig.model_validate(config)
    di = inputs if isinstance(inputs, DayInputs) else DayInputs.from_json(inputs)
    store = Store(store_root)
    key = colocated_key(di.site, di.day)
    checks = input_checksums(store, di.keys())
    recipe = sha256_json({"inputs": checks, "grid": cfg.grid.model_dump(mode="json"),
                          "era5_columns": cfg.era5_columns, "met_max_gap_s": cfg.met_max_gap_s,
                          "era5_max_gap_s": cfg.era5_max_gap_s, "code": code_version(),
                          "site": _site(cfg, di.site).model_dump(mode="json"),
                          **_operator_recipe(cfg)})
    entry = store.entry(key)
    if entry is not None and entry.producer.get("recipe") == recipe and store.exists(key):
        return {"key": key, "skipped": True, **entry.producer.get("counts", {})}
    if not di.era5:
        raise InputFileError(store.uri(raw_prefix("era5", di.site)),
                             f"no ERA-5 file for {di.site} {di.day} (needs era5_{di.site}_{di.day:%Y%m}.nc)")
    from bzpipe.sources.arm import read_kazr, read_met

    radar = _concat_time(_read_all(store, di.kazr, read_kazr), "radar")
    met = _concat_time(_read_all(store, di.met, read_met), "met")
    era5 = _concat_time([_era5_file(store.root, k, checks[k]).copy(deep=False) for k in di.era5], "ERA-5")
    assert radar is not None and era5 is not None
    site = _site(cfg, di.site)
    start = pd.Timestamp(di.day)
    ds = colocate(radar, era5, site, cfg.grid, start, start + pd.Timedelta(days=1), met=met,
                  era5_columns=cfg.era5_columns, met_max_gap_s=cfg.met_max_gap_s,
                  era5_max_gap_s=cfg.era5_max_gap_s)
    ds = _forward_operator(ds, cfg, site.name)
    counts = write_colocated(store, key, ds, producer={"recipe": recipe, "inputs": checks,
                                                       "code_version": code_version()})
    return {"key": key, "skipped": False, **counts}


def _operator_recipe(cfg: BuildConfig) -> dict[str, Any]:
    """The forward-operator setting, in the colocated day's recipe only when it is on."""
    op = cfg.forward_operator
    return {"forward_operator": op.model_dump(mode="json"), "seed": cfg.seed} if op.enabled else {}


def _forward_operator(ds: xr.Dataset, cfg: BuildConfig, site: str) -> xr.Dataset:
    """``build.forward_operator``: the day as the CloudSat CPR would see it
    (:mod:`bzpipe.forward.dataset`)."""
    if not cfg.forward_operator.enabled:
        return ds
    from bzpipe.forward.dataset import cpr_resolution_day

    return cpr_resolution_day(ds, cfg.forward_operator, cfg.grid, seed=cfg.seed, site=site)


def write_colocated(store: Store, key: str, ds: xr.Dataset, producer: dict[str, Any] | None = None
                    ) -> dict[str, int]:
    """Write a colocated Dataset to ``key`` (replacing any unfinished one) and record it complete.

    Computed in memory with the synchronous scheduler (this runs inside a dask task; a site-day is
    tens of MB), then written in chunks of 3600 time bins: a third less time per site-day than
    writing the lazy graph chunk by chunk, the same arrays.  Returns counts of profiles, bins and
    valid bins.
    """
    if store.exists(key) or store.entry(key) is not None:
        store.remove(key)
    ds = ds.compute(scheduler="synchronous")
    rows = min(3600, max(ds.sizes["time"], 1))
    encoding = {}
    for name, v in ds.variables.items():
        v.encoding.pop("chunks", None)
        if v.dims[:1] == ("time",):
            encoding[name] = {"chunks": (rows, *v.shape[1:])}
    try:
        ds.to_zarr(store.uri(key), mode="w", consolidated=True, zarr_format=2, encoding=encoding,
                   storage_options=store.storage_options or None)
    except OSError as e:   # e.g. a full disk: name the store, not just the errno
        raise write_error(store.uri(key), e,
                          "this intermediate is incomplete; the next build rewrites it") from e
    n_prof = ds["n_profiles"].values
    valid = (n_prof > 0) & np.asarray(ds["era5_valid"].values)
    counts = {"profiles": int(n_prof.sum()), "bins": int(n_prof.size), "valid_bins": int(valid.sum())}
    digest = tree_sha256(store, key)
    store.record(key, sha256=digest, size=tree_size(store, key),
                 producer={**(producer or {}), "counts": counts})
    return counts


def tree_sha256(store: Store, key: str) -> str:
    """sha256 over the (relative name, sha256 of bytes) of every object under ``key``."""
    import hashlib

    h = hashlib.sha256()
    for k in store.list(key):
        h.update(k[len(key):].encode())
        h.update(hashlib.sha256(store.read_bytes(k)).digest())
    return h.hexdigest()


def tree_size(store: Store, key: str) -> int:
    """Bytes under ``key`` (one listing, also on S3)."""
    return int(store.fs.du(store.uri(key), total=True))


def colocate_all(store_root: str, config: BuildConfig, inputs: list[DayInputs] | None = None
                 ) -> list[dict[str, Any]]:
    """Colocate every site-day on the default dask client (in-process when there is none)."""
    store = Store(store_root)
    inputs = find_inputs(store, config) if inputs is None else inputs
    cfg = config.model_dump(mode="json")
    client = current_client()
    if client is None:
        results = [colocate_day(store.root, d.to_json(), cfg) for d in inputs]
    else:
        futs = client.map(colocate_day, [store.root] * len(inputs), [d.to_json() for d in inputs],
                          [cfg] * len(inputs), pure=False)
        results = client.gather(futs)
    done = sum(not r["skipped"] for r in results)
    log.info("colocated %d site-days (%d already complete): %d profiles", len(results),
             len(results) - done, sum(r.get("profiles", 0) for r in results))
    return results
