"""Prefect flow: evaluate a trained model against REP, MAR, Telea and Navier-Stokes; write the report.

    python -m flows.evaluate --config run.yaml --set evaluate.mc_passes=20

Loads the split (``EvalConfig.split``, default ``test``) of the dataset and the
model ``models/<run_name>/checkpoint-<checkpoint>.pt``, fills the blind zone
with every method on the same masked patches, scores them with the same mask
(:mod:`bzpipe.evaluate`), and writes ``reports/<run_name>/`` (scores.json, PNG
figures, a self-contained index.html) to the store.  Prefect artifacts: a
markdown table of the scores with bootstrap intervals and the plain verdict
("is the U-Net ahead of REP and MAR on MAE and cloud-presence CSI?"), and
links to the report and its figures.  Returns the URI of ``index.html``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bzpipe.config import EvalConfig
from bzpipe.dataset.reader import open_dataset
from bzpipe.errors import StoreError
from bzpipe.report import evaluate_and_report as write_evaluation_report
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key
from flows.common import NO_CACHE, artifact_slug, cli_parser, resolve_config, retry_if_transient


@task(name="check-evaluation-inputs", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def check_inputs(cfg: EvalConfig) -> dict[str, str]:
    """The dataset (complete in the manifest) and the checkpoint must exist; return their URIs."""
    store = Store(cfg.store_root)
    dataset_uri = open_dataset(store, cfg.dataset).uri
    ckpt = checkpoint_key(cfg.run_name, cfg.checkpoint)
    if not store.exists(ckpt):
        raise StoreError(f"{store.uri(ckpt)}: no trained model; run the train flow for {cfg.run_name!r} "
                         "first")
    return {"dataset": dataset_uri, "checkpoint": store.uri(ckpt)}


@task(name="evaluate-and-report", retries=0, cache_policy=NO_CACHE)
def evaluate_and_report(cfg: EvalConfig) -> dict[str, Any]:
    """Predict, score and write the report; returns URIs, the verdict and the markdown table."""
    logger = get_run_logger()

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) < cfg.batch_size:
            logger.info("predicted %d / %d patches", done, total)

    return write_evaluation_report(cfg, progress=progress)


@task(name="publish-evaluation-artifacts", retries=2, retry_delay_seconds=2,
      retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def publish_artifacts(run_name: str, report: dict[str, Any], store_root: str | None = None) -> None:
    """The scores table, a link to the HTML report a browser can open (presigned https on S3,
    ``$BZPIPE_STORE_PUBLIC_URL``, else the path), and the report's figures as image artifacts."""
    from flows.links import link_markdown, publish_image, publish_link

    slug = artifact_slug(run_name)
    store = Store(store_root) if store_root else None
    where = (link_markdown(store, store.key_of(report["index"]), "the HTML report") if store
             else f"`{report['index']}`")
    create_markdown_artifact(markdown=f"# Evaluation of `{run_name}`\n\n{report['markdown']}\n\n"
                             f"Report: {where}", key=f"evaluation-{slug}",
                             description="blind-zone scores with bootstrap intervals")
    if store is None:
        return
    publish_link(store, store.key_of(report["index"]), artifact_key=f"evaluation-report-{slug}",
                 text=f"evaluation report {run_name}", description="self-contained HTML report")
    for name, uri in sorted((report.get("figures") or {}).items()):
        if str(uri).endswith(".png"):
            publish_image(store, store.key_of(uri), artifact_key=f"evaluation-{slug}-{artifact_slug(name)}",
                          title=f"{run_name}: {name}", description=f"evaluation figure {name} of {run_name}")


@flow(name="evaluate")
def evaluate(config: EvalConfig | None = None, config_path: str | None = None,
             overrides: list[str] | None = None) -> str:
    """Evaluate ``models/<run_name>`` on the dataset's ``split``; return the report URI (index.html)."""
    cfg = resolve_config(EvalConfig, config, config_path, overrides)
    inputs = check_inputs(cfg)
    logger = get_run_logger()
    logger.info("evaluating %s on %s", inputs["checkpoint"], inputs["dataset"])
    report = evaluate_and_report(cfg)
    publish_artifacts(cfg.run_name, report, cfg.store_root)
    logger.info(report["verdict"]["headline"])
    for reason in report["verdict"]["reasons"]:
        logger.info("  - %s", reason)
    return str(report["index"])


def main(argv: list[str] | None = None) -> None:
    p = cli_parser("evaluate", __doc__)
    a = p.parse_args(argv)
    print(evaluate(config_path=a.config_path, overrides=a.overrides))


if __name__ == "__main__":
    main()
