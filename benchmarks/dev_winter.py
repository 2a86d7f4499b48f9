"""Score trained runs on an independent development winter (not a test): where the demo's settings are decided.

    python benchmarks/dev_winter.py --store bzpipe-data --runs demo                    # after the main job
    python benchmarks/dev_winter.py --store bzpipe-data --runs bzpipe-data:demo /scratch/lr:lr1_s7 ...
    python benchmarks/dev_winter.py --store /tmp/dev --runs demo --tiny               # smoke test (minutes)
    python benchmarks/dev_winter.py --store /scratch/dev --winter 2020 --runs bzpipe-data:demo  # the second

The demo's validation split is six 3-day blocks, too few to stand for the test split: in the demo,
8 % of its patches have echo through the blind zone against 30 % of the test patches, and neither the
U-Net's loss there nor its false echo under clear air shows on it.  A second winter from the same
sources does: this script ingests (offline generator) and builds, once, dataset version ``dev`` in
``--store`` from the winter before the demo's (2017-11-01 .. 2018-03-31; the demo's sites, grid,
patches and King et al.'s sample filter; 95 % of its blocks in its "test" split, the rest only
because every split needs a block), then scores each run on that split: the same MC-dropout fill,
baselines, mask and block bootstrap as the evaluation stage, the patches read in the run's own
ERA-5 normalization (:func:`bzpipe.dataset.normalization.renormalization`).  It prints each run's
U-Net - REP and U-Net - MAR with 90 % intervals, the U-Net - REP MAE per class of patch, and the
mean +- sd over the runs.  Nothing of the demo's test split is read.

A run is ``RUN`` (a model in ``--store``) or ``STORE:RUN`` (a model in another store, e.g. a
scratch sweep); every run must use the demo's grid and channels.

``--winter 2020`` takes the second development winter, 2020-21 (dataset version ``dev2020``): its
days are 1 h long from the demo's ``hours_per_day_from``, as the test winter's are, so it has the
test's design without being the test.  A setting that the first development winter cannot tell
apart from another (a failure it does not show) is decided on both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

DEMO = Path(__file__).resolve().parents[1] / "flows" / "configs" / "offline-demo.yaml"
VERSION = "dev"
#: development winters (November of this year to March of the next), never the demo's training
#: (2018-19) or test (2019-20) winter; the first is 2017-18, with the demo's 6-h days, the second
#: 2020-21, whose days are 1 h long like the test winter's (the demo's ``hours_per_day_from``)
WINTERS = (2017, 2020)
SCORES = ("MAE", "cloud_CSI", "shallow_snowfall_CSI", "virga_CSI")


def dev_version(winter: int = WINTERS[0]) -> str:
    """Dataset version of a development winter: ``dev`` for 2017-18, ``dev2020`` for 2020-21."""
    if winter not in WINTERS:
        raise ValueError(f"development winter {winter} is not one of {WINTERS} (2018-19 trains, 2019-20 tests)")
    return VERSION if winter == WINTERS[0] else f"{VERSION}{winter}"


def dev_config(store: str, tiny: bool, winter: int = WINTERS[0]) -> Any:
    """The demo's pipeline config moved to a development winter (dataset version :func:`dev_version`)."""
    from bzpipe.config.loading import load_pipeline_config

    version = dev_version(winter)
    start, end = ((f"{winter + 1}-01-01", f"{winter + 1}-01-21") if tiny
                  else (f"{winter}-11-01", f"{winter + 1}-03-31"))
    over = [f"store_root={store}", f"start={start}", f"end={end}", f"build.version={version}",
            "build.overwrite=true", "build.split.fractions=[0.02,0.03,0.95]", "build.split.test_from=null"]
    if tiny:
        over += ["build.split.min_block_days=1", "evaluate.mc_passes=2", "evaluate.n_bootstrap=50"]
    return load_pipeline_config(str(DEMO), over)


def ensure_dev_dataset(cfg: Any) -> str:
    """Ingest the winter (files already present are skipped) and build its version (:func:`dev_version`;
    skipped when built with the same recipe, rebuilt when code or config changed, as the demo); returns
    its URI."""
    from bzpipe import ingest
    from bzpipe.dataset.build import build_dataset

    t = time.time()
    done = ingest.ingest_batch(ingest.plan(cfg.ingest, ("kazr", "met", "era5")), cfg.ingest)
    ingest.drop_offline_pool()
    print(f"ingest: {len(done)} files in {time.time() - t:.0f} s", flush=True)
    t = time.time()
    uri = build_dataset(cfg.build)
    print(f"build: {uri} in {time.time() - t:.0f} s", flush=True)
    return uri


def evaluation_config(cfg: Any, run: str) -> Any:
    """The demo's evaluation settings for model ``run`` on the development winter's test split (CPU, no
    report extras; the winter's own build, so a dataset mismatch with the model is expected)."""
    return cfg.evaluate.model_copy(update={"run_name": run, "dataset": cfg.build.version, "split": "test",
                                           "xai": False, "n_cases": 0, "seed_runs": [],
                                           "allow_dataset_mismatch": True, "device": "cpu"})


def score_run(cfg: Any, store: str, spec: str, every: int = 1) -> dict[str, Any]:
    """One run's summary on every ``every``-th patch of the dev winter's test split: the evaluation
    stage itself (:func:`bzpipe.evaluate.run_evaluation`: the model's own ERA-5 normalization, the
    bright-patch exclusion, mask and scores) with the model read from its own store; 2: the windows
    that do not overlap, half the time."""
    from bzpipe.evaluate import run_evaluation
    from bzpipe.metrics.summary import to_json
    from bzpipe.store import Store
    from bzpipe.torchdata import PatchDataset

    model_store, run = spec.rsplit(":", 1) if ":" in spec else (store, spec)
    ev = evaluation_config(cfg, run)
    n = len(PatchDataset(Store(store), ev.dataset, "test"))
    res = run_evaluation(ev, Store(store), model_store=Store(model_store), indices=np.arange(0, n, every))
    return to_json(res.summary)


def fmt(v: dict[str, Any]) -> str:
    return f"{v['estimate']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store root that holds (or gets) dataset version 'dev'")
    p.add_argument("--runs", nargs="+", required=True, help="RUN or STORE:RUN")
    p.add_argument("--every", type=int, default=1, help="score every N-th test window (2: no overlap)")
    p.add_argument("--tiny", action="store_true", help="three weeks, 2 MC passes: a smoke test")
    p.add_argument("--winter", type=int, default=WINTERS[0], choices=WINTERS,
                   help="the development winter's first year (default 2017: 2017-18)")
    a = p.parse_args(argv)
    print("machine:", machine_info(), flush=True)
    cfg = dev_config(a.store, a.tiny, a.winter)
    ensure_dev_dataset(cfg)
    diffs: dict[tuple[str, str], list[float]] = {}
    for spec in a.runs:
        t = time.time()
        s = score_run(cfg, a.store, spec, a.every)
        d = s["differences"]["all"]
        print(f"\n{spec}: {s['n_patches']['all']} patches, {time.time() - t:.0f} s", flush=True)
        for base in ("REP", "MAR"):
            print(f"  U-Net - {base}: " + "; ".join(f"{k} {fmt(d[base][k])}" for k in SCORES))
            for k in SCORES:
                diffs.setdefault((base, k), []).append(d[base][k]["estimate"])
        print("  U-Net - REP MAE by class: " + "; ".join(
            f"{c} ({e['share']:.0%}) {e['MAE_difference']['REP']['estimate']:+.2f}"
            for c, e in s["regimes"]["all"].items() if e["MAE_difference"]["REP"]["estimate"] is not None))
    if len(a.runs) > 1:
        print("\nmean +- sd over the runs:")
        for base in ("REP", "MAR"):
            print(f"  U-Net - {base}: " + "; ".join(
                f"{k} {np.mean(diffs[(base, k)]):+.3f} +- {np.std(diffs[(base, k)], ddof=1):.3f}" for k in SCORES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
