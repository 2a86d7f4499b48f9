"""Skill of the full-size paper model on a GPU: 6 months x 2 sites, 3 training seeds (not a test).

    python benchmarks/bench_skill_gpu.py --store /scratch/bzpipe-skill            # the full benchmark (GPU)
    python benchmarks/bench_skill_gpu.py --store /tmp/skill --tiny               # smoke test, minutes on CPU
    python benchmarks/bench_skill_gpu.py --store /scratch/bzpipe-skill --report   # print a finished run again

Runs the whole pipeline (``flows.pipeline``, no CloudSat granule) on the offline
generator with the paper's settings: NSA + OLI, November 2018 - April 2019 (6
months of 24-h days), the 128 x 128 grid of King et al. (128 rows over 10 km,
4-s steps, 16 blind-zone rows; test windows overlapping by half, as the
authors'), the full-size UNet3+ (32..512 filters, deep supervision, no REP
prior), Adam 5e-5 with warm-up and cosine decay, Keras batch-norm settings,
batch 16, ``--epochs`` epochs of ``--batches`` batches, seeds 0, 1, 2 (each its
own run), N = 50 MC-dropout passes.  Then it prints the verdict table of the
report: every method's MAE and cloud / shallow-snowfall / virga CSI with 90 %
block-bootstrap intervals, and the U-Net's scores and its differences to REP
and MAR as mean +- sd across the three seeds, with the machine it ran on.

It runs on CPU as well (slowly: days for the full size); ``--tiny`` shrinks
everything (1 month, 64 x 64 patches, tiny filters, 2 seeds, a few batches,
4 MC passes) to check the script end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RUN = "skill"


def skill_config(store: str, tiny: bool, epochs: int, batches: int, seeds: list[int], device: str) -> dict[str, Any]:
    """The pipeline configuration of the benchmark (see the module docstring)."""
    if tiny:
        return {
            "store_root": store, "sites": ["nsa", "oli"], "start": "2019-01-01", "end": "2019-01-31", "seed": 7,
            "ingest": {"kazr_source": "offline", "era5_source": "offline",
                       "synthetic": {"hours_per_day": 6, "cloudsat_profiles": 200}},
            "build": {"version": RUN, "overwrite": True, "grid": {"n_heights": 64, "top_m": 5000, "time_step_s": 8},
                      "patch": {"width": 64, "blind_zone_rows": 16, "eval_stride": 32}},
            "train": {"run_name": RUN, "resume": False, "seeds": seeds[:2], "filters": [4, 8, 8, 8, 8],
                      "epochs": 1, "max_batches_per_epoch": 2, "max_val_batches": 2, "lr": 1e-3,
                      "device": device},
            "evaluate": {"mc_passes": 4, "max_patches": 32, "n_bootstrap": 50, "xai": False, "n_cases": 1,
                         "device": device},
        }
    return {
        "store_root": store, "sites": ["nsa", "oli"], "start": "2018-11-01", "end": "2019-04-30", "seed": 7,
        "ingest": {"kazr_source": "offline", "era5_source": "offline", "synthetic": {"hours_per_day": 24}},
        "build": {"version": RUN, "overwrite": False, "grid": {"n_heights": 128, "top_m": 10000, "time_step_s": 4},
                  "patch": {"width": 128, "blind_zone_rows": 16, "eval_stride": 64}},
        "train": {"run_name": RUN, "resume": True, "seeds": seeds, "epochs": epochs,
                  "max_batches_per_epoch": batches, "batch_size": 16, "lr": 5e-5, "warmup_epochs": 2,
                  "patience": max(10, epochs // 4), "device": device},
        "evaluate": {"mc_passes": 50, "n_bootstrap": 1000, "device": device},
    }


def table(scores: dict[str, Any]) -> str:
    """The verdict table: methods x headline scores (90 % block-bootstrap intervals), then the seeds."""
    from bzpipe.report import tables

    summary = scores["summary"]
    keys = [("MAE", "MAE (dBZ)"), ("cloud_CSI", "cloud CSI"), ("shallow_snowfall_CSI", "shallow-snow CSI"),
            ("virga_CSI", "virga CSI")]
    lines = ["| method | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m in ("UNET", "REP", "MAR"):
        if m in summary["scores"]["all"]:
            e = summary["scores"]["all"][m]
            lines.append(f"| {m} | " + " | ".join(tables.fmt_interval(tables.node(e, k)) for k, _ in keys) + " |")
    lines += ["", "U-Net minus baseline (90 % block-bootstrap interval, first seed):"]
    for b, d in summary.get("differences", {}).get("all", {}).items():
        if b in ("REP", "MAR"):
            lines.append(f"  {b}: " + "; ".join(f"{label} {tables.fmt_interval(d[k])}" for k, label in keys))
    if summary.get("seeds"):
        lines += ["", f"Across {summary['seeds']['n']} training seeds (mean ± sd):",
                  tables.to_markdown(*tables.seed_rows(summary))]
    lines += ["", f"Verdict: {scores['verdict']['headline']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="store root (local folder or s3://) for the data and results")
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny data, model and training")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batches", type=int, default=250, help="batches of 16 per epoch (the authors': 250)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument("--report", action="store_true", help="only print the table of a finished run")
    p.add_argument("--json", help="also write the scores and timings here")
    a = p.parse_args(argv)

    from bzpipe.store import Store
    from bzpipe.store.layout import report_key

    cfg = skill_config(a.store, a.tiny, a.epochs, a.batches, a.seeds, a.device)
    t0 = time.perf_counter()
    if not a.report:
        from flows.pipeline import pipeline

        state = pipeline(config=_pipeline_config(cfg), sample_granule=False, return_state=True)
        if not state.is_completed():
            print(f"pipeline ended {state.type.value}: {state.message}")
            return 1
    wall = time.perf_counter() - t0
    scores = Store(a.store).read_json(report_key(RUN, "scores.json"))
    print(f"\nbzpipe skill benchmark ({'tiny smoke test' if a.tiny else 'full size'}), wall {wall / 3600:.2f} h")
    print(json.dumps(machine_info()))
    print(table(scores))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine_info(), "wall_s": wall, "config": cfg,
                                            "summary": scores["summary"], "verdict": scores["verdict"]},
                                           indent=1, default=str))
    return 0


def _pipeline_config(cfg: dict[str, Any]) -> Any:
    from bzpipe.config import load_pipeline_config

    return load_pipeline_config(None, cfg)


if __name__ == "__main__":
    raise SystemExit(main())
