"""Overpass validation: the model's fill of CloudSat granules passing a KaZR site, scored against that KaZR.

    python -m flows.overpass [--config FILE] [--set infer.overpass.radius_km=50 ...]

``overpass-validation`` (:func:`overpass`) finds the filled granules of the current model (and infer
settings) that pass within ``infer.overpass.radius_km`` of a site, fetches the site's KaZR, met and
ERA-5 for the days around each overpass through the ingest flow (when given an ingest config), puts
the KaZR through the CPR forward operator (``build.forward_operator``'s settings) and writes
``reports/<run>/overpass.json`` (Pearson r, MAE and event scores per method) and ``overpass.png``.
:mod:`bzpipe.overpass` does the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bzpipe.config import CprOperatorConfig, InferConfig, IngestConfig
from bzpipe.store import Store
from flows.common import NO_CACHE, cli_parser, resolve_stage, retry_if_transient
from flows.reprocess import resolve_model
from flows.settings import FlowSettings


@task(name="find-overpasses", cache_policy=NO_CACHE)
def find_task(cfg: InferConfig, model_id: str) -> list[dict[str, Any]]:
    """Overpasses among the complete outputs of this model and settings."""
    from bzpipe import overpass as ov

    store = Store(cfg.store_root)
    keys = ov.output_keys(store, model_id, cfg.settings_id())
    sites = cfg.overpass.sites or cfg.sites
    return [p.to_dict() for p in ov.find_overpasses(store, keys, sites, cfg.overpass.radius_km)]


@task(name="score-overpasses", retries=1, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def score_task(cfg: InferConfig, passes: list[dict[str, Any]], op: CprOperatorConfig,
               model_id: str) -> dict[str, Any]:
    """Score every overpass and write the report; returns it (with the keys written)."""
    from bzpipe import overpass as ov
    from bzpipe.infer.output import open_output
    from bzpipe.provenance import provenance_record

    store = Store(cfg.store_root)
    items = [ov.Overpass(**p) for p in passes]
    heights = open_output(store, items[0].output_key)["height"].values if items else None
    report, curtains = (ov.validate(store, items, heights, op, window_h=cfg.overpass.window_h,
                                    min_profiles=cfg.overpass.min_profiles, seed=cfg.seed)
                        if items else ({"overpasses": [], "n_overpasses": 0,
                                        "pearson_r": {m: None for m in ov.METHODS}}, []))
    report.update(model_id=model_id, settings_id=cfg.settings_id(), operator=op.model_dump(mode="json"),
                  radius_km=cfg.overpass.radius_km, window_h=cfg.overpass.window_h)
    if items:
        first = open_output(store, items[0].output_key)
        report["resolution_mismatch"] = int(first["resolution_mismatch"].values)
    png = ov.figure_png(curtains, heights, report) if heights is not None else ov.figure_png([], None, report)
    run = cfg.overpass.report_run or cfg.run_name
    jkey, pkey = ov.write_report(store, run, report, png,
                                 producer=provenance_record(cfg, stage="overpass", model_id=model_id))
    return {**report, "report_key": jkey, "figure_key": pkey}


@flow(name="overpass-validation")
def overpass(config: InferConfig | None = None, config_path: str | None = None,
             overrides: list[str] | None = None,
             ingest: IngestConfig | None = None, operator: CprOperatorConfig | None = None,
             settings: FlowSettings | None = None) -> dict[str, Any]:
    """Find, fetch KaZR for, and score the overpasses of the current model's outputs (module docstring).

    ``ingest``: the ingest settings that fetch the KaZR / met / ERA-5 of the overpass days (only the
    overpass site and days are fetched; files already stored are kept); without it only stored KaZR
    is used.  ``operator``: the forward-operator settings (default: :class:`CprOperatorConfig`).
    ``settings``: the flow settings the ingest runs with (:mod:`flows.settings`).
    """
    from bzpipe import overpass as ov
    from flows.ingest import ingest as ingest_flow

    cfg, found = resolve_stage(InferConfig, config, config_path, overrides, settings)
    logger = get_run_logger()
    op = operator or CprOperatorConfig()
    model_id = resolve_model(cfg)
    passes = find_task(cfg, model_id)
    logger.info("%d overpass(es) within %.0f km of %s", len(passes), cfg.overpass.radius_km,
                [str(s) for s in (cfg.overpass.sites or cfg.sites)])
    if ingest is not None:
        for p in passes:
            days = ov.kazr_days(p["time"], cfg.overpass.window_h)
            window = {"sites": [p["site"]], "start": days[0], "end": days[-1], "store_root": cfg.store_root}
            ingest_flow(config=ingest.model_copy(update=window), settings=found)
    report = score_task(cfg, passes, op, model_id)
    r = report.get("pearson_r", {})
    create_markdown_artifact(key="overpass-validation", description="CloudSat overpasses vs KaZR", markdown=(
        f"# Overpass validation\n\n{report.get('n_overpasses', 0)} overpass(es) scored, "
        f"{report.get('n_profiles', 0)} profiles, {report.get('n_pixels', 0)} blind-zone pixels.\n\n"
        "| method | Pearson r | MAE (dBZ) | mean-profile r |\n|---|---|---|---|\n" + "\n".join(
            f"| {m} | {_fmt(r.get(m))} | {_fmt(report.get('mae_dbz', {}).get(m))} | "
            f"{_fmt(report.get('profile_r', {}).get(m))} |" for m in ov.METHODS)
        + f"\n\nReport: `{report['report_key']}`"))
    logger.info("overpass Pearson r: %s", {m: _fmt(r.get(m)) for m in ov.METHODS})
    return report


def _fmt(v: Any) -> str:
    return "n/a" if v is None or v != v else f"{float(v):.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("overpass", __doc__)
    a = p.parse_args(argv)
    state = overpass(config_path=a.config_path, overrides=a.overrides or None, return_state=True)
    if not state.is_completed():
        print(f"overpass validation ended {state.type.value}: {state.message}")
        return 1
    print({k: v for k, v in state.result().items() if k in ("pearson_r", "mae_dbz", "report_key")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
