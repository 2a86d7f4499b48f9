"""The report's plain statement: is the U-Net ahead of REP and MAR on the four headline scores?

The headline scores are MAE, blind-zone cloud-presence CSI, shallow-snowfall
CSI and virga CSI (King et al. 2024; REP cannot produce the last two by
construction, which is where a learned fill must earn its place).  Each
U-Net-minus-baseline difference carries its paired block-bootstrap interval
(:mod:`bzpipe.metrics.bootstrap`); "significantly ahead" means the interval
excludes zero.  The statement is computed from the scores, never written by
hand: where the U-Net is not ahead, the report says so in its first lines,
with the numbers and the likely reasons that can be read off the run
(undefined scores, an event absent from the test split, intervals that include
zero, a short training run, few test patches).
"""

from __future__ import annotations

import math
from typing import Any

from bzpipe.metrics.summary import HEADLINE

#: how the report names each headline score
HEADLINE_LABELS = {"MAE": "MAE", "cloud_CSI": "cloud-presence CSI",
                   "shallow_snowfall_CSI": "shallow-snowfall CSI", "virga_CSI": "virga CSI"}
#: (summary key, label, lower is better), in :data:`bzpipe.metrics.summary.HEADLINE`'s order
HEADLINE_SCORES: tuple[tuple[str, str, bool], ...] = tuple((k, HEADLINE_LABELS[k], lower)
                                                            for k, lower in HEADLINE)
#: event of each event score, and how the report names it
EVENT_NAMES = {"cloud": "blind-zone cloud", "shallow_snowfall": "shallow-snowfall", "virga": "virga"}


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _estimate(entry: dict[str, Any], key: str) -> dict[str, float]:
    node = entry[key] if key in entry else entry[key.rpartition("_")[0]][key.rpartition("_")[2]]
    if hasattr(node, "to_dict"):
        node = node.to_dict()
    return {k: _num(node.get(k)) for k in ("estimate", "low", "high")}


def _fmt(v: float, unit: str = "") -> str:
    return "undefined" if not math.isfinite(v) else f"{v:.3g}{unit}"


def verdict(summary: dict[str, Any], reference: str = "UNET", baselines: tuple[str, ...] = ("REP", "MAR"),
            site: str = "all", context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare ``reference`` with each baseline on the :data:`HEADLINE_SCORES`.

    Returns ``{"ahead": bool, "headline": str, "checks": [...], "reasons": [...]}``;
    each check has the two estimates, the paired difference interval and whether the
    reference is ahead (strictly better estimate) and significantly so (interval
    excludes 0).  ``context`` (optional): ``epoch``, ``val_loss``, ``split``, ``model`` for the reasons.
    """
    ctx = context or {}
    scores = summary["scores"][site]
    diffs = summary.get("differences", {}).get(site, {})
    n = summary.get("n_patches", {}).get(site, 0)
    conf = summary.get("settings", {}).get("confidence", 0.9)
    present = [b for b in baselines if b in scores]
    checks: list[dict[str, Any]] = []
    for b in present:
        for key, label, lower in HEADLINE_SCORES:
            u, v = _estimate(scores[reference], key), _estimate(scores[b], key)
            d = (_estimate(diffs[b], key) if b in diffs
                 else {"estimate": u["estimate"] - v["estimate"], "low": math.nan, "high": math.nan})
            defined = math.isfinite(u["estimate"]) and math.isfinite(v["estimate"])
            ahead = defined and (u["estimate"] < v["estimate"] if lower else u["estimate"] > v["estimate"])
            significant = ahead and (d["high"] < 0 if lower else d["low"] > 0)
            tied = defined and u["estimate"] == v["estimate"]
            checks.append({"baseline": b, "score": label, "key": key, "reference": u["estimate"],
                           "other": v["estimate"], "difference": d, "defined": defined, "ahead": bool(ahead),
                           "tied": bool(tied), "significant": bool(significant), "lower_is_better": lower})
    all_ahead = bool(checks) and all(c["ahead"] for c in checks)
    split = ctx.get("split", "test")
    names = " and ".join(present) or "no baseline"
    labels = ", ".join(label for _, label, _ in HEADLINE_SCORES)
    absent = [e for e in summary.get("undefined_events", {}).get(site, []) if e in EVENT_NAMES]
    if not checks:
        headline = (f"No REP/MAR baseline was run, so the U-Net cannot be compared with them on the "
                    f"{split} split.")
    elif all_ahead:
        sig = all(c["significant"] for c in checks)
        weak = [f"{c['score']} vs {c['baseline']}" for c in checks if not c["significant"]]
        headline = (f"On the {split} split the U-Net is ahead of {names} on {labels}"
                    + (f", every difference outside zero in its {conf:.0%} block-bootstrap interval."
                       if sig else
                       f"; but the {conf:.0%} block-bootstrap interval includes zero for: " + "; ".join(weak)
                       + "."))
    else:
        lost = [c for c in checks if not c["ahead"]]
        parts = [f"{c['score']} vs {c['baseline']} (not scored: no {EVENT_NAMES[e]} event in the "
                 f"{split} split)"
                 if (e := c["key"].rsplit("_", 1)[0]) in absent else
                 f"{c['score']} vs {c['baseline']} ({'tied: ' if c['tied'] else ''}U-Net "
                 f"{_fmt(c['reference'])}, {c['baseline']} {_fmt(c['other'])})" for c in lost]
        headline = f"The U-Net is NOT ahead of {names} on the {split} split on: " + "; ".join(parts) + "."
    reasons: list[str] = []
    for e in absent:
        reasons.append(f"the {split} split holds no {EVENT_NAMES[e]} event in the truth ({n} patches): its "
                       "POD, CSI and HSS are undefined and not scored (not 0/0).")
    if not all_ahead and checks:
        if any(not c["defined"] for c in checks if not any(c["key"].startswith(e) for e in absent)):
            reasons.append("an event score is undefined (0/0) for a method: hits + misses + false alarms = 0 "
                           "(no event in the truth nor in that method's fill).")
        if any(c["tied"] and c["key"] == "cloud_CSI" for c in checks):
            reasons.append("cloud-presence CSI is tied: both methods get the same hits, misses and false "
                           "alarms (e.g. every blind-zone cloud is detected without false alarms), so this "
                           "score cannot separate them on this split.")
        close = [c for c in checks if not c["ahead"] and c["defined"] and not c["tied"]
                 and math.isfinite(c["difference"]["low"])
                 and c["difference"]["low"] <= 0 <= c["difference"]["high"]]
        if close:
            reasons.append("the difference " + ", ".join(f"{c['score']} vs {c['baseline']}" for c in close)
                           + f" lies within the {conf:.0%} bootstrap interval of zero: the test split "
                           f"({n} patches) does not separate the methods.")
        if n < 30:
            reasons.append(f"only {n} test patches were scored.")
        if "epoch" in ctx:
            reasons.append(f"the model is the checkpoint of epoch {ctx['epoch']} (validation loss "
                           f"{_fmt(_num(ctx.get('val_loss')))}); a short or early-stopped run may simply be "
                           "undertrained.")
        if any(c["baseline"] == "REP" and not c["ahead"] for c in checks):
            reasons.append("REP is exact wherever the blind zone simply continues the echo just above it "
                           "(vertically uniform echo); the more such patches the split holds, the harder REP "
                           "is to beat.")
    check = summary.get("dataset_check") or {}
    if check.get("overridden"):   # evaluated on a dataset the model was not trained on (bzpipe.checkpoint)
        headline = "NOT A HELD-OUT TEST: " + str(check.get("note", "")) + ". " + headline
    return {"ahead": all_ahead, "headline": headline, "checks": checks, "reasons": reasons, "site": site}
