"""How often would a test split of N site-days give the report's 8-of-8 verdict? A bootstrap power analysis.

    python benchmarks/verdict_power.py --store bzpipe-data --run demo                 # on the dev winter
    python benchmarks/verdict_power.py --store bzpipe-data --run demo --units 37 74 104 --sims 200
    python benchmarks/verdict_power.py --store bzpipe-data --run demo --population test   # the run's own test
    python benchmarks/verdict_power.py --store bzpipe-data --run demo --hours 1 --every 1 --units 250 300
    python benchmarks/verdict_power.py --store bzpipe-data --run demo --dev-store /scratch/dev --winter 2020 --every 1

Scores ``--run`` with the evaluation stage (MC-dropout fill, baselines, mask) on a population of
patches, then resamples whole 3-day blocks of site-days from it into test splits of each ``--units``
size and scores each as the report does (:mod:`bzpipe.metrics.power`): the share of splits in which
each U-Net - baseline difference, and all eight, have a 90 % interval that excludes zero.

The population is the development winter (``benchmarks/dev_winter.py``: 190 site-days, every second
window, built once in ``--dev-store``), which is not the test split: the figures say what a test split
of each size would show for a model as skilled as this one is there.  ``--population test`` takes the
run's own test split instead (it first prints the whole split's differences, which equal the report's
``scores.json``: a check that the analysis scores as the report does).  ``--hours H`` keeps only the
windows that lie wholly in the first H hours of their UTC day: the windows a design of H-hour days
would have (the generator's days start at midnight), to weigh more, shorter days against fewer,
longer ones.
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


def first_hours(times: np.ndarray, width_s: float, hours: float) -> np.ndarray:
    """Whether each window (start ``times``, ``width_s`` long) lies wholly in the first ``hours`` of its UTC day."""
    t = np.asarray(times).astype("datetime64[ns]")
    since_midnight = (t - t.astype("datetime64[D]")).astype("timedelta64[ns]").astype(np.int64) / 1e9
    return since_midnight + width_s <= hours * 3600.0 + 1e-6


def population(store: str, run: str, which: str, dev_store: str, tiny: bool, every: int | None = None,
               hours: float | None = None, winter: int = 2017) -> tuple[Any, Any]:
    """The run scored on the population: (:class:`~bzpipe.metrics.power.PatchScores`, ScoreSettings)."""
    from bzpipe.config.loading import load_pipeline_config
    from bzpipe.evaluate import run_evaluation, score_settings
    from bzpipe.metrics.power import PatchScores
    from bzpipe.store import Store
    from bzpipe.torchdata import PatchDataset

    if which == "dev":
        import dev_winter

        cfg = dev_winter.dev_config(dev_store, tiny, winter)
        dev_winter.ensure_dev_dataset(cfg)
        data_store, version, every = dev_store, cfg.build.version, every or 2
    else:
        cfg = load_pipeline_config(str(Path(__file__).resolve().parents[1] / "flows/configs/offline-demo.yaml"),
                                   [f"store_root={store}"])
        data_store, version, every = store, cfg.evaluate.dataset, every or 1
    ev = cfg.evaluate.model_copy(update={"run_name": run, "dataset": version, "split": "test", "xai": False,
                                         "n_cases": 0, "seed_runs": [], "device": "cpu",
                                         "allow_dataset_mismatch": which == "dev"})
    from bzpipe.evaluate import split_coords

    data = PatchDataset(Store(data_store), version, "test")
    idx = np.arange(0, len(data), every)
    if hours is not None:
        width_s = data.shape[-1] * cfg.build.grid.time_step_s
        idx = idx[first_hours(split_coords(data)["time_start"][idx], width_s, hours)]
    res = run_evaluation(ev, Store(data_store), model_store=Store(store), indices=idx)
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
    p.add_argument("--units", type=int, nargs="+", default=[37, 52, 74, 104],
                   help="test-split sizes to draw, in site-days")
    p.add_argument("--sims", type=int, default=200)
    p.add_argument("--block-days", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="the dev winter's three-week smoke version")
    p.add_argument("--every", type=int, default=None,
                   help="every N-th window of the population (default: 2 on the dev winter, 1 on test)")
    p.add_argument("--hours", type=float, default=None,
                   help="only the windows in the first H hours of each UTC day (a design of H-hour days)")
    p.add_argument("--winter", type=int, default=2017,
                   help="the development winter (dev_winter.py --winter): 2017 (2017-18) or 2020 (2020-21)")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    print("machine:", machine_info(), flush=True)
    t = time.time()
    scores, st = population(a.store, a.run, a.population, a.dev_store or a.store, a.tiny, a.every, a.hours,
                            a.winter)
    whole = headline_differences(scores, settings=st)
    won = ahead(whole)
    site_days = len({(s, d) for s, d in zip(scores.sites, scores.days, strict=True)})
    print(f"\n{a.run} on the {a.population} population: {scores.sites.size} patches, {site_days} site-days, "
          f"{bs.n_units(scores.units)} bootstrap units of {st.bootstrap_unit_hours:g} h ({time.time() - t:.0f} s); "
          f"{sum(v for r in won.values() for v in r.values())} of 8 ahead")
    for b, d in whole.items():
        print(f"  U-Net - {b}: " + "; ".join(f"{k} {fmt(iv)}" for k, iv in d.items()))
    out: dict[str, Any] = {"run": a.run, "population": a.population, "every": a.every, "hours": a.hours,
                           "patches": int(scores.sites.size),
                           "site_days": site_days, "units": bs.n_units(scores.units),
                           "unit_hours": st.bootstrap_unit_hours, "power": []}
    keys = [k for k, _ in HEADLINE]
    print(f"\nshare of {a.sims} resampled test splits ({a.block_days}-day blocks) that are significantly ahead:")
    print("  site-days | units | all 8 | " + " | ".join(f"{b} {k}" for b in ("REP", "MAR") for k in keys))
    for n in a.units:
        t = time.time()
        r = verdict_power(scores, n, n_sims=a.sims, block_days=a.block_days, settings=st)
        out["power"].append(r)
        print(f"  {r['n_site_days']:9.1f} | {r['n_units']:5.1f} | {r['all_ahead']:5.0%} | "
              + " | ".join(f"{r['ahead'][b][k]:.0%}" for b in ("REP", "MAR") for k in keys)
              + f"   ({time.time() - t:.0f} s)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
