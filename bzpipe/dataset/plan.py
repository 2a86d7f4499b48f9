"""Stage 3 of the dataset build: which patches go into which split.

From the per-time series of the colocated site-days (radar present, ERA-5
present, surface temperature, column echo fraction) on one common time grid:

* a column (time bin) is *usable* when it has radar profiles, ERA-5, and (cold
  filter) a surface temperature below ``cold_threshold_c`` (a sample is kept
  only when every one of its columns is cold, i.e. its warmest surface
  temperature is below the threshold; ``None`` disables the filter);
* the decorrelation time is the e-folding time of the echo-fraction
  autocorrelation, per site; the largest is used (conservative; a site whose
  autocorrelation never falls below 1/e within ``max_lag_s`` counts as ``max_lag_s``);
* :func:`bzpipe.split.make_split` splits the timeline into blocks shared by all
  sites, and patches are placed inside the usable intervals of each split
  (every ``stride`` columns within each run of usable columns), then patches
  with less echo than ``min_echo_fraction`` are dropped.

All counts are logged (logger ``bzpipe.dataset``) and kept in ``plan.counts``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.config import BuildConfig
from bzpipe.provenance import sha256_json
from bzpipe.split import (NS, SPLITS, default_block_s, default_gap_s, efolding_time, make_split,
                          place_patches, season_of)
from bzpipe.store import Store

log = logging.getLogger("bzpipe.dataset")

_SERIES = ("n_profiles", "era5_valid", "surface_temperature", "surface_temperature_source",
           "echo_fraction")


@dataclass
class BuildPlan:
    """Everything the writer needs: samples per split and where their data lie."""

    version: str
    recipe_id: str
    t0_ns: int
    step_ns: int
    width: int
    n_heights: int
    dz_m: float
    blind_zone_rows: int
    #: site -> [[colocated key, first global column, n columns, lowest measured row], ...]
    days: dict[str, list[list[Any]]]
    #: split -> {"site": [...], "col": [...]} (sorted by site, then time)
    samples: dict[str, dict[str, list[Any]]]
    split: dict[str, Any] = field(default_factory=dict)
    decorrelation_s: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    def height(self) -> np.ndarray:
        """Row centres, m above ground."""
        return (np.arange(self.n_heights, dtype=np.float64) + 0.5) * self.dz_m

    def n_samples(self, split: str) -> int:
        return len(self.samples[split]["col"])

    def time_start(self, split: str) -> np.ndarray:
        cols = np.asarray(self.samples[split]["col"], dtype=np.int64)
        return (self.t0_ns + cols * self.step_ns).astype("datetime64[ns]")

    def season(self, split: str) -> np.ndarray:
        return season_of(self.time_start(split)).astype(str)

    def lowest_measured_row(self, split: str) -> np.ndarray:
        """Per sample: the lowest row with radar gates on the day of its first column."""
        out = np.zeros(self.n_samples(split), dtype=np.int16)
        sites = np.asarray(self.samples[split]["site"], dtype=object)
        cols = np.asarray(self.samples[split]["col"], dtype=np.int64)
        for site, days in self.days.items():
            sel = np.flatnonzero(sites == site)
            if not sel.size or not days:
                continue
            c0 = np.array([d[1] for d in days], dtype=np.int64)
            low = np.array([d[3] for d in days], dtype=np.int16)
            order = np.argsort(c0)
            j = np.clip(np.searchsorted(c0[order], cols[sel], side="right") - 1, 0, len(days) - 1)
            out[sel] = low[order][j]
        return out

    def plan_id(self) -> str:
        """Checksum of what determines the written values (not the counts)."""
        return sha256_json({"recipe": self.recipe_id, "t0": self.t0_ns, "step": self.step_ns,
                            "width": self.width, "days": self.days, "samples": self.samples})

    def summary(self) -> list[dict[str, Any]]:
        """Rows ``{split, site, season, samples}`` (the build's table artifact)."""
        rows = []
        for split in SPLITS:
            sites = np.asarray(self.samples[split]["site"], dtype=str)
            seasons = self.season(split)
            for site in sorted(set(sites.tolist())):
                for season in sorted(set(seasons[sites == site].tolist())):
                    rows.append({"split": split, "site": site, "season": season,
                                 "samples": int(np.sum((sites == site) & (seasons == season)))})
        return rows

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BuildPlan":
        return cls(**d)


def _site_of(ds: xr.Dataset, key: str) -> str:
    return str(ds.attrs.get("site") or key.split("/")[-2])


def read_series(store: Store, keys: list[str]) -> list[dict[str, Any]]:
    """The per-time series and ``n_gates`` of each colocated store (small 1-D arrays)."""
    out = []
    for key in keys:
        with xr.open_zarr(store.uri(key), consolidated=True, chunks=None,
                          storage_options=store.storage_options or None) as ds:
            rec = {"key": key, "site": _site_of(ds, key),
                   "time": ds["time"].values.astype("datetime64[ns]").astype(np.int64),
                   "n_gates": ds["n_gates"].values}
            for v in _SERIES:
                rec[v] = ds[v].values
        out.append(rec)
    return out


def plan_dataset(store: Store, config: BuildConfig, keys: list[str], *, recipe_id: str = "",
                 inputs: dict[str, str] | None = None) -> BuildPlan:
    """Cold filter, decorrelation time, split and patch placement over the colocated ``keys``."""
    step_s = config.grid.time_step_s
    step_ns = int(round(step_s * NS))
    width = config.patch.width
    stride = config.patch.stride or width
    series = read_series(store, keys)
    sites = sorted({s["site"] for s in series})
    if not series:
        raise ValueError("no colocated data to build a dataset from")
    t0 = min(int(s["time"][0]) for s in series if s["time"].size)
    t_end = max(int(s["time"][-1]) + step_ns for s in series if s["time"].size)
    n = (t_end - t0) // step_ns
    radar = {s: np.zeros(n, bool) for s in sites}
    era_ok = {s: np.zeros(n, bool) for s in sites}
    temp = {s: np.full(n, np.nan, np.float32) for s in sites}
    tsrc = {s: np.zeros(n, np.int8) for s in sites}
    echo = {s: np.full(n, np.nan, np.float32) for s in sites}
    days: dict[str, list[list[Any]]] = {s: [] for s in sites}
    for rec in sorted(series, key=lambda r: (r["site"], int(r["time"][0]) if r["time"].size else 0)):
        t = rec["time"]
        if not t.size:
            continue
        off = t - t0
        if np.any(off % step_ns):
            raise ValueError(f"{rec['key']}: time grid is not aligned to the {step_s} s step")
        j = (off // step_ns).astype(np.int64)
        if np.any(np.diff(j) != 1):
            raise ValueError(f"{rec['key']}: time grid is not contiguous")
        s = rec["site"]
        c0 = int(j[0])
        measured = np.flatnonzero(np.asarray(rec["n_gates"]) > 0)
        days[s].append([rec["key"], c0, int(j.size), int(measured[0]) if measured.size else 0])
        sl = slice(c0, c0 + j.size)
        radar[s][sl] = np.asarray(rec["n_profiles"]) > 0
        era_ok[s][sl] = np.asarray(rec["era5_valid"], dtype=bool)
        temp[s][sl] = rec["surface_temperature"]
        tsrc[s][sl] = rec["surface_temperature_source"]
        echo[s][sl] = np.where(radar[s][sl], rec["echo_fraction"], np.nan)

    # --- cold filter, per column (a sample is cold when all its columns are)
    thr = config.cold_threshold_c
    counts: dict[str, Any] = {"sites": {}}
    valid = {}
    for s in sites:
        cold = np.ones(n, bool) if thr is None else (np.nan_to_num(temp[s], nan=np.inf) < thr)
        valid[s] = radar[s] & era_ok[s] & cold
        c = {"bins": int(n), "radar_bins": int(radar[s].sum()),
             "no_era5_bins": int((radar[s] & ~era_ok[s]).sum()),
             "temperature_from_met": int((radar[s] & (tsrc[s] == 1)).sum()),
             "temperature_from_era5": int((radar[s] & (tsrc[s] == 2)).sum()),
             "no_temperature_bins": int((radar[s] & ~np.isfinite(temp[s])).sum()),
             "warm_bins": 0 if thr is None else int((radar[s] & era_ok[s] & ~cold).sum()),
             "usable_bins": int(valid[s].sum())}
        counts["sites"][s] = c
        log.info("site %s: %d bins with radar, %d without ERA-5, %s warm (surface >= %s C; "
                 "temperature from met %d, from ERA-5 %d, none %d) -> %d usable",
                 s, c["radar_bins"], c["no_era5_bins"], c["warm_bins"] if thr is not None else "no",
                 thr, c["temperature_from_met"], c["temperature_from_era5"], c["no_temperature_bins"],
                 c["usable_bins"])

    # --- decorrelation time
    # (a site whose autocorrelation stays above 1/e counts as max_lag_s: the conservative choice)
    tau: dict[str, float | None] = {}
    tau_all = [float(config.split.max_lag_s)] if not sites else []
    for s in sites:
        t_s, found = efolding_time(echo[s], step_s, config.split.max_lag_s)
        tau[s] = t_s if found else None
        tau_all.append(t_s)
        log.info("site %s: echo decorrelation (e-folding) time %s", s,
                 f"{t_s:.0f} s" if found else f"not reached within {config.split.max_lag_s:.0f} s")
    tau_used = max(tau_all)
    tau["used"] = tau_used
    gap_s = config.split.gap_s if config.split.gap_s is not None else default_gap_s(tau_used, width, step_s)
    if config.split.gap_s is not None and gap_s < tau_used + width * step_s:
        log.warning("split gap %.0f s is shorter than decorrelation + patch (%.0f s)", gap_s,
                    tau_used + width * step_s)
    block_s = (config.split.block_hours * 3600.0 if config.split.block_hours is not None
               else default_block_s(gap_s, step_s))
    split = make_split(valid, t0, step_s, fractions=tuple(config.split.fractions), gap_s=gap_s,
                       block_s=block_s, seed=config.seed, decorrelation_s=tau_used)
    labels = split.labels(n)

    # --- patches
    samples: dict[str, dict[str, list[Any]]] = {k: {"site": [], "col": []} for k in SPLITS}
    dropped_echo = 0
    for s in sites:
        ce = np.r_[0.0, np.cumsum(np.nan_to_num(echo[s], nan=0.0), dtype=np.float64)]
        for k, name in enumerate(SPLITS):
            starts = place_patches(valid[s] & (labels == k), width, stride)
            if config.patch.min_echo_fraction > 0 and starts.size:
                mean_echo = (ce[starts + width] - ce[starts]) / width
                keep = mean_echo >= config.patch.min_echo_fraction
                dropped_echo += int((~keep).sum())
                starts = starts[keep]
            samples[name]["site"] += [s] * int(starts.size)
            samples[name]["col"] += starts.tolist()
    counts["samples"] = {k: len(samples[k]["col"]) for k in SPLITS}
    counts["dropped_low_echo"] = dropped_echo
    counts["usable_bins_outside_split_intervals"] = int(sum((valid[s] & (labels < 0)).sum() for s in sites))
    log.info("samples: %s (dropped for low echo: %d); gap %.0f s, blocks %.1f h, decorrelation %.0f s",
             counts["samples"], dropped_echo, gap_s, block_s / 3600, tau_used)
    split_json = split.to_json()
    split_json.update({"gap_s": gap_s, "block_s": block_s})
    return BuildPlan(version=config.version, recipe_id=recipe_id, t0_ns=int(t0), step_ns=step_ns,
                     width=width, n_heights=config.grid.n_heights, dz_m=config.grid.dz_m,
                     blind_zone_rows=config.patch.blind_zone_rows, days=days, samples=samples,
                     split=split_json, decorrelation_s=tau, counts=counts, inputs=dict(inputs or {}))
