"""Score tables from the summary dict, as rows of strings (for HTML and Markdown)."""

from __future__ import annotations

import html
import math
from typing import Any

from bzpipe.metrics.regimes import REGIMES

#: (column label, summary key)
MAIN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MAE (dBZ)", "MAE"), ("RMSE (dBZ)", "RMSE"), ("bias (dBZ)", "bias"), ("EMD (dBZ)", "EMD"),
    ("Dice", "Dice"), ("cloud CSI", "cloud_CSI"), ("cloud HSS", "cloud_HSS"),
    ("shallow-snow CSI", "shallow_snowfall_CSI"), ("virga CSI", "virga_CSI"))
EVENT_COLUMNS: tuple[str, ...] = ("POD", "FAR", "SR", "CSI", "HSS", "bias")


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def node(entry: dict[str, Any], key: str) -> dict[str, Any]:
    """The interval dict of ``key`` (``MAE`` or ``<event>_<score>``) in a method's entry."""
    if key in entry:
        n = entry[key]
    else:
        ev, _, sc = key.rpartition("_")
        n = entry[ev][sc]
    return n.to_dict() if hasattr(n, "to_dict") else n


def fmt_interval(n: dict[str, Any], digits: int = 3) -> str:
    e, lo, hi = _num(n.get("estimate")), _num(n.get("low")), _num(n.get("high"))
    if not math.isfinite(e):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{e:.{digits}g}"
    return f"{e:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def main_rows(summary: dict[str, Any], site: str) -> tuple[list[str], list[list[str]]]:
    header = ["method"] + [c for c, _ in MAIN_COLUMNS]
    rows = [[m] + [fmt_interval(node(e, k)) for _, k in MAIN_COLUMNS]
            for m, e in summary["scores"][site].items()]
    return header, rows


def event_rows(summary: dict[str, Any], site: str, event: str) -> tuple[list[str], list[list[str]]]:
    header = ["method", "hits", "misses", "false alarms", "correct neg."] + list(EVENT_COLUMNS)
    rows = []
    for m, e in summary["scores"][site].items():
        t = e[event]["table"]
        rows.append([m, str(t["hits"]), str(t["misses"]), str(t["false_alarms"]), str(t["correct_negatives"])]
                    + [fmt_interval(node(e[event], k) if k in e[event] else {}, 3) for k in EVENT_COLUMNS])
    return header, rows


def difference_rows(summary: dict[str, Any], site: str) -> tuple[list[str], list[list[str]]]:
    ref = summary.get("reference")
    diffs = summary.get("differences", {}).get(site, {})
    keys = ["MAE", "RMSE", "EMD", "Dice", "cloud_CSI", "cloud_HSS"]
    header = [f"{ref} minus"] + keys
    rows = [[m] + [fmt_interval(d[k]) if k in d else "" for k in keys] for m, d in diffs.items()]
    return header, rows


def regime_rows(summary: dict[str, Any], site: str) -> tuple[list[str], list[list[str]]]:
    """MAE per class of patch (:mod:`bzpipe.metrics.regimes`): its share of the patches, every
    method's MAE and the reference's paired difference to each other method."""
    block = (summary.get("regimes") or {}).get(site) or {}
    ref = summary.get("reference")
    methods = list(summary.get("methods", []))
    others = [m for m in methods if m != ref]
    header = (["patches: truth has", "patches (share)"] + [f"{m} MAE (dBZ)" for m in methods]
              + [f"{ref} minus {m}" for m in others])
    rows = []
    for e in (block[k] for k in REGIMES if k in block):        # report order, also from a key-sorted JSON
        share = e.get("share")
        rows.append([e["label"], f"{e['n']} ({_num(share):.0%})"]
                    + [fmt_interval(e["MAE"][m]) if m in e["MAE"] else "" for m in methods]
                    + [fmt_interval(e.get("MAE_difference", {}).get(m, {})) for m in others])
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (``|`` in cells escaped)."""
    def esc(s: object) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def to_html(header: list[str], rows: list[list[str]], highlight: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cls = ' class="ref"' if highlight is not None and r and r[0] == highlight else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


#: how the seed table names the headline scores
SEED_LABELS = {"MAE": "MAE (dBZ)", "cloud_CSI": "cloud CSI", "shallow_snowfall_CSI": "shallow-snow CSI",
               "virga_CSI": "virga CSI"}


def _mean_sd(st: dict[str, Any] | None) -> str:
    if not st or st.get("mean") is None:
        return "n/a"
    return f"{st['mean']:.3g}" + (f" ± {st['sd']:.2g}" if st.get("sd") is not None else "")


def seed_rows(summary: dict[str, Any], reference: str = "UNET") -> tuple[list[str], list[list[str]]]:
    """Mean ± sd across training seeds of the U-Net's headline scores and its differences to each baseline."""
    block = summary.get("seeds") or {}
    stats = block.get("stats", {})
    bases = sorted({k.split(".")[0].split("-", 1)[1] for k in stats if "-" in k.split(".")[0]})
    header = (["score", f"{reference} (mean ± sd, {block.get('n', 1)} runs)"]
              + [f"{reference} minus {b}" for b in bases])
    rows = [[label, _mean_sd(stats.get(f"{reference}.{k}"))]
            + [_mean_sd(stats.get(f"{reference}-{b}.{k}")) for b in bases]
            for k, label in SEED_LABELS.items()]
    return header, rows
