"""The whole pipeline end to end: ingest -> build dataset -> train -> evaluate -> CloudSat -> overpass check.

    python -m flows.pipeline --config flows/configs/offline-demo.yaml [--set train.epochs=5 ...]

Each stage is its own flow (a subflow here), so every stage can also be
deployed and run on its own; this flow only hands the store URIs along.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bzpipe.config import PipelineConfig
from bzpipe.provenance import provenance_record
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key
from flows.build_dataset import build_dataset
from flows.common import NO_CACHE, cli_parser, resolve_pipeline, retry_if_transient
from flows.evaluate import evaluate
from flows.ingest import check_credentials_task, ingest
from flows.overpass import overpass
from flows.reprocess import reprocess_granule
from flows.train import train


@task(name="stage-sample-granule", retries=1, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def stage_sample_granule(cfg: PipelineConfig) -> str:
    """Put one synthetic CloudSat 2B-GEOPROF granule and its ECMWF-AUX companion into the landing
    prefix; returns the 2B-GEOPROF URI.

    Offline runs have no real granules; this is the embedded default, written in the real
    HDF-EOS2 layout so the granule goes through the same reader.  It is the coincident overpass of
    the synthetic KaZR (the same scene): closest to the first overpass site in the middle of the
    KaZR hours of the day AFTER the ingest period, so the overpass validation compares with KaZR the
    model never trained, validated or was tested on.  Refuses when the CloudSat source is not the
    offline generator: a synthetic granule never lands beside real ones.
    """
    from bzpipe.sources.synthetic.cloudsat import generate_overpass

    if cloudsat_source(cfg) != "offline":
        raise ValueError(f"CloudSat source is {cloudsat_source(cfg)!r}: no synthetic granule goes into "
                         f"the landing area {cfg.infer.landing!r}")

    store = Store(cfg.infer.store_root)
    site = (cfg.infer.overpass.sites or cfg.infer.sites)[0]
    after = cfg.ingest.end_datetime()
    when = after + timedelta(hours=cfg.ingest.synthetic.hours_on(after.date()) / 2)
    landing = cfg.infer.landing.strip("/")
    with tempfile.TemporaryDirectory(prefix="bzpipe-granule-") as d:
        path = generate_overpass(d, site, when, cfg.ingest.synthetic.cloudsat_profiles, cfg.ingest.seed,
                                 cfg.ingest.synthetic)
        for f in sorted(Path(d).glob("*.hdf")):           # the 2B-GEOPROF granule and its ECMWF-AUX
            if not store.is_complete(f"{landing}/{f.name}"):
                store.put_file(f, f"{landing}/{f.name}",
                               producer=provenance_record(cfg.ingest, source="synthetic"))
    return store.uri(f"{landing}/{path.name}")


def cloudsat_source(cfg: PipelineConfig) -> str:
    """``infer.cloudsat_source``, or when unset: ``offline`` if the ingest sources are the offline
    generator, else ``landing`` (real granules arrive from outside)."""
    if cfg.infer.cloudsat_source:
        return cfg.infer.cloudsat_source
    offline = cfg.ingest.kazr_source == "offline" and cfg.ingest.era5_source == "offline"
    return "offline" if offline else "landing"


@flow(name="pipeline")
def pipeline(config: PipelineConfig | None = None, config_path: str | None = None,
             overrides: list[str] | None = None, sample_granule: bool = True) -> dict[str, Any]:
    """Run every stage; returns the URIs each stage produced.

    ``sample_granule``: fill a synthetic sample granule at the end; only ever staged when the
    CloudSat source is the offline generator (:func:`cloudsat_source`), never into a real
    landing area.
    """
    logger = get_run_logger()
    cfg, settings = resolve_pipeline(config, config_path, overrides)
    logger.info("pipeline on store %s, sites %s, %s..%s", cfg.ingest.store_root, cfg.ingest.sites,
                cfg.ingest.start, cfg.ingest.end)
    check_credentials_task(cfg.ingest, secrets=settings.ingest)   # no credentials: it stops here, at once
    cfg.build.check_split_blocks()         # so does a period too short for one split block per split
    out: dict[str, Any] = {}
    out["ingest"] = ingest(config=cfg.ingest, settings=settings)
    out["dataset"] = build_dataset(config=cfg.build)
    train(config=cfg.train, settings=settings)
    # the checkpoint the evaluation scores and the CloudSat fill applies (the best or the last epoch's)
    out["checkpoint"] = Store(cfg.train.store_root).uri(checkpoint_key(cfg.evaluate.run_name,
                                                                       cfg.evaluate.checkpoint))
    out["report"] = evaluate(config=cfg.evaluate)
    source = cloudsat_source(cfg)
    if sample_granule and source == "offline":
        granule = stage_sample_granule(cfg)
        out["cloudsat"] = reprocess_granule(granule_uri=granule, config=cfg.infer, settings=settings)
        out["overpass"] = overpass(config=cfg.infer, ingest=cfg.ingest, operator=cfg.build.forward_operator,
                                   settings=settings)
    elif sample_granule:
        logger.info("CloudSat source %r: no synthetic granule is staged; the scan-landing deployment "
                    "announces the granules of %s for the new model", source, cfg.infer.landing)
    create_markdown_artifact(key="pipeline-summary", description="bzpipe end-to-end run",
                             markdown="# bzpipe pipeline\n\n" + "\n".join(
                                 f"- **{k}**: `{v}`" for k, v in summary(out).items()))
    return out


def summary(out: dict[str, Any]) -> dict[str, str]:
    """What each stage produced, one line each: URIs, the granule output, the ingest counts."""
    lines = {}
    for k, v in out.items():
        if isinstance(v, dict) and "pearson_r" in v:
            v = f"{v.get('report_key', '')} pearson_r {v['pearson_r']}"
        elif isinstance(v, dict):
            v = v.get("output_key") or v.get("counts") or v
        lines[k] = str(v)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("pipeline", __doc__)
    p.add_argument("--no-granule", action="store_true",
                   help="skip the CloudSat sample granule (staged only for the offline CloudSat source)")
    a = p.parse_args(argv)
    state = pipeline(config_path=a.config_path, overrides=a.overrides or None,
                     sample_granule=not a.no_granule, return_state=True)
    if not state.is_completed():
        print(f"pipeline ended {state.type.value}: {state.message}")
        return 1
    print("\nbzpipe pipeline finished:")
    for k, v in summary(state.result()).items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
