"""Spread across training seeds: the scores of several runs that differ only in their seed.

The block bootstrap (:mod:`bzpipe.metrics.bootstrap`) measures how much a score
depends on which test days were drawn; it says nothing about how much it
depends on the training run.  Runs with other seeds, scored on the same test
patches against the same baselines, give that: mean +- sample standard
deviation of the U-Net's headline scores and of its differences to each
baseline.  One run gives the values with no spread (sd ``None``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the headline scores (as in :mod:`bzpipe.report.verdict`)
SEED_KEYS: tuple[str, ...] = ("MAE", "cloud_CSI", "shallow_snowfall_CSI", "virga_CSI")


def _estimate(entry: dict[str, Any], key: str) -> float:
    node = entry[key] if key in entry else entry[key.rpartition("_")[0]][key.rpartition("_")[2]]
    if hasattr(node, "to_dict"):
        node = node.to_dict()
    v = node.get("estimate") if isinstance(node, dict) else node
    return float("nan") if v is None else float(v)


def headline_values(summary: dict[str, Any], reference: str = "UNET",
                    baselines: tuple[str, ...] = ("REP", "MAR"), site: str = "all") -> dict[str, float]:
    """``{"UNET.MAE": .., "UNET-REP.MAE": .., ...}``: the reference's headline scores and its differences."""
    out: dict[str, float] = {}
    scores = summary["scores"][site]
    diffs = summary.get("differences", {}).get(site, {})
    for k in SEED_KEYS:
        out[f"{reference}.{k}"] = _estimate(scores[reference], k)
        for b in baselines:
            if b in diffs:
                out[f"{reference}-{b}.{k}"] = _estimate(diffs[b], k)
    return out


def across_seeds(values: list[dict[str, float]], runs: list[str]) -> dict[str, Any]:
    """``{"runs": [...], "n": k, "stats": {key: {"mean", "sd", "values"}}}`` (sd: ddof 1, None for one run;
    NaN values, e.g. an undefined score, are left out of that key's mean and sd)."""
    if len(values) != len(runs):
        raise ValueError(f"{len(values)} score sets for {len(runs)} runs")
    stats: dict[str, Any] = {}
    for key in values[0] if values else []:
        v = np.array([d.get(key, np.nan) for d in values], dtype=np.float64)
        ok = v[np.isfinite(v)]
        stats[key] = {"mean": float(ok.mean()) if ok.size else None,
                      "sd": float(ok.std(ddof=1)) if ok.size > 1 else None,
                      "values": [None if not np.isfinite(x) else float(x) for x in v]}
    return {"runs": list(runs), "n": len(runs), "stats": stats}
