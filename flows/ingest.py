"""Prefect flows that fill ``raw/`` in the store: ``ingest_kazr``, ``ingest_era5`` and ``ingest``.

Each takes a site list and date range as an :class:`~bzpipe.config.IngestConfig`
(or a config file, plus ``key=value`` overrides) and runs one task per file
(ARM) or per site-month (ERA-5), and one per kind, site and month for the
files the offline generator makes (:func:`bzpipe.ingest.offline_batches`):

* retries with exponential backoff, except for errors that a retry cannot fix
  (rejected credentials or requests, a full or read-only store):
  ``retry_condition_fn`` asks :func:`bzpipe.ingest.is_retryable`;
* at most ``arm_concurrency`` / ``cds_concurrency`` requests in flight per
  service, across all flow runs: Prefect global concurrency limits ``arm-live``
  and ``cds`` (created with the config's values when missing, left as they are
  when an operator has already set them);
* at most ``max_in_flight`` item tasks submitted and unfinished at once
  (:func:`flows.fanout.bounded`), however many files the date range holds;
* a run that needs a real service checks its credentials in its first task
  (``check-credentials``) and fails there, naming what is missing and where to put it;
* a progress artifact while it runs and a table artifact of every item:
  fetched, skipped (already present with a matching checksum) or failed;
* a failed item does not stop the others; the flow ends Failed and its message
  lists what failed.

Credentials are resolved inside each task that needs them, from the
environment (``ARM_USERNAME``/``ARM_TOKEN``, ``CDSAPI_URL``/``CDSAPI_KEY`` or
``~/.cdsapirc``) or from the Prefect Secret blocks that the flow settings name
(:class:`flows.settings.IngestSecrets`, keys of the config's ``ingest`` section); they are
never task or flow parameters, so Prefect never records them.

Run: ``python -m flows.ingest [--config FILE] [--set key=value ...] [--what kazr|era5|all]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.tasks import exponential_backoff

from bzpipe.config import IngestConfig
from bzpipe.credentials import (
    DEFAULT_CDS_URL,
    ArmCredentials,
    CdsCredentials,
    arm_credentials_from_env,
    cds_credentials_from_env,
    check_s3_credentials,
    redact,
    register_secrets,
)
from bzpipe.errors import AuthenticationError
from bzpipe.ingest import (
    IngestBatchError,
    IngestFailedError,
    IngestItem,
    arm_datastream,
    arm_kinds,
    ingest_batch,
    ingest_item,
    is_retryable,
    offline_batches,
    plan_arm_offline,
    plan_arm_remote,
    plan_era5,
    present_outcome,
)
from bzpipe.store import Store
from bzpipe.store.layout import raw_prefix
from flows.common import NO_CACHE, cli_parser, resolve_stage
from flows.fanout import Progress, bounded
from flows.settings import FlowSettings, IngestSecrets

ARM_LIMIT = "arm-live"
CDS_LIMIT = "cds"
REPORT_KEY = "ingest-report"
#: where an operator puts a credential so that flow runs find it (README, "Credentials")
WHERE_CREDENTIALS = ("Put them into the environment of the worker that runs the flows (local stack: the "
                     "shell that starts it; compose: the environment of `docker compose up`; Kubernetes: "
                     "the Secret bzpipe-credentials, see infra/k8s/README.md)")


# --------------------------------------------------------------------------- credentials


def _secret(name: str) -> str | None:
    """The value of a Prefect Secret block, or None if there is no such block."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError:  # no block document of that name
        return None
    return str(value) if value else None


def arm_credentials(secrets: IngestSecrets) -> ArmCredentials:
    """ARM Live credentials from the environment, else from the configured Secret blocks."""
    try:
        creds = arm_credentials_from_env()
    except AuthenticationError as e:  # set, but incomplete or unreadable
        raise AuthenticationError(f"{e}. {WHERE_CREDENTIALS}") from None
    if creds is None:
        user, token = _secret(secrets.arm_username_secret), _secret(secrets.arm_token_secret)
        if user and token:
            creds = ArmCredentials(user, token)
            register_secrets(creds.secrets)
    if creds is None:
        raise AuthenticationError(
            "no ARM Live credentials: set ARM_USERNAME and ARM_TOKEN, or create the Prefect Secret blocks "
            f"{secrets.arm_username_secret!r} and {secrets.arm_token_secret!r}. {WHERE_CREDENTIALS} "
            "(the token is on https://adc.arm.gov/armlive/)")
    return creds


def cds_credentials(secrets: IngestSecrets) -> CdsCredentials:
    """CDS credentials from the environment / ``~/.cdsapirc``, else from the configured Secret block."""
    try:
        creds = cds_credentials_from_env()
    except AuthenticationError as e:  # set, but incomplete or unreadable
        raise AuthenticationError(f"{e}. {WHERE_CREDENTIALS}") from None
    if creds is None:
        key = _secret(secrets.cds_key_secret)
        if key:
            creds = CdsCredentials(os.environ.get("CDSAPI_URL") or DEFAULT_CDS_URL, key)
            register_secrets(creds.secrets)
    if creds is None:
        raise AuthenticationError(
            "no CDS API key: set CDSAPI_URL and CDSAPI_KEY, write ~/.cdsapirc, or create the Prefect Secret "
            f"block {secrets.cds_key_secret!r}. {WHERE_CREDENTIALS} (the key is on your CDS profile page)")
    return creds


def check_credentials(cfg: IngestConfig, kinds: Sequence[str] = ("kazr", "met", "era5"),
                      secrets: IngestSecrets | None = None) -> list[str]:
    """The services ``cfg`` needs for ``kinds``, each with its credentials found; raises
    :class:`AuthenticationError` naming the first missing one and where to put it (never a value)."""
    secrets = secrets or IngestSecrets()
    found = []
    s3 = check_s3_credentials(cfg.store_root)          # the store first: every stage writes to it
    if s3 is not None:
        found.append(f"S3 store {cfg.store_root} (credentials from {s3})")
    if cfg.kazr_source == "arm" and set(kinds) & {"kazr", "met"}:
        found.append(f"ARM Live (user {arm_credentials(secrets).username!r})")
    if cfg.era5_source == "cds" and "era5" in kinds:
        found.append(f"CDS ({cds_credentials(secrets).url})")
    return found


@task(name="check-credentials", cache_policy=NO_CACHE, persist_result=False, retries=0)
def check_credentials_task(cfg: IngestConfig, kinds: Sequence[str] = ("kazr", "met", "era5"),
                           secrets: IngestSecrets | None = None) -> list[str]:
    """First task of a run that uses a real service: fail at once when a credential is missing."""
    found = check_credentials(cfg, kinds, secrets)
    get_run_logger().info("credentials found for: %s", ", ".join(found) or "nothing needed (offline sources)")
    return found


# --------------------------------------------------------------------------- limits, retries


def ensure_concurrency_limits(cfg: IngestConfig,
                              names: Sequence[str] = (ARM_LIMIT, CDS_LIMIT)) -> dict[str, int]:
    """Create the per-service global concurrency limits if missing; return the limits in force."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    wanted = {ARM_LIMIT: cfg.arm_concurrency, CDS_LIMIT: cfg.cds_concurrency}
    out = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                out[name] = client.read_global_concurrency_limit_by_name(name).limit
                continue
            except ObjectNotFound:
                pass
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=wanted[name], active=True))
            except ObjectAlreadyExists:  # another run created it meanwhile
                pass
            out[name] = client.read_global_concurrency_limit_by_name(name).limit
    return out


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry unless the error is one a retry cannot fix (e.g. HTTP 401)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_retryable(exc)
    return True


def with_retries(t: Any, cfg: IngestConfig) -> Any:
    """``t`` with the config's retries, exponential backoff from ``retry_delay_s``, and no retry for
    permanent errors."""
    return t.with_options(retries=cfg.retries,
                          retry_delay_seconds=exponential_backoff(backoff_factor=cfg.retry_delay_s),
                          retry_condition_fn=retry_unless_permanent)


# --------------------------------------------------------------------------- tasks


@task(name="list-arm-files", cache_policy=NO_CACHE, persist_result=False)
def list_arm_files_task(cfg: IngestConfig, site: str, kind: str,
                        secrets: IngestSecrets | None = None) -> list[dict[str, str]]:
    """Ask ARM Live which files of ``site``'s ``kind`` datastream exist in the date range."""
    creds = arm_credentials(secrets or IngestSecrets())
    with concurrency(ARM_LIMIT, occupy=1):
        items = plan_arm_remote(cfg, site, kind, creds)
    get_run_logger().info("ARM Live lists %d file(s) of %s", len(items), arm_datastream(cfg, site, kind))
    return [i.to_dict() for i in items]


@task(name="ingest-file", task_run_name="ingest-{item[name]}", cache_policy=NO_CACHE, persist_result=False)
def ingest_file_task(item: dict[str, str], cfg: IngestConfig,
                     secrets: IngestSecrets | None = None) -> dict[str, Any]:
    """Skip, or fetch + verify + store one file; holds a slot of the service's limit while it downloads."""
    logger = get_run_logger()
    it = IngestItem.from_dict(item)
    store = Store(cfg.store_root)
    done = present_outcome(it, store, cfg)
    if done is None:
        secrets = secrets or IngestSecrets()
        arm = arm_credentials(secrets) if it.source == "arm" else None
        cds = cds_credentials(secrets) if it.source == "cds" else None
        limit = {"arm": ARM_LIMIT, "cds": CDS_LIMIT}.get(it.source)
        slot = (lambda: concurrency(limit, occupy=1)) if limit else None
        done = ingest_item(it, cfg, store, arm=arm, cds=cds, force=True, fetch_slot=slot)
    logger.info("%s: %s (%d bytes)", done.key, done.status, done.size)
    return done.to_dict()


@task(name="ingest-generated", task_run_name="generate-{label}", cache_policy=NO_CACHE, persist_result=False)
def ingest_generated_task(items: list[dict[str, str]], cfg: IngestConfig, label: str) -> list[dict[str, Any]]:
    """Generate + verify + store a batch of offline files (the present ones are skipped); a failed
    file does not stop the others, and the task fails at the end naming each
    (:func:`bzpipe.ingest.ingest_batch`), so a retry redoes only what is missing."""
    logger = get_run_logger()
    outcomes = ingest_batch(items, cfg, Store(cfg.store_root))
    for done in outcomes:
        logger.info("%s: %s (%d bytes)", done.key, done.status, done.size)
    return [o.to_dict() for o in outcomes]


# --------------------------------------------------------------------------- flows


def _row(item: IngestItem, status: str, size: int | None = None, sha256: str = "", message: str = "") -> dict:
    return {"key": item.key, "kind": item.kind, "site": item.site, "source": item.source, "status": status,
            "size": size if size is not None else "", "sha256": sha256[:16], "message": message}


def _unit_outcomes(unit: list[IngestItem], fut: Any, cfg: IngestConfig
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The outcomes of a finished file or batch task, by store key, and the error of each failed
    file that a batch named (a failed file task names none: the task's error is the file's).

    A task that failed without naming its files (it died outside the per-file handling: killed,
    out of memory) may have stored some of them first: those complete and verified in the store
    are reported present, not failed."""
    if fut.state.is_completed():
        res = fut.result()
        return {d["key"]: d for d in (res if isinstance(res, list) else [res])}, {}
    exc = _exception(fut.state)
    if isinstance(exc, IngestBatchError):
        return {d["key"]: d for d in exc.done}, {k: redact(v) for k, v in exc.failed.items()}
    store = Store(cfg.store_root)
    note = f"complete in the store; its task then failed: {_error_text(fut.state)}"
    kept = (present_outcome(item, store, cfg) for item in unit)
    return {k.key: {**k.to_dict(), "message": note} for k in kept if k is not None}, {}


def _exception(state: Any) -> Any:
    """What a failed task state holds: its exception (or whatever its result is)."""
    try:
        return state.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001
        return e


def _error_text(state: Any) -> str:
    exc = _exception(state)
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else (state.message or "failed")
    return redact(text)


def run_ingest(cfg: IngestConfig, kinds: Sequence[str],
               secrets: IngestSecrets | None = None) -> dict[str, Any]:
    """Plan, fetch every item in parallel tasks (at most ``cfg.max_in_flight`` at once), report;
    raise IngestFailedError if any item failed.  ``secrets``: the Secret blocks credentials come
    from when the environment has none."""
    secrets = secrets or IngestSecrets()
    logger = get_run_logger()
    remote = ("kazr" in kinds and cfg.kazr_source == "arm") or ("era5" in kinds and cfg.era5_source == "cds")
    if remote:
        check_credentials_task(cfg, list(kinds), secrets)
        limits = ensure_concurrency_limits(cfg)
        logger.info("concurrency limits in force: %s", limits)

    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    items: list[IngestItem] = []
    listings = [(s.name, kind) for kind in arm_kinds(cfg, kinds) if cfg.kazr_source != "offline"
                for s in cfg.site_objects()]
    lister = with_retries(list_arm_files_task, cfg)
    for (site, kind), fut in bounded(lambda sk: lister.submit(cfg, *sk, secrets), listings,
                                     cfg.max_in_flight):
        fut.wait()  # sets the in-memory final state (the API's copy carries no result data)
        if fut.state.is_completed():
            items += [IngestItem.from_dict(d) for d in fut.result()]
        else:
            key = f"{raw_prefix(kind, site)} (listing of {arm_datastream(cfg, site, kind)})"
            failed[key] = _error_text(fut.state)
            rows.append({"key": key, "kind": kind, "site": site, "source": "arm", "status": "failed",
                         "size": "", "sha256": "", "message": failed[key]})
    for kind in arm_kinds(cfg, kinds):
        if cfg.kazr_source == "offline":
            items += plan_arm_offline(cfg, kind)
    if "era5" in kinds:
        items += plan_era5(cfg)

    total = len(items)
    logger.info("ingest plan: %d item(s) for sites %s, %s..%s, at most %d in flight", total,
                [s.name for s in cfg.site_objects()], cfg.start, cfg.end, cfg.max_in_flight)
    progress = Progress(total, f"ingest of {total} file(s)")
    fetch, generate = with_retries(ingest_file_task, cfg), with_retries(ingest_generated_task, cfg)
    # (batch label, items): one file per download task, a labelled batch of generated files per task
    units: list[tuple[str | None, list[IngestItem]]] = [(None, [i]) for i in items if i.source != "offline"]
    units += offline_batches(i for i in items if i.source == "offline").items()

    def submit(labelled: tuple[str | None, list[IngestItem]]) -> Any:
        label, unit = labelled
        if label is None:
            return fetch.submit(unit[0].to_dict(), cfg, secrets)
        return generate.submit([i.to_dict() for i in unit], cfg, label)

    for (_, unit), fut in bounded(submit, units, cfg.max_in_flight):
        fut.wait()
        outs, errors = _unit_outcomes(unit, fut, cfg)
        for item in unit:
            if item.key in outs:
                out = outs[item.key]
                rows.append(_row(item, out["status"], out["size"], out["sha256"], out.get("message", "")))
            else:
                failed[item.key] = errors.get(item.key) or _error_text(fut.state)
                rows.append(_row(item, "failed", message=failed[item.key]))
                logger.error("%s failed: %s", item.key, failed[item.key])
        progress.advance(len(unit))
    if total == 0:
        progress.show()

    rows.sort(key=lambda r: r["key"])
    counts = {s: sum(r["status"] == s for r in rows) for s in ("fetched", "skipped", "failed")}
    create_table_artifact(rows, key=REPORT_KEY, description=(
        f"# Ingest {cfg.start}..{cfg.end}\n\nstore `{cfg.store_root}`: {counts['fetched']} fetched, "
        f"{counts['skipped']} skipped (already present, checksum matches), {counts['failed']} failed"))
    logger.info("ingest done: %s", counts)
    if failed:
        raise IngestFailedError(failed, total=len(rows))
    return {"counts": counts, "items": rows}


def _run(kinds: Sequence[str], config: IngestConfig | None, config_path: str | None,
         overrides: list[str] | None, settings: FlowSettings | None) -> dict[str, Any]:
    cfg, found = resolve_stage(IngestConfig, config, config_path, overrides, settings)
    return run_ingest(cfg, kinds, found.ingest)


@flow(name="ingest-kazr")
def ingest_kazr(config: IngestConfig | None = None, config_path: str | None = None,
                overrides: list[str] | None = None, settings: FlowSettings | None = None) -> dict[str, Any]:
    """KaZR (and, with ``fetch_met``, surface met) files for the sites and dates."""
    return _run(("kazr", "met"), config, config_path, overrides, settings)


@flow(name="ingest-era5")
def ingest_era5(config: IngestConfig | None = None, config_path: str | None = None,
                overrides: list[str] | None = None, settings: FlowSettings | None = None) -> dict[str, Any]:
    """ERA-5 pressure-level months for the sites and dates."""
    return _run(("era5",), config, config_path, overrides, settings)


@flow(name="ingest")
def ingest(config: IngestConfig | None = None, config_path: str | None = None,
           overrides: list[str] | None = None, settings: FlowSettings | None = None) -> dict[str, Any]:
    """Everything the dataset build needs: KaZR, met and ERA-5."""
    return _run(("kazr", "met", "era5"), config, config_path, overrides, settings)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("ingest", __doc__)
    p.add_argument("--what", choices=("all", "kazr", "era5"), default="all")
    a = p.parse_args(argv)
    fl = {"all": ingest, "kazr": ingest_kazr, "era5": ingest_era5}[a.what]
    state = fl(config_path=a.config_path, overrides=a.overrides or None, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
