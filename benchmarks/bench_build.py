"""Benchmark: dataset-build throughput against the raw netCDF read speed of the same files.

Writes synthetic KaZR / met / ERA-5 files (bzpipe.sources.synthetic) into a
temporary store, then on this machine measures

1. the raw read speed: every KaZR file opened with netCDF4 and its
   reflectivity read in full (decompressed), single process -> profiles / s;
2. the same through the reader (``bzpipe.sources.arm.read_kazr``);
3. the build (colocation, split + patches, normalization + region writes) on a
   dask LocalCluster of ``--workers`` x ``--threads`` -> profiles / s and
   profiles / s per core, per stage and overall.

Usage::

    python benchmarks/bench_build.py --days 2 --hours 6 --workers 2 --threads 1

Prints the figures; ``--json FILE`` also writes them.  (Timings on a shared
machine vary; compare figures from one run only.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np


def make_store(root: Path, site: str, days: list[date], hours: float, step_s: float, seed: int) -> list[str]:
    """Synthetic raw files in the store layout (recorded in the manifest); returns the KaZR keys."""
    from bzpipe.config import IngestConfig, SyntheticConfig
    from bzpipe.sources.synthetic.arm_files import write_kazr_day, write_met_day
    from bzpipe.sources.synthetic.era5_files import write_era5_month
    from bzpipe.store import Store

    store = Store(root)
    cfg = SyntheticConfig(time_step_s=step_s, hours_per_day=hours)
    levels = IngestConfig().era5_levels_hpa
    kazr = []
    with tempfile.TemporaryDirectory() as d:
        for day in days:
            p = write_kazr_day(d, site, day, cfg, seed)
            kazr.append(store.put_file(p, f"raw/kazr/{site}/{p.name}").key)
            p = write_met_day(d, site, day, cfg, seed)
            store.put_file(p, f"raw/met/{site}/{p.name}")
        months = sorted({(x.year, x.month) for day in days
                         for x in (day - timedelta(1), day, day + timedelta(1))})
        for y, m in months:
            p = write_era5_month(d, site, y, m, levels, 0.75, seed)
            store.put_file(p, f"raw/era5/{site}/{p.name}")
    return kazr


def raw_read_speed(paths: list[Path]) -> dict[str, float]:
    """Profiles per second reading the reflectivity of every file with netCDF4 (one process)."""
    import netCDF4

    n = 0
    t0 = time.perf_counter()
    for p in paths:
        with netCDF4.Dataset(p) as nc:
            var = next(v for v in ("reflectivity_best_estimate", "reflectivity", "reflectivity_copol")
                       if v in nc.variables)
            a = nc.variables[var][:]
            n += a.shape[0]
    dt = time.perf_counter() - t0
    return {"profiles": n, "seconds": dt, "profiles_per_s": n / dt}


def reader_speed(paths: list[Path]) -> dict[str, float]:
    from bzpipe.sources.arm import read_kazr

    n = 0
    t0 = time.perf_counter()
    for p in paths:
        ds = read_kazr(p).load()
        n += ds.sizes["time"]
    dt = time.perf_counter() - t0
    return {"profiles": n, "seconds": dt, "profiles_per_s": n / dt}


def _warm_up() -> None:
    import xarray as xr

    import bzpipe.dataset  # noqa: F401
    import bzpipe.sources.arm  # noqa: F401
    import bzpipe.sources.era5  # noqa: F401

    xr.backends.list_engines()


def build(root: Path, site: str, days: list[date], workers: int, threads: int, step_s: float,
          processes: bool) -> dict[str, Any]:
    from bzpipe.cluster import dask_client
    from bzpipe.config import BuildConfig
    from bzpipe.dataset import build_recipe, colocate_all, plan_dataset, write_dataset
    from bzpipe.store import Store

    cfg = BuildConfig(store_root=str(root), sites=[site], start=days[0], end=days[-1],
                      grid={"time_step_s": step_s}, cold_threshold_c=None, n_workers=workers,
                      threads_per_worker=threads, dask_processes=processes,
                      split={"gap_s": 600.0, "block_hours": 1.0})
    store = Store(root)
    out: dict[str, Any] = {}
    with dask_client(None, n_workers=workers, threads_per_worker=threads, processes=processes) as client:
        # warm-up (not timed): imports and xarray backends in every worker
        tw = time.perf_counter()
        client.run(_warm_up)
        out["warm_up_s"] = time.perf_counter() - tw
        t0 = time.perf_counter()
        recipe, checks, inputs = build_recipe(store, cfg)
        res = colocate_all(store.root, cfg, inputs)
        t1 = time.perf_counter()
        plan = plan_dataset(store, cfg, [r["key"] for r in res], recipe_id=recipe, inputs=checks)
        t2 = time.perf_counter()
        write_dataset(store.root, plan, cfg)
        t3 = time.perf_counter()
    profiles = sum(r["profiles"] for r in res)
    cores = workers * threads
    out.update({"profiles": profiles, "cores": cores,
                "samples": {k: plan.n_samples(k) for k in ("train", "val", "test")},
                "colocate_s": t1 - t0, "plan_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0})
    out["profiles_per_s"] = profiles / out["total_s"]
    out["profiles_per_s_per_core"] = out["profiles_per_s"] / cores
    out["colocate_profiles_per_s_per_core"] = profiles / out["colocate_s"] / cores
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="nsa")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--hours", type=float, default=6.0, help="hours of radar per day file")
    ap.add_argument("--step", type=float, default=4.0, help="KaZR profile interval and grid step, s")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threads-only", action="store_true", help="LocalCluster(processes=False)")
    ap.add_argument("--root", help="store root to use (default: a temporary folder)")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    days = [date(2019, 1, 1) + timedelta(days=i) for i in range(a.days)]
    with tempfile.TemporaryDirectory(prefix="bzpipe-bench-") as tmp:
        root = Path(a.root or tmp) / "store"
        t0 = time.perf_counter()
        keys = make_store(root, a.site, days, a.hours, a.step, seed=1)
        gen_s = time.perf_counter() - t0
        paths = [root / k for k in keys]
        raw = raw_read_speed(paths)
        try:
            rdr = reader_speed(paths)
        except ImportError:
            rdr = None
        b = build(root, a.site, days, a.workers, a.threads, a.step, not a.threads_only)
    res = {"machine": {"cpus": os.cpu_count()}, "files": len(keys), "generate_s": gen_s,
           "raw_netcdf": raw, "reader": rdr, "build": b}
    print(f"machine: {os.cpu_count()} CPUs; {len(keys)} KaZR day files ({a.hours:g} h at {a.step:g} s), "
          f"{raw['profiles']} profiles")
    print(f"raw netCDF read (netCDF4, 1 process):   {raw['profiles_per_s']:12.0f} profiles/s")
    if rdr:
        print(f"reader read_kazr (1 process):          {rdr['profiles_per_s']:12.0f} profiles/s")
    print(f"build on {b['cores']} core(s) ({a.workers} workers x {a.threads} threads, after a "
          f"{b['warm_up_s']:.1f} s worker warm-up): {b['total_s']:.1f} s = colocate {b['colocate_s']:.1f} "
          f"+ plan {b['plan_s']:.1f} + write {b['write_s']:.1f}; samples {b['samples']}")
    print(f"build throughput:                      {b['profiles_per_s']:12.0f} profiles/s, "
          f"{b['profiles_per_s_per_core']:.0f} profiles/s per core")
    print(f"colocation stage alone:                {b['colocate_profiles_per_s_per_core']:12.0f} "
          "profiles/s per core")
    ratio = b["profiles_per_s_per_core"] / raw["profiles_per_s"]
    print(f"build / raw read (per core):           {ratio:12.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=float))
    return res


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
