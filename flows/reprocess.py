"""Prefect flows that fill the blind zone of CloudSat granules, and keep doing it as new ones arrive.

Flows (``bzpipe.infer`` does the work; these only orchestrate):

``reprocess-granule``  (:func:`reprocess_granule`)
    One granule URI: stage it into the store (``raw/cloudsat/<name>``), fetch the
    ERA-5 months a 5-channel model needs through the ingest flow (offline / cds
    source), fill, write ``outputs/cloudsat/<model id>-<settings id>/<granule id>.zarr``
    + PNG.  Only a finished model is applied (``models/<run>/final.json``).
    Idempotent: a complete output for this model and these settings is skipped.  A
    bad granule is quarantined (``quarantine/<granule>.json``) and reported in a
    table artifact; a permanent error fails its task at once (no retries).

``granule-arrived``  (:func:`granule_arrived`)
    The deployment an automation runs on each ``bzpipe.granule.arrived`` event
    (trigger :func:`granule_trigger`; the event payload carries ``granule_uri``).
    It starts ``reprocess-granule`` with ``run_deployment(...,
    idempotency_key="cloudsat:<name>:<file version>:<model id>-<settings id>")``, so
    duplicate events for the same granule file, model and settings create one run; a
    new model, other settings or a replaced file get a new key and reprocess.

``scan-landing``  (:func:`scan_landing`)
    Scheduled: lists ``InferConfig.landing`` (a store prefix or a local / s3 URI),
    and for every granule without a complete output for the current model and settings
    and not quarantined (a quarantined file counts again once it changed) emits
    ``bzpipe.granule.arrived``, unless it did so within ``emit_dedupe_s`` (records
    under ``state/emitted/<model id>-<settings id>/``).

``backfill-cloudsat``  (:func:`flows.backfill.backfill`, in its own module)
    A date range or a list of granules: one ``process-granule`` Prefect task per
    granule (each visible in the UI), run by a Dask task runner on the existing
    cluster (``dask_address`` / ``$DASK_SCHEDULER_ADDRESS``; a LocalCluster
    without one) in the subflow ``backfill-granules``; on workers that advertise
    the Dask resource ``GPU`` each granule takes one.  At most ``max_in_flight``
    granules are submitted at once; a progress artifact advances as they finish.

A run whose granule was quarantined ends in a Completed state named ``Quarantined``
with the reason as its message.

Run::

    python -m flows.reprocess serve    [--config FILE] [--set key=value ...] [--no-scan]  # the deployments
    python -m flows.reprocess granule  URI      [--config FILE] [--set ...]
    python -m flows.reprocess backfill [--start YYYY-MM-DD] [--end ...] [--granule URI ...]
    python -m flows.reprocess scan     [--config FILE]
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.events import DeploymentEventTrigger, emit_event

from bzpipe.checkpoint import finished_model_id, require_finished_model
from bzpipe.config import InferConfig, IngestConfig
from bzpipe.infer import batch as bz_batch
from bzpipe.infer.granule import process_granule
from bzpipe.infer.staging import stage_granule
from bzpipe.store import Store, file_version, layout
from flows.common import NO_CACHE, cli_parser, resolve_config, resolve_stage, retry_if_transient
from flows.settings import FlowSettings, IngestSecrets

GRANULE_EVENT = "bzpipe.granule.arrived"
PROCESS_FLOW = "reprocess-granule"
PROCESS_DEPLOYMENT = "reprocess-granule"
ARRIVED_DEPLOYMENT = "granule-arrived"
SCAN_DEPLOYMENT = "scan-landing"
RESULTS_KEY = "cloudsat-reprocess"
QUARANTINE_KEY = "cloudsat-quarantine"


# --------------------------------------------------------------------------- tasks


@task(name="resolve-model", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def resolve_model(cfg: InferConfig) -> str:
    """The id (checkpoint hash) of the FINISHED model ``cfg`` applies (its run wrote ``final.json`` with
    this checkpoint); the interim checkpoint of a run still training, or killed, is never applied."""
    return require_finished_model(Store(cfg.store_root), cfg.run_name, cfg.which)


@task(name="model-channels", cache_policy=NO_CACHE)
def model_channels(cfg: InferConfig, model_id: str) -> int:
    from bzpipe.infer.fill import channels_of
    from bzpipe.infer.predict import cached_model

    return channels_of(cached_model(Store(cfg.store_root).root, cfg.run_name, cfg.which, cfg.device,
                                    expected_id=model_id)[1])


@task(name="stage-granule", task_run_name="stage-{granule_uri}", retries=3, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def stage_task(cfg: InferConfig, granule_uri: str) -> str:
    """Key of the granule in the store (copied into ``raw/cloudsat/`` when it lies elsewhere), with its
    ECMWF-AUX companion when one lies beside it."""
    from bzpipe.infer.companion import stage_companion

    key = stage_granule(Store(cfg.store_root), granule_uri)
    if "ecmwf_aux" in cfg.atmosphere_sources:
        stage_companion(Store(cfg.store_root), granule_uri)
    return key


@task(name="era5-track-boxes", task_run_name="era5-track-{granule_key}", retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def track_era5_task(cfg: InferConfig, granule_key: str, secrets: IngestSecrets | None = None) -> list[str]:
    """ERA-5 boxes along the granule's track that nothing else covers, from the CDS (``era5_source: cds``)."""
    from bzpipe.infer.companion import fetch_track_era5
    from flows.ingest import cds_credentials

    creds = cds_credentials(secrets or IngestSecrets())
    return fetch_track_era5(Store(cfg.store_root), cfg, granule_key, creds)


@task(name="process-granule", task_run_name="fill-{granule_key}", retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def process_task(cfg: InferConfig, granule_key: str, model_id: str, force: bool = False) -> dict[str, Any]:
    """Fill one stored granule (skips a complete output; quarantines a bad file)."""
    return process_granule(cfg.store_root, granule_key, cfg, model_id=model_id, force=force).to_dict()


def era5_ingest_config(cfg: InferConfig, days: Sequence[date]) -> IngestConfig:
    """The ingest config that fetches the ERA-5 site-months covering ``days``."""
    return IngestConfig(**cfg.era5_ingest, store_root=cfg.store_root, sites=cfg.sites, start=min(days),
                        end=max(days), era5_source=cfg.era5_source, seed=cfg.seed)


def granule_days(names: Sequence[str]) -> list[date]:
    """UTC days a granule (~99 minutes from its start time) touches."""
    from bzpipe.sources.cloudsat import granule_info

    days: set[date] = set()
    for n in names:
        try:
            start = granule_info(n).start
        except Exception:  # noqa: BLE001 - a bad name is quarantined later
            continue
        days |= {start.date(), (start + timedelta(minutes=100)).date()}
    return sorted(days)


def ensure_era5(cfg: InferConfig, model_id: str, names: Sequence[str],
                secrets: IngestSecrets | None = None) -> None:
    """For a 5-channel model that reads ERA-5, ingest (offline / cds source) the ERA-5 site months of
    these granules, then (cds source) the boxes along their tracks that nothing covers.  A granule
    with an ECMWF-AUX companion that comes first in ``infer.atmosphere_sources`` needs neither.
    ``secrets``: the Prefect Secret block of the CDS key (when the environment has none)."""
    from bzpipe.infer.companion import companion_key

    if model_channels(cfg, model_id) != 5 or "era5" not in cfg.atmosphere_sources:
        return
    store = Store(cfg.store_root)
    src = list(cfg.atmosphere_sources)
    aux_first = "ecmwf_aux" in src and src.index("ecmwf_aux") < src.index("era5")
    keys = [layout.cloudsat_raw_key(n) for n in names]
    keys = [k for k in keys if not (aux_first and store.exists(k) and companion_key(store, k))]
    days = granule_days([posixpath.basename(k) for k in keys])
    if not days:
        return
    from flows.ingest import ingest_era5

    secrets = secrets or IngestSecrets()
    ingest_era5(config=era5_ingest_config(cfg, days), settings=FlowSettings(ingest=secrets))
    if cfg.era5_source == "cds" and cfg.era5_track_boxes:
        for k in keys:
            track_era5_task(cfg, k, secrets)


def report(results: list[dict[str, Any]], cfg: InferConfig, title: str) -> dict[str, int]:
    """Table artifacts: every granule's outcome, and the quarantined ones with their reasons."""
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "quarantined", "failed")}
    rows = [{"granule": r["granule"], "status": r["status"], "model_id": r["model_id"],
             "output": (Store(cfg.store_root).uri(r["output_key"])
                        if r["status"] in ("done", "skipped") else ""),
             "seconds": round(float(r["seconds"]), 2), "reason": r["reason"]} for r in results]
    if rows:
        create_table_artifact(rows, key=RESULTS_KEY, description=(
            f"# {title}\n\n{counts['done']} filled, {counts['skipped']} already done, "
            f"{counts['quarantined']} quarantined, {counts['failed']} failed"))
    bad = [{"granule": r["granule"], "category": r["category"], "reason": r["reason"],
            "record": layout.quarantine_key(r["granule"])}
           for r in results if r["status"] == "quarantined"]
    if bad:
        create_table_artifact(bad, key=QUARANTINE_KEY, description=(
            f"# Quarantined CloudSat granules\n\n{len(bad)} granule(s) could not be used; "
            "the rest of the batch went on. Fix or replace the file, then delete its quarantine record."))
    return counts


def _version(uri: str) -> str | None:
    """The file's version (size + mtime, or ETag on S3), None when it cannot be read."""
    try:
        return file_version(uri)
    except Exception:  # noqa: BLE001 - the granule run itself reports an unreadable file
        return None


# --------------------------------------------------------------------------- flows


@flow(name=PROCESS_FLOW)
def reprocess_granule(granule_uri: str, config: InferConfig | None = None, config_path: str | None = None,
                      overrides: list[str] | None = None, force: bool = False,
                      settings: FlowSettings | None = None) -> dict[str, Any]:
    """Fill the blind zone of one granule; returns its :class:`~bzpipe.infer.granule.GranuleResult` dict.
    ``settings``: the flow settings (the CDS key's Secret block); default: the config file's."""
    cfg, found = resolve_stage(InferConfig, config, config_path, overrides, settings)
    logger = get_run_logger()
    model_id = resolve_model(cfg)
    key = stage_task(cfg, granule_uri)
    ensure_era5(cfg, model_id, [posixpath.basename(key)], found.ingest)
    res = process_task(cfg, key, model_id, force)
    report([res], cfg, f"Granule {res['granule']}")
    logger.info("%s: %s %s", res["granule"], res["status"], res["reason"] or res["output_key"])
    if res["status"] == "failed":
        raise RuntimeError(f"{res['granule']}: {res['reason']}")
    if res["status"] == "done" and res.get("plot_key"):
        curtain_artifact(cfg, res)
    return final_state(res)


def final_state(res: dict[str, Any]) -> Any:
    """The run's end: ``res`` itself, or for a quarantined granule a Completed state named
    ``Quarantined`` whose message is the reason (the runs list shows it without opening the logs);
    callers still get ``res`` as the run's result."""
    from prefect.states import Completed

    if res["status"] != "quarantined":
        return res
    why = f"{res['category']}: {res['reason']}" if res.get("category") else res["reason"]
    return Completed(name="Quarantined", message=f"{res['granule']} quarantined ({why})"[:1000], data=res)


def curtain_artifact(cfg: InferConfig, res: dict[str, Any]) -> None:
    """The granule's curtain plot as an image artifact (https link or embedded, see flows.links)."""
    from flows.common import artifact_slug
    from flows.links import publish_image

    try:
        publish_image(Store(cfg.store_root), res["plot_key"],
                      artifact_key=f"curtain-{artifact_slug(res['granule'])}",
                      title=f"{res['granule']}: blind zone filled by model {res['model_id']}",
                      description=f"curtain plot of {res['granule']}")
    except Exception as e:  # noqa: BLE001 - the output is written; a missing picture must not fail the run
        get_run_logger().warning("no curtain artifact for %s: %s: %s", res["granule"], type(e).__name__, e)


class PreviousRunFailed(Exception):
    """The run that an idempotency key names ended Failed / Crashed / Cancelled."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _retry_if_previous_failed(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except PreviousRunFailed:
        return True
    except Exception:  # noqa: BLE001 - anything else is not fixed by a new key
        return False
    return False


#: new runs started under ``<key>:retry<n>`` when the run of a key ended badly (Prefect's task retries)
ARRIVED_RETRIES = 2


@task(name="start-reprocess", retries=ARRIVED_RETRIES, retry_delay_seconds=0,
      retry_condition_fn=_retry_if_previous_failed, cache_policy=NO_CACHE)
def start_reprocess(deployment: str, params: dict[str, Any], base_key: str) -> dict[str, Any]:
    """Start (or find, by idempotency key) the reprocess run of a granule.  Attempt ``n`` (a Prefect
    retry) uses the key ``<base_key>:retry<n>``; a run found under a key that ended Failed / Crashed
    / Cancelled raises :class:`PreviousRunFailed`, which the task retries."""
    from prefect.deployments import run_deployment
    from prefect.runtime import task_run

    attempt = max(int(task_run.run_count or 1) - 1, 0)
    key = base_key if attempt == 0 else f"{base_key}:retry{attempt}"
    run = run_deployment(deployment, parameters=params, idempotency_key=key, timeout=0, as_subflow=False)
    state = run.state
    out = {"flow_run_id": str(run.id), "idempotency_key": key, "state": str(state.type if state else "")}
    if state is not None and (state.is_failed() or state.is_crashed() or state.is_cancelled()):
        raise PreviousRunFailed(f"run {run.id} for key {key} ended {state.type}", out)
    return out


@flow(name="granule-arrived")
def granule_arrived(granule_uri: str, config: InferConfig | None = None, config_path: str | None = None,
                    overrides: list[str] | None = None,
                    deployment: str = f"{PROCESS_FLOW}/{PROCESS_DEPLOYMENT}",
                    settings: FlowSettings | None = None) -> dict[str, Any]:
    """Start ``reprocess-granule`` for an announced granule, deduplicated by an idempotency key.

    Returns ``{"flow_run_id", "idempotency_key", "state"}``.  If the run with this key
    ended Failed / Crashed / Cancelled, a retry is started under ``<key>:retry<n>`` (up to
    :data:`ARRIVED_RETRIES`, :func:`start_reprocess`).
    """
    cfg, found = resolve_stage(InferConfig, config, config_path, overrides, settings)
    logger = get_run_logger()
    model_id = resolve_model(cfg)
    name = posixpath.basename(granule_uri.rstrip("/"))
    base = bz_batch.idempotency_key(name, layout.output_id(model_id, cfg.settings_id()),
                                    _version(granule_uri))
    params = {"granule_uri": granule_uri, "config": cfg.model_dump(mode="json"),
              "settings": found.model_dump(mode="json")}
    state = start_reprocess(deployment, params, base, return_state=True)
    try:
        out = state.result()
    except PreviousRunFailed as e:       # every key's run ended badly: report the last one
        out = e.result
        logger.warning("%s: the runs of every key ended badly; the last: %s", name, e)
    logger.info("%s -> flow run %s (idempotency key %s)", name, out["flow_run_id"], out["idempotency_key"])
    return out


@flow(name="scan-landing")
def scan_landing(config: InferConfig | None = None, config_path: str | None = None,
                 overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Emit ``bzpipe.granule.arrived`` for landing granules that still need the current model."""
    cfg = resolve_config(InferConfig, config, config_path, overrides)
    logger = get_run_logger()
    store = Store(cfg.store_root)
    model_id = finished_model_id(store, cfg.run_name, cfg.which)
    if model_id is None:    # no model yet, or one still training: its interim checkpoints are not versions
        logger.info("no finished %s checkpoint of run %s in %s: nothing to announce", cfg.which,
                    cfg.run_name, store.root)
        return []
    files = bz_batch.list_landing(store, cfg.landing)
    pending = bz_batch.pending_granules(store, files, model_id, cfg.settings_id())
    output_id = layout.output_id(model_id, cfg.settings_id())
    emitted = []
    for f in pending:
        if not bz_batch.should_emit(store, output_id, f.name, cfg.emit_dedupe_s, version=f.version):
            continue
        ev = emit_event(event=GRANULE_EVENT,
                        resource={"prefect.resource.id": f"cloudsat.granule.{f.name}",
                                  "prefect.resource.name": f.name},
                        payload={"granule_uri": f.uri, "granule_id": f.granule_id, "size": f.size,
                                 "version": f.version, "model_id": model_id,
                                 "settings_id": cfg.settings_id()})
        bz_batch.record_emitted(store, output_id, f, event_id=str(ev.id) if ev else "")
        emitted.append({**f.to_dict(), "event_id": str(ev.id) if ev else ""})
    logger.info("landing %s: %d granule(s), %d pending for model %s, %d announced",
                cfg.landing, len(files), len(pending), model_id, len(emitted))
    if emitted:
        create_table_artifact(emitted, key="cloudsat-landing-scan",
                              description=f"# Granules announced for model {model_id}")
    return emitted


# --------------------------------------------------------------------------- deployments


def granule_trigger(config: dict[str, Any] | None = None) -> DeploymentEventTrigger:
    """Run ``granule-arrived`` with the event's ``granule_uri`` on every ``bzpipe.granule.arrived``."""
    params: dict[str, Any] = {"granule_uri": "{{ event.payload.granule_uri }}"}
    if config is not None:
        params["config"] = config
    return DeploymentEventTrigger(name="cloudsat-granule-arrived", expect={GRANULE_EVENT},
                                  match={"prefect.resource.id": "cloudsat.granule.*"}, parameters=params)


def deployments(cfg: InferConfig, *, scan: bool = True) -> list[Any]:
    """The deployments to serve: ``reprocess-granule``, ``granule-arrived`` (event trigger) and
    ``scan-landing`` (every ``scan_interval_s``), all with ``cfg`` as their default config."""
    cj = cfg.model_dump(mode="json")
    deps = [
        reprocess_granule.to_deployment(name=PROCESS_DEPLOYMENT, parameters={"config": cj}),
        granule_arrived.to_deployment(name=ARRIVED_DEPLOYMENT, parameters={"config": cj},
                                      triggers=[granule_trigger(cj)]),
    ]
    if scan:
        deps.append(scan_landing.to_deployment(name=SCAN_DEPLOYMENT, parameters={"config": cj},
                                               interval=timedelta(seconds=cfg.scan_interval_s)))
    return deps


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("reprocess", __doc__)
    p.add_argument("what", choices=["serve", "granule", "backfill", "scan"])
    p.add_argument("uri", nargs="?", help="granule URI (granule)")
    p.add_argument("--start", type=date.fromisoformat)
    p.add_argument("--end", type=date.fromisoformat)
    p.add_argument("--granule", dest="granules", action="append", default=None)
    p.add_argument("--no-scan", action="store_true", help="serve without the scheduled landing scanner")
    a = p.parse_args(argv)
    cfg = resolve_config(InferConfig, None, a.config_path, a.overrides)
    if a.what == "serve":
        from prefect import serve

        serve(*deployments(cfg, scan=not a.no_scan))
    elif a.what == "granule":
        if not a.uri:
            p.error("granule needs a URI")
        print(reprocess_granule(a.uri, config=cfg))
    elif a.what == "backfill":
        from flows.backfill import backfill

        print(backfill(config=cfg, start=a.start, end=a.end, granules=a.granules)["counts"])
    else:
        print(scan_landing(config=cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
