"""A self-contained HTML page: verdict, score tables, figures embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from bzpipe.metrics import regimes
from bzpipe.report import tables

CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f2f2f2} tr.ref td{font-weight:bold}
.verdict{padding:.8em 1em;border-radius:6px;margin:1em 0}
.ok{background:#e7f5e7;border:1px solid #6a6} .bad{background:#fdecea;border:1px solid #c66}
img{max-width:100%;border:1px solid #eee;margin:.5em 0} .note{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:.8em}
"""

FIGURE_CAPTIONS: dict[str, str] = {
    "curtains": "Example curtains: truth, REP, MAR and the U-Net MC mean; U-Net MC spread; mean profiles "
                "with the U-Net quantile interval shaded. Dashed: top of the blind zone.",
    "scores": "Blind-zone scores per method with bootstrap intervals.",
    "performance": "Performance diagram (Roebber 2009) for blind-zone cloud presence, shallow snowfall and "
                   "virga; grey contours are CSI, dashed lines frequency bias.",
    "psd": "Vertical power spectral density of blind-zone reflectivity.",
    "cloud_base": "Lowest-echo (cloud-base) height per profile.",
    "uncertainty": "Uncertainty quality of MC dropout: spread-skill and interval coverage.",
    "saliency": "Explainability: vanilla-gradient saliency per input channel and drop-channel importance.",
    "features": "Encoder feature maps of one case.",
}


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render(title: str, verdict: dict[str, Any], summary: dict[str, Any], figures: dict[str, bytes],
           info: dict[str, Any]) -> str:
    """The report page.  ``info``: ``model`` (meta subset), ``config``, ``provenance``, ``mask`` rule."""
    ref = summary.get("reference")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    cls = "ok" if verdict["ahead"] else "bad"
    parts.append(f"<div class='verdict {cls}'><b>{html.escape(verdict['headline'])}</b>")
    if verdict["reasons"]:
        items = "".join(f"<li>{html.escape(r)}</li>" for r in verdict["reasons"])
        parts.append(f"<p>Why this may be so:</p><ul>{items}</ul>")
    parts.append("</div>")
    checks = [[c["baseline"], c["score"], f"{c['reference']:.3g}", f"{c['other']:.3g}",
               tables.fmt_interval(c["difference"]), "yes" if c["ahead"] else "NO",
               "yes" if c["significant"] else "no"] for c in verdict["checks"]]
    if checks:
        parts.append(tables.to_html(["baseline", "score", "U-Net", "baseline value", "U-Net minus baseline",
                                     "U-Net ahead", "significant"], checks))
    mask = summary.get("mask", {})
    boot = (summary.get("bootstrap") or {}).get("all", {})
    excl = summary.get("patch_exclusion") or {}
    chosen = (summary.get("sample_selection") or {}).get("rule", "not recorded")
    split = (summary.get("sample_selection") or {}).get("split_rule", "not recorded")
    parts.append(f"<p class='note'>Evaluation mask (the same for every method): "
                 f"{html.escape(str(mask.get('rule', 'blind zone')))}; {mask.get('valid', '?')} of "
                 f"{mask.get('pixels', '?')} blind-zone pixels scored. Patches: "
                 f"{html.escape(json.dumps(summary.get('n_patches', {})))}. No echo counts as -60 dBZ in "
                 "MAE/RMSE/bias/EMD/PSD; echo is &gt; -60 dBZ. Intervals: "
                 f"{summary['settings'].get('confidence', 0.9):.0%} block bootstrap "
                 f"({html.escape(str(boot.get('unit', 'patch')))} blocks, {boot.get('units', '?')} of them; "
                 f"{summary['settings'].get('n_bootstrap')} resamples, paired across methods, stratified by "
                 "site; percentile interval expanded for few blocks). "
                 f"{html.escape(str(excl.get('rule', 'No test patch excluded')))}. "
                 f"Samples: {html.escape(str(chosen))}. Split: {html.escape(str(split))}. "
                 "U-Net MC statistics per pass "
                 "in dBZ (King et al. 2024): mean and spread of the per-pass dBZ, no echo = -60 dBZ.</p>")
    events = summary.get("events_in_truth", {}).get("all")
    if events:
        parts.append("<p class='note'>Events in the truth (patches): "
                     + html.escape(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in events.items()))
                     + "</p>")
    if (summary.get("seeds") or {}).get("stats"):
        parts.append("<h2>Spread across training seeds</h2><p class='note'>The same test patches and "
                     "baseline fills scored with each training run; mean ± sample sd (the bootstrap "
                     "intervals above are for the first run).</p>")
        parts.append(tables.to_html(*tables.seed_rows(summary)))
    for site in summary["scores"]:
        parts.append(f"<h2>Scores: {html.escape(site)}</h2>")
        parts.append(tables.to_html(*tables.main_rows(summary, site), highlight=ref))
        if summary.get("differences", {}).get(site):
            parts.append("<p class='note'>Paired differences (negative MAE/RMSE/EMD and positive "
                         "Dice/CSI/HSS favour the U-Net):</p>")
            parts.append(tables.to_html(*tables.difference_rows(summary, site)))
        if (summary.get("regimes") or {}).get(site):
            parts.append("<p class='note'>MAE by what the truth holds in the lowest visible row (above) and "
                         f"the lowest {regimes.LOW_ROWS} blind-zone rows (below; echo in more than "
                         f"{regimes.MIN_FRACTION:.0%} of their pixels): REP is nearly exact in the first and "
                         "last classes and cannot be right in the middle two.</p>")
            parts.append(tables.to_html(*tables.regime_rows(summary, site)))
        for ev, label in (("cloud", "blind-zone cloud presence"), ("shallow_snowfall", "shallow snowfall"),
                          ("virga", "virga")):
            parts.append(f"<p class='note'>Contingency table: {label}</p>")
            parts.append(tables.to_html(*tables.event_rows(summary, site, ev), highlight=ref))
    unc = summary.get("uncertainty")
    if unc:
        cov = "; ".join(f"{c['lower_q']:g}-{c['upper_q']:g} interval holds the truth for "
                        f"{(c['observed'] if c['observed'] is not None else float('nan')):.1%} of pixels "
                        f"(nominal {c['nominal']:.0%})" for c in unc.get("coverage", []))
        ratio = unc.get("spread_skill_ratio")
        parts.append("<h2>Uncertainty (MC dropout)</h2><p>Spread-skill ratio (RMS spread / RMSE; 1 = "
                     f"calibrated, &lt; 1 over-confident): {ratio if ratio is None else f'{ratio:.2f}'}. "
                     f"{html.escape(cov)}.</p>")
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        caption = html.escape(FIGURE_CAPTIONS.get(name, ""))
        parts.append(f"<h3>{html.escape(name)}</h3><p class='note'>{caption}</p>{img_tag(png, name)}")
    parts.append("<h2>Provenance</h2>")
    for key in ("model", "config", "provenance"):
        if key in info:
            parts.append(f"<details><summary>{key}</summary><pre>"
                         f"{html.escape(json.dumps(info[key], indent=2, sort_keys=True, default=str))}"
                         "</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)
