"""Stage 3 of the dataset build: which patches go into which split.

From the per-time series of the colocated site-days (radar present, ERA-5
present, surface temperature, column echo fraction, low-level ERA-5) and their
observed rows above the blind zone, on one common time grid:

* a column (time bin) is *usable* when it has radar profiles, ERA-5, and (cold
  filter) a surface temperature below ``cold_threshold_c`` (a sample is kept
  only when every one of its columns is cold, i.e. its warmest surface
  temperature is below the threshold; ``None`` disables the filter);
* the gap between splits is the first lag at which the autocorrelations of the
  column echo series and of the low-level ERA-5 series (t, q, u, v averaged
  below 2 km; the slowest of the four) have both fallen to ``acf_threshold``
  (0.1), per site, the largest used (conservative; a series still correlated
  at ``max_lag_s`` counts as ``max_lag_s``); blocks are the longer of
  ``min_block_days`` (3) and two gaps (:mod:`bzpipe.split`);
* :func:`bzpipe.split.make_split` splits the timeline into blocks shared by all
  sites, and patches are placed inside the usable intervals of each split
  (every ``stride`` columns within each run of usable columns; ``eval_stride``
  for val and test);
* the sample filter of King et al. (2024): a patch is kept only when its
  observed rows *above the blind zone* hold a full ``echo_block`` x
  ``echo_block`` block of echo (rows x columns), and (optionally) at least
  ``min_echo_fraction`` echo; both are decided on the observed rows only, never
  on the hidden blind zone, so the selection does not depend on the target.
  A block that straddles two colocated days is not seen (days are filtered on
  their own).

All counts are logged (logger ``bzpipe.dataset``) and kept in ``plan.counts``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from bzpipe.checksums import sha256_json
from bzpipe.colocate.grid import to_ns
from bzpipe.config import BuildConfig
from bzpipe.schema import ERA5_VARIABLES
from bzpipe.split import (
    NS,
    SPLITS,
    decorrelation_lag,
    default_block_s,
    efolding_time,
    make_split,
    place_patches,
    season_of,
)
from bzpipe.store import Store

log = logging.getLogger("bzpipe.dataset")

_SERIES = ("n_profiles", "era5_valid", "surface_temperature", "surface_temperature_source",
           "echo_fraction")


class DaySpan(NamedTuple):
    """One colocated site-day on the plan's common time grid (stored in JSON as a 4-element list)."""

    key: str                #: the colocated store's key
    first_col: int          #: its first column on the global time grid
    n_cols: int             #: its number of columns
    lowest_row: int         #: the lowest row with radar gates


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
    #: site -> its colocated days
    days: dict[str, list[DaySpan]]
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
            c0 = np.array([d.first_col for d in days], dtype=np.int64)
            low = np.array([d.lowest_row for d in days], dtype=np.int16)
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
        """The plan as JSON-able values (each :class:`DaySpan` as a list)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["days"] = {s: [list(d) for d in spans] for s, spans in self.days.items()}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BuildPlan:
        """The plan :meth:`to_json` wrote."""
        days = {s: [DaySpan(*v) for v in spans] for s, spans in d["days"].items()}
        return cls(**{**d, "days": days})


def _site_of(ds: xr.Dataset, key: str) -> str:
    return str(ds.attrs.get("site") or key.split("/")[-2])


#: the ERA-5 series of the autocorrelation: each variable averaged over the rows below this height
ERA5_SERIES_TOP_M = 2000.0


def echo_block_starts(echo: np.ndarray, block: int) -> np.ndarray:
    """Per column of ``echo`` (bool ``(time, row)``): does a full ``block`` x ``block`` echo block
    start there (at any row)?  Shape ``(time,)``; False where fewer than ``block`` columns remain."""
    t, r = echo.shape
    out = np.zeros(t, dtype=bool)
    if block <= 0 or t < block or r < block:
        return out
    c = np.zeros((t + 1, r + 1), dtype=np.int32)
    c[1:, 1:] = echo.astype(np.int32).cumsum(0).cumsum(1)
    full = (c[block:, block:] - c[:-block, block:] - c[block:, :-block]
            + c[:-block, :-block]) == block * block
    out[:t - block + 1] = full.any(axis=1)
    return out


def read_series(store: Store, keys: list[str], blind_zone_rows: int = 0, echo_block: int = 0
                ) -> list[dict[str, Any]]:
    """:func:`read_day_series` of every key, in the order of ``keys``: on the default Dask client when
    there is one (the build's cluster; 302 site-days: 30 s one after another, 19-20 s on 2 worker
    processes), else one after another (4 threads were no faster: 24 s against 25 s, measured
    while a training run shared the 2 cores).
    """
    from bzpipe.cluster import current_client

    client = current_client()
    if client is not None and len(keys) > 1:
        futures = client.map(read_day_series, [store.root] * len(keys), keys, pure=False,
                             blind_zone_rows=blind_zone_rows, echo_block=echo_block)
        return client.gather(futures)
    return [read_day_series(store, k, blind_zone_rows, echo_block) for k in keys]


def read_day_series(store: Store | str, key: str, blind_zone_rows: int = 0, echo_block: int = 0
                    ) -> dict[str, Any]:
    """The per-time series and ``n_gates`` of one colocated store (small 1-D arrays).

    Besides the stored series: ``echo_above`` (fraction of the observed rows at or
    above ``blind_zone_rows`` with echo), ``block_start`` (:func:`echo_block_starts`
    on those rows) and ``era5_low`` ({variable: mean below :data:`ERA5_SERIES_TOP_M`}).
    ``store`` may be its root (a Dask worker opens it).
    """
    store = store if isinstance(store, Store) else Store(store)
    with xr.open_zarr(store.uri(key), consolidated=True, chunks=None,
                      storage_options=store.storage_options or None) as ds:
        rec = {"key": key, "site": _site_of(ds, key),
               "time": ds["time"].values.astype("datetime64[ns]").astype(np.int64),
               "n_gates": ds["n_gates"].values}
        for v in _SERIES:
            rec[v] = ds[v].values
        observed = np.asarray(rec["n_gates"]) > 0
        observed[:blind_zone_rows] = False
        refl = ds["reflectivity"].transpose("time", "height").values[:, observed]   # (T, R_obs)
        echo = np.isfinite(refl)
        rec["echo_above"] = (echo.mean(axis=1) if echo.shape[1] else np.zeros(echo.shape[0])
                             ).astype(np.float32)
        rec["block_start"] = echo_block_starts(echo, echo_block)
        low = np.asarray(ds["height"].values) < ERA5_SERIES_TOP_M
        low[0] = True
        rec["era5_low"] = {
            v: ds[v].isel(height=np.flatnonzero(low)).mean("height").values.astype(np.float64)
            for v in ERA5_VARIABLES if v in ds}
    return rec


def _split_scales(config: BuildConfig, sites: list[str], echo: dict[str, np.ndarray],
                  era5: dict[str, dict[str, np.ndarray]], step_s: float) -> dict[str, Any]:
    """Decorrelation lags (echo and ERA-5, per site), the gap and the block length of the split."""
    sp = config.split
    info: dict[str, Any] = {"efolding_s": {}, "echo_lag_s": {}, "era5_lag_s": {}, "not_reached": []}
    lags = []
    for s in sites:
        tau, _ = efolding_time(echo[s], step_s, sp.max_lag_s)
        info["efolding_s"][s] = tau
        lag, found = decorrelation_lag(echo[s], step_s, sp.max_lag_s, sp.acf_threshold)
        info["echo_lag_s"][s] = lag
        if not found:
            info["not_reached"].append(f"{s} echo")
        per_var = {}
        for v, x in era5[s].items():
            lag_v, found_v = decorrelation_lag(x, step_s, sp.max_lag_s, sp.acf_threshold)
            per_var[v] = lag_v
            if not found_v:
                info["not_reached"].append(f"{s} ERA-5 {v}")
        info["era5_lag_s"][s] = per_var
        lags += [lag, *per_var.values()]
        log.info("site %s: decorrelation (autocorrelation <= %g) after %.1f h (echo), %s (ERA-5); "
                 "echo e-folding %.1f h", s,
                 sp.acf_threshold, lag / 3600, ", ".join(f"{v} {x / 3600:.1f} h" for v, x in per_var.items()),
                 tau / 3600)
    if info["not_reached"]:
        log.warning("autocorrelation still above %g at max_lag_s=%.0f s for %s: using max_lag_s",
                    sp.acf_threshold, sp.max_lag_s, ", ".join(info["not_reached"]))
    info["decorrelation_s"] = max(lags, default=float(sp.max_lag_s))
    info["gap_s"] = float(sp.gap_s) if sp.gap_s is not None else info["decorrelation_s"]
    if sp.gap_s is not None and sp.gap_s < info["decorrelation_s"]:
        log.warning("split gap %.0f s is shorter than the decorrelation lag (%.0f s)", sp.gap_s,
                    info["decorrelation_s"])
    info["block_s"] = (sp.block_hours * 3600.0 if sp.block_hours is not None
                       else default_block_s(info["gap_s"], step_s, sp.min_block_days))
    return info


def plan_dataset(store: Store, config: BuildConfig, keys: list[str], *, recipe_id: str = "",
                 inputs: dict[str, str] | None = None) -> BuildPlan:
    """Cold filter, decorrelation lags, split, patch placement and the sample filter over ``keys``.

    The sample filter (``patch.echo_block``, ``patch.min_echo_fraction``) decides on observed rows only;
    it applies to validation and test, and to training only with ``patch.filter_train``.
    """
    step_s = config.grid.time_step_s
    step_ns = int(round(step_s * NS))
    width = config.patch.width
    bz = config.patch.blind_zone_rows
    block = config.patch.echo_block
    series = read_series(store, keys, bz, block)
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
    above = {s: np.zeros(n, np.float32) for s in sites}
    blocks = {s: np.zeros(n, bool) for s in sites}
    era5 = {s: {v: np.full(n, np.nan) for v in ERA5_VARIABLES} for s in sites}
    days: dict[str, list[DaySpan]] = {s: [] for s in sites}
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
        days[s].append(DaySpan(rec["key"], c0, int(j.size), int(measured[0]) if measured.size else 0))
        sl = slice(c0, c0 + j.size)
        radar[s][sl] = np.asarray(rec["n_profiles"]) > 0
        era_ok[s][sl] = np.asarray(rec["era5_valid"], dtype=bool)
        temp[s][sl] = rec["surface_temperature"]
        tsrc[s][sl] = rec["surface_temperature_source"]
        echo[s][sl] = np.where(radar[s][sl], rec["echo_fraction"], np.nan)
        above[s][sl] = np.where(radar[s][sl], rec["echo_above"], 0.0)
        blocks[s][sl] = rec["block_start"] & radar[s][sl]
        for v, x in rec["era5_low"].items():
            era5[s][v][sl] = np.where(era_ok[s][sl], x, np.nan)

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

    # --- decorrelation, gap, blocks, split
    scales = _split_scales(config, sites, echo, era5, step_s)
    gap_s, block_s = scales["gap_s"], scales["block_s"]
    held = config.split.test_from
    split = make_split(valid, t0, step_s, fractions=tuple(config.split.fractions), gap_s=gap_s,
                       block_s=block_s, seed=config.seed, decorrelation_s=scales["decorrelation_s"],
                       test_from_ns=None if held is None else to_ns(held))
    labels = split.labels(n)

    # --- patches and the sample filter (observed rows above the blind zone only)
    samples: dict[str, dict[str, list[Any]]] = {k: {"site": [], "col": []} for k in SPLITS}
    dropped = {"no_echo_block": 0, "low_echo": 0}
    filtered_splits = list(SPLITS if config.patch.filter_train else SPLITS[1:])
    for s in sites:
        ca = np.r_[0.0, np.cumsum(above[s], dtype=np.float64)]
        cb = np.r_[0, np.cumsum(blocks[s], dtype=np.int64)]
        for k, name in enumerate(SPLITS):
            stride = (config.patch.stride or width) if name == "train" else \
                (config.patch.eval_stride or config.patch.stride or width)
            starts = place_patches(valid[s] & (labels == k), width, stride)
            filtered = name in filtered_splits
            if filtered and block > 0 and starts.size:
                keep = cb[np.minimum(starts + width - block + 1, n)] - cb[starts] > 0
                dropped["no_echo_block"] += int((~keep).sum())
                starts = starts[keep]
            if filtered and config.patch.min_echo_fraction > 0 and starts.size:
                keep = (ca[starts + width] - ca[starts]) / width >= config.patch.min_echo_fraction
                dropped["low_echo"] += int((~keep).sum())
                starts = starts[keep]
            samples[name]["site"] += [s] * int(starts.size)
            samples[name]["col"] += starts.tolist()
    counts["samples"] = {k: len(samples[k]["col"]) for k in SPLITS}
    counts["dropped_no_echo_block"] = dropped["no_echo_block"]
    counts["dropped_low_echo"] = dropped["low_echo"]
    counts["usable_bins_outside_split_intervals"] = int(sum((valid[s] & (labels < 0)).sum() for s in sites))
    counts["filtered_splits"] = filtered_splits
    log.info("samples: %s (dropped from %s: %d without a %dx%d echo block above the blind zone, %d for low "
             "echo); gap %.1f h, blocks %.1f days", counts["samples"], "/".join(counts["filtered_splits"]),
             dropped["no_echo_block"], block, block, dropped["low_echo"], gap_s / 3600, block_s / 86400)
    split_json = split.to_json()
    split_json.update({"gap_s": gap_s, "block_s": block_s, "scales": scales})
    tau: dict[str, float | None] = {**scales["efolding_s"], "used": scales["decorrelation_s"]}
    return BuildPlan(version=config.version, recipe_id=recipe_id, t0_ns=int(t0), step_ns=step_ns,
                     width=width, n_heights=config.grid.n_heights, dz_m=config.grid.dz_m,
                     blind_zone_rows=bz, days=days, samples=samples,
                     split=split_json, decorrelation_s=tau, counts=counts, inputs=dict(inputs or {}))
