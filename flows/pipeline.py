"""The whole pipeline end to end: ingest -> build dataset -> train -> evaluate -> CloudSat.

    python -m flows.pipeline --config flows/configs/offline-demo.yaml [--set train.epochs=5 ...]

Each stage is its own flow (a subflow here), so every stage can also be
deployed and run on its own; this flow only hands the store URIs along.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from bzpipe.config import PipelineConfig, load_pipeline_config, override_config
from bzpipe.provenance import provenance_record
from bzpipe.store import Store
from flows.build_dataset import build_dataset
from flows.common import cli_parser
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.reprocess import reprocess_granule
from flows.train import train


@task(name="stage-sample-granule", retries=1, cache_policy=NONE)
def stage_sample_granule(cfg: PipelineConfig) -> str:
    """Put one synthetic CloudSat 2B-GEOPROF granule into the landing prefix; returns its URI.

    Offline runs have no real granules; this is the embedded default, written in
    the real HDF-EOS2 layout so the granule goes through the same reader.
    """
    from bzpipe.sources.synthetic import generate_cloudsat_granule

    store = Store(cfg.infer.store_root)
    start = cfg.ingest.start_datetime().replace(hour=12)
    with tempfile.TemporaryDirectory(prefix="bzpipe-granule-") as d:
        path = generate_cloudsat_granule(d, start, cfg.ingest.synthetic.cloudsat_profiles,
                                         cfg.ingest.seed, cfg.ingest.synthetic)
        key = f"{cfg.infer.landing.strip('/')}/{path.name}"
        if not store.is_complete(key):
            store.put_file(path, key, producer=provenance_record(cfg.ingest, source="synthetic"))
    return store.uri(key)


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig | None = None, config_path: str | None = None,
             overrides: list[str] | None = None, sample_granule: bool = True) -> dict[str, Any]:
    """Run every stage; returns the URIs each stage produced."""
    logger = get_run_logger()
    cfg = override_config(config, overrides) if config else load_pipeline_config(config_path, overrides)
    logger.info("pipeline on store %s, sites %s, %s..%s", cfg.ingest.store_root, cfg.ingest.sites,
                cfg.ingest.start, cfg.ingest.end)
    out: dict[str, Any] = {}
    out["ingest"] = ingest(config=cfg.ingest)
    out["dataset"] = build_dataset(config=cfg.build)
    out["checkpoint"] = train(config=cfg.train)
    out["report"] = evaluate(config=cfg.evaluate)
    if sample_granule:
        granule = stage_sample_granule(cfg)
        out["cloudsat"] = reprocess_granule(granule_uri=granule, config=cfg.infer)
    create_markdown_artifact(key="pipeline-summary", description="bzpipe end-to-end run",
                             markdown="# bzpipe pipeline\n\n" + "\n".join(
                                 f"- **{k}**: `{v}`" for k, v in summary(out).items()))
    return out


def summary(out: dict[str, Any]) -> dict[str, str]:
    """What each stage produced, one line each: URIs, the granule output, the ingest counts."""
    lines = {}
    for k, v in out.items():
        if isinstance(v, dict):
            v = v.get("output_key") or v.get("counts") or v
        lines[k] = str(v)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("pipeline", __doc__)
    p.add_argument("--no-granule", action="store_true", help="skip the CloudSat sample granule")
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
