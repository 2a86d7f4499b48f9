"""The evaluation report: figures (PNG), scores (JSON) and one self-contained HTML page.

:func:`evaluate_and_report` runs the evaluation (:mod:`bzpipe.evaluate`, which knows nothing of
reports) and writes its report.

Figures use matplotlib's Agg canvas through the object API (never pyplot).

Written under ``reports/<run_name>/`` of a :class:`bzpipe.store.Store`, each
object atomically with a manifest entry; ``index.html`` is written last, so a
report whose index exists is complete::

    reports/<run>/scores.json      summary (strict JSON) + verdict + provenance
    reports/<run>/<figure>.png     curtains, scores, performance, psd, cloud_base, uncertainty,
                                   saliency, features
    reports/<run>/index.html       everything, figures embedded as base64
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bzpipe.config import EvalConfig
from bzpipe.evaluate import EvaluationResult, run_evaluation
from bzpipe.metrics.summary import to_json
from bzpipe.provenance import provenance_record
from bzpipe.report import figures, tables
from bzpipe.report.html import render
from bzpipe.report.verdict import verdict
from bzpipe.store import Store
from bzpipe.store.layout import dataset_key, is_dataset_version, report_key

__all__ = ["build_figures", "evaluate_and_report", "input_checksums", "markdown_summary", "verdict",
           "write_report"]

MODEL_META_KEYS = ("model", "channels", "channel_set", "blind_zone_rows", "epoch", "val_loss", "model_id",
                   "checkpoint_uri", "checkpoint_sha256", "dataset")


def build_figures(result: EvaluationResult, summary_json: dict[str, Any]) -> dict[str, bytes]:
    """All report figures as PNG bytes, by name."""
    figs = {"curtains": figures.curtains_png(result.cases),
            "scores": figures.scores_png(summary_json),
            "performance": figures.performance_diagram_png(summary_json),
            "psd": figures.psd_png(summary_json),
            "cloud_base": figures.cloud_base_png(summary_json),
            "uncertainty": figures.uncertainty_png(summary_json)}
    if result.xai is not None:
        figs["saliency"] = figures.saliency_png(result.xai)
        figs["features"] = figures.features_png(result.xai)
    return figs


def markdown_summary(summary: dict[str, Any], verdict_: dict[str, Any], site: str = "all",
                     links: dict[str, str] | None = None) -> str:
    """Markdown for a Prefect artifact: verdict, score table with intervals, figure links."""
    header, rows = tables.main_rows(summary, site)
    lines = [f"**{verdict_['headline']}**", ""]
    lines += [f"- {r}" for r in verdict_["reasons"]]
    boot = (summary.get("bootstrap") or {}).get(site, {})
    lines += ["", f"Scores ({site}, {summary['settings'].get('confidence', 0.9):.0%} block-bootstrap "
                  f"intervals over {boot.get('units', '?')} {boot.get('unit', 'patch')} blocks, "
                  f"{summary['n_patches'].get(site, 0)} patches):", "", tables.to_markdown(header, rows)]
    if (summary.get("regimes") or {}).get(site):
        lines += ["", "MAE by what the truth holds just above and inside the blind zone:", "",
                  tables.to_markdown(*tables.regime_rows(summary, site))]
    if (summary.get("seeds") or {}).get("n", 1) > 1:
        lines += ["", "Across training seeds (mean ± sd):", "",
                  tables.to_markdown(*tables.seed_rows(summary))]
    if links:
        lines += ["", "Figures: " + ", ".join(f"[{k}]({v})" for k, v in links.items())]
    return "\n".join(lines)


def write_report(store: Store, run_name: str, result: EvaluationResult,
                 config: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
                 split: str = "test") -> dict[str, Any]:
    """Write scores, figures and the HTML page.

    Returns ``{"index", "scores", "figures", "verdict", "markdown"}``.

    ``index`` and the others are full URIs in ``store``.
    """
    meta = result.model_meta
    summary_json = to_json(result.summary)
    v = verdict(summary_json, context={"epoch": meta.get("epoch"), "val_loss": meta.get("val_loss"),
                                       "split": split})
    figs = build_figures(result, summary_json)
    producer = provenance or {}
    fig_uris = {}
    for name, png in figs.items():
        key = report_key(run_name, f"{name}.png")
        store.write_bytes(key, png, producer=producer)
        fig_uris[name] = store.uri(key)
    model_info = {k: meta.get(k) for k in MODEL_META_KEYS if k in meta}
    scores_key = report_key(run_name, "scores.json")
    store.write_json(scores_key, to_json({"summary": summary_json, "verdict": v, "model": model_info,
                                          "config": config, "provenance": provenance,
                                          "xai": _xai_scalars(result.xai)}), producer=producer)
    page = render(f"Blind-zone evaluation: {run_name}", v, summary_json, figs,
                  {"model": model_info, "config": config, "provenance": provenance})
    index_key = report_key(run_name, "index.html")
    store.write_bytes(index_key, page.encode(), producer=producer)
    return {"index": store.uri(index_key), "scores": store.uri(scores_key), "figures": fig_uris, "verdict": v,
            "markdown": markdown_summary(summary_json, v, links=fig_uris)}


def _xai_scalars(xai: dict[str, Any] | None) -> dict[str, Any] | None:
    if xai is None:
        return None
    return {"channel_share": xai.get("channel_share"), "drop_channel": xai.get("drop_channel"),
            "drop_method": xai.get("drop_method")}


def input_checksums(store: Store, cfg: EvalConfig, meta: dict[str, Any]) -> dict[str, str]:
    """{URI: sha256} of the evaluated dataset (its manifest entry) and the checkpoint."""
    out: dict[str, str] = {}
    key = dataset_key(cfg.dataset)
    entry = store.entry(key) if is_dataset_version(cfg.dataset) else None
    out[store.uri(key) if entry else cfg.dataset] = entry.sha256 if entry else "unrecorded"
    if meta.get("checkpoint_uri"):
        out[str(meta["checkpoint_uri"])] = str(meta.get("checkpoint_sha256", "unrecorded"))
    return out


def evaluate_and_report(cfg: EvalConfig, store: Store | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """:func:`bzpipe.evaluate.run_evaluation`, then the report under ``reports/<run_name>/``.

    Returns ``{"index": report URI, "scores": URI, "figures": {name: URI}, "verdict": {...},
    "markdown": str}`` (small and JSON-able: what a Prefect task may pass on).
    """
    store = store or Store(cfg.store_root)
    result = run_evaluation(cfg, store, progress=progress)
    prov = provenance_record(cfg, inputs=input_checksums(store, cfg, result.model_meta),
                             model_id=result.model_meta.get("model_id"))
    return write_report(store, cfg.run_name, result, config=cfg.model_dump(mode="json"), provenance=prov,
                        split=cfg.split)
