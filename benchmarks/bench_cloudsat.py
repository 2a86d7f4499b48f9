"""Seconds per CloudSat granule for blind-zone filling, and where they go (not a test).

    python benchmarks/bench_cloudsat.py                              # ~37,000 profiles, N = 50, full UNet3+
    python benchmarks/bench_cloudsat.py --profiles 2000 --passes 5   # quicker; also prints the extrapolation
    python benchmarks/bench_cloudsat.py --filters 4,8,8,8,8 --device cuda --json out.json
    python benchmarks/bench_cloudsat.py --profiles 2000 --passes 5 --paths band,full   # both MC paths

Writes a synthetic 2B-GEOPROF granule (real HDF-EOS2 layout, ``bzpipe.sources.synthetic``)
and an untrained UNet3+ checkpoint (speed does not depend on the weights) into a
temporary store, then runs :func:`bzpipe.infer.granule.process_granule` on it once and
prints the seconds per granule and the share spent reading (HDF + checks), regridding
(to the model grid and back), inference (windows x MC-dropout passes) and writing
(Zarr + curtain PNG).  When ``--profiles`` / ``--passes`` are below a full granule and
N = 50, it also prints the figure scaled to 37,000 profiles and 50 passes (reading,
regridding and writing scale with profiles; inference with profiles x passes).

``--paths`` runs the granule once per MC path (``infer.mc_path``: ``band``, the exact
band-limited decoder that inference uses by default, and ``full``, the whole forward pass),
each in its own temporary store, interleaved by path when ``--repeats`` > 1, and prints the
seconds per granule of each and their ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see bzpipe/__init__.py

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL_PROFILES = 37000
FULL_PASSES = 50
STAGES = ("read", "regrid", "inference", "write")




def save_model(store_root: str, filters: tuple[int, ...], channels: int, n_heights: int, top_m: float,
               width: int) -> None:
    import torch

    from bzpipe.checkpoint import save_checkpoint
    from bzpipe.store.layout import checkpoint_key
    from bzpipe.model.unet3plus import UNet3Plus, UNet3PlusConfig
    from bzpipe.schema import CHANNELS, ERA5_VARIABLES, default_normalization
    from bzpipe.store import Store

    mc = UNet3PlusConfig(in_channels=channels + 1, filters=filters)
    torch.manual_seed(0)
    norm = default_normalization()
    for v, (m, s) in zip(ERA5_VARIABLES, ((250.0, 15.0), (1e-3, 1e-3), (0.0, 10.0), (0.0, 10.0))):
        norm[v] = {"mean": m, "std": s}
    meta = {"model": mc.to_dict(), "channels": list(CHANNELS[:channels]), "normalization": norm,
            "grid": {"n_heights": n_heights, "top_m": top_m}, "patch": {"width": width},
            # trained on CPR-resolution patches at the NSA / OLI sites (what inference checks before filling)
            "build": {"forward_operator": {"enabled": True}, "cold_threshold_c": None, "sites": ["nsa", "oli"]}}
    save_checkpoint(Store(store_root), checkpoint_key("bench", "last"),
                    {"model": UNet3Plus(mc).state_dict(), "epoch": 0, "val_loss": 0.0}, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_cloudsat.py", description=__doc__.splitlines()[0])
    p.add_argument("--profiles", type=int, default=FULL_PROFILES)
    p.add_argument("--passes", type=int, default=FULL_PASSES)
    p.add_argument("--filters", default="32,64,128,256,512")
    p.add_argument("--channels", type=int, choices=(1, 5), default=1)
    p.add_argument("--n-heights", type=int, default=128)
    p.add_argument("--top-m", type=float, default=10000.0)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=64, help="samples (windows x passes) per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--paths", default="band", help="MC paths to time, comma-separated: band, full")
    p.add_argument("--repeats", type=int, default=1, help="granules per path (interleaved; median)")
    p.add_argument("--json", help="also write the figures to this file")
    a = p.parse_args(argv)
    paths = [x.strip() for x in a.paths.split(",") if x.strip()]
    if not paths or any(x not in ("band", "full") for x in paths):
        raise SystemExit(f"--paths: band and/or full, got {a.paths!r}")
    runs = {path: [run_granule(a, path)] for path in paths}
    for _ in range(a.repeats - 1):
        for path in paths:
            runs[path].append(run_granule(a, path))
    out = {"paths": {}, "machine": machine_info()}
    for path, rs in runs.items():
        rs.sort(key=lambda r: r["total_s"])
        med = rs[len(rs) // 2]
        out["paths"][path] = med
        report(a, path, med)
    if len(paths) == 2:
        b, f = out["paths"]["band"], out["paths"]["full"]
        key = "extrapolated_full_granule_s" if "extrapolated_full_granule_s" in b else None
        tb = b[key]["total"] if key else b["total_s"]
        tf = f[key]["total"] if key else f["total_s"]
        ib = b[key]["inference"] if key else b["seconds"]["inference"]
        i_f = f[key]["inference"] if key else f["seconds"]["inference"]
        print(f"band vs full: {tf / tb:.2f}x faster per granule, inference {i_f / ib:.2f}x "
              f"({'scaled to the full granule' if key else 'as measured'})")
    print("  machine:", json.dumps(out["machine"]))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


def run_granule(a: argparse.Namespace, mc_path: str) -> dict:
    """Process one synthetic granule with MC path ``mc_path`` in a fresh temporary store; its figures."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from bzpipe.config import IngestConfig, InferConfig, SyntheticConfig
    from bzpipe.infer.granule import process_granule
    from bzpipe.sources import synthetic
    from bzpipe.store import Store
    from bzpipe.store.layout import raw_key

    filters = tuple(int(f) for f in a.filters.split(","))
    with tempfile.TemporaryDirectory(prefix="bzpipe-bench-") as d:
        root = Path(d) / "store"
        t0 = time.perf_counter()
        start = datetime(2019, 1, 2, 17, 58, 51, tzinfo=timezone.utc)
        path = synthetic.generate_cloudsat_granule(root / "raw" / "cloudsat", start, a.profiles, 0, SyntheticConfig())
        store = Store(root)
        key = store.key_of(str(path))
        if a.channels == 5:
            ing = IngestConfig(store_root=str(root), start=start.date(), end=start.date())
            for site in ing.site_objects():
                f = synthetic.write_era5_month(Path(d) / "era5", site, start.year, start.month,
                                               ing.era5_levels_hpa, ing.era5_box_deg, 0, layout="cds")
                store.put_file(f, raw_key("era5", Path(f).name, site.name))
        save_model(str(root), filters, a.channels, a.n_heights, a.top_m, a.width)
        setup_s = time.perf_counter() - t0
        cfg = InferConfig(store_root=str(root), run_name="bench", mc_passes=a.passes, window_overlap=a.overlap,
                          batch_size=a.batch, device=a.device, plot=not a.no_plot, expected_release="R05",
                          mc_path=mc_path, fill_out_of_domain=True)   # time every profile's fill
        res = process_granule(str(root), key, cfg)
        if res.status != "done":
            raise SystemExit(f"benchmark granule not processed: {res.status} {res.reason}")
    t = {s: float(res.timings.get(s, 0.0)) for s in STAGES}
    total = sum(t.values())
    out = {"path": mc_path, "profiles": a.profiles, "passes": a.passes, "filters": list(filters), "channels": a.channels,
           "grid": [a.n_heights, a.top_m], "width": a.width, "overlap": a.overlap, "batch": a.batch,
           "device": a.device, "setup_s": round(setup_s, 1), "seconds": {k: round(v, 2) for k, v in t.items()},
           "total_s": round(total, 2), "torch_threads": torch.get_num_threads()}
    if a.profiles != FULL_PROFILES or a.passes != FULL_PASSES:
        k = FULL_PROFILES / a.profiles
        est = {"read": t["read"] * k, "regrid": t["regrid"] * k, "write": t["write"] * k,
               "inference": t["inference"] * k * FULL_PASSES / a.passes}
        out["extrapolated_full_granule_s"] = {k2: round(v, 1) for k2, v in est.items()} | \
            {"total": round(sum(est.values()), 1)}
    return out


def report(a: argparse.Namespace, path: str, out: dict) -> None:
    t, total = out["seconds"], out["total_s"]
    print(f"[{path} path] granule: {a.profiles} profiles x 125 bins, model filters {tuple(out['filters'])}, "
          f"{a.channels} channel(s), grid {a.n_heights} x {a.top_m:.0f} m, windows {a.width} (overlap {a.overlap}), "
          f"N = {a.passes} MC passes, device {a.device}, torch threads {out['torch_threads']}")
    print(f"  seconds per granule: {total:.1f} s   ({a.profiles / total:.0f} profiles/s)")
    for s in STAGES:
        print(f"    {s:<10} {t[s]:8.2f} s  {100 * t[s] / total:5.1f} %")
    est = out.get("extrapolated_full_granule_s")
    if est:
        tot = est["total"]
        print(f"  scaled to {FULL_PROFILES} profiles and N = {FULL_PASSES} (linear estimate): {tot:.0f} s "
              f"= {tot / 3600:.2f} h")
        for s in STAGES:
            print(f"    {s:<10} {est[s]:8.1f} s  {100 * est[s] / tot:5.1f} %")


if __name__ == "__main__":
    raise SystemExit(main())
