"""How often would a test split of N site-days give the report's 8-of-8 verdict? A bootstrap power analysis.

    python benchmarks/verdict_power.py --store bzpipe-data --run demo                 # on the dev winter
    python benchmarks/verdict_power.py --store bzpipe-data --run demo --units 37 74 104 --sims 200
    python benchmarks/verdict_power.py --store bzpipe-data --run demo --population test   # the run's own test

Scores ``--run`` with the evaluation stage (MC-dropout fill, baselines, mask) on a population of
patches, then resamples whole 3-day blocks of site-days from it into test splits of each ``--units``
size and scores each as the report does (:mod:`bzpipe.metrics.power`): the share of splits in which
each U-Net - baseline difference, and all eight, have a 90 % interval that excludes zero.

The population is the development winter (``benchmarks/dev_winter.py``: 190 site-days, every second
window, built once in ``--dev-store``), which is not the test split: the figures say what a test split
of each size would show for a model as skilled as this one is there.  ``--population test`` takes the
run's own test split instead (it first prints the whole split's differences, which equal the report's
``scores.json``: a check that the analysis scores as the report does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def population(store: str, run: str, which: str, dev_store: str, tiny: bool) -> tuple[Any, Any]:
    """The run scored on the population: (:class:`~bzpipe.metrics.power.PatchScores`, ScoreSettings)."""
    from bzpipe.config.loading import load_pipeline_config
    from bzpipe.evaluate import run_evaluation, score_settings
    from bzpipe.metrics.power import PatchScores
    from bzpipe.store import Store
    from bzpipe.torchdata import PatchDataset

    if which == "dev":
        import dev_winter

        cfg = dev_winter.dev_config(dev_store, tiny)
        dev_winter.ensure_dev_dataset(cfg)
        data_store, version, every = dev_store, dev_winter.VERSION, 2
    else:
        cfg = load_pipeline_config(str(Path(__file__).resolve().parents[1] / "flows/configs/offline-demo.yaml"),
                                   [f"store_root={store}"])
        data_store, version, every = store, cfg.evaluate.dataset, 1
    ev = cfg.evaluate.model_copy(update={"run_name": run, "dataset": version, "split": "test", "xai": False,
                                         "n_cases": 0, "seed_runs": [], "device": "cpu",
                                         "allow_dataset_mismatch": which == "dev"})
    n = len(PatchDataset(Store(data_store), version, "test"))
    res = run_evaluation(ev, Store(data_store), model_store=Store(store), indices=np.arange(0, n, every))
    f, st = res.fields, score_settings(ev)
    return PatchScores.score(f.truth, f.preds, f.row_above, res.valid, f.sites, f.times, st), st


def fmt(iv: Any) -> str:
    return f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    from bzpipe.metrics import bootstrap as bs
    from bzpipe.metrics.power import HEADLINE, ahead, headline_differences, verdict_power

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store root that holds the run (and its dataset)")
    p.add_argument("--run", required=True)
    p.add_argument("--population", choices=("dev", "test"), default="dev")
    p.add_argument("--dev-store", default=None, help="where dataset version 'dev' is (default: --store)")
    p.add_argument("--units", type=int, nargs="+", default=[37, 52, 74, 104])
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--block-days", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="the dev winter's three-week smoke version")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    print("machine:", machine_info(), flush=True)
    t = time.time()
    scores, st = population(a.store, a.run, a.population, a.dev_store or a.store, a.tiny)
    whole = headline_differences(scores, settings=st)
    won = ahead(whole)
    print(f"\n{a.run} on the {a.population} population: {scores.sites.size} patches, {bs.n_units(scores.units)} "
          f"site-days ({time.time() - t:.0f} s); {sum(v for r in won.values() for v in r.values())} of 8 ahead")
    for b, d in whole.items():
        print(f"  U-Net - {b}: " + "; ".join(f"{k} {fmt(iv)}" for k, iv in d.items()))
    out: dict[str, Any] = {"run": a.run, "population": a.population, "patches": int(scores.sites.size),
                           "site_days": bs.n_units(scores.units), "power": []}
    keys = [k for k, _ in HEADLINE]
    print(f"\nshare of {a.sims} resampled test splits ({a.block_days}-day blocks) that are significantly ahead:")
    print("  site-days | all 8 | " + " | ".join(f"{b} {k}" for b in ("REP", "MAR") for k in keys))
    for n in a.units:
        t = time.time()
        r = verdict_power(scores, n, n_sims=a.sims, block_days=a.block_days, settings=st)
        out["power"].append(r)
        print(f"  {r['n_units']:9.1f} | {r['all_ahead']:5.0%} | "
              + " | ".join(f"{r['ahead'][b][k]:.0%}" for b in ("REP", "MAR") for k in keys)
              + f"   ({time.time() - t:.0f} s)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
