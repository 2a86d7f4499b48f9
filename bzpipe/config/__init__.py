"""Typed, validated configuration: one model per pipeline stage.

A configuration is loaded from a YAML/JSON/TOML file, then overridden from the
command line (``--set train.epochs=3``) or from Prefect flow parameters (the
flows take the same models as typed parameters, so the Prefect UI shows their
schema).  Every output records ``config.model_dump(mode="json")``.

A pipeline file has top-level ``store_root``, ``sites``, ``start``, ``end``,
``months`` (optional: the calendar months of start..end to use) and ``seed``; they
are handed down to every stage section that does not set them itself, so one file
describes a whole run::

    store_root: s3://my-bucket/bzpipe
    sites: [nsa, oli]
    start: 2019-01-01
    end: 2019-03-31
    train: {epochs: 40}

One module per stage (:mod:`~bzpipe.config.ingest`, :mod:`~bzpipe.config.build`,
:mod:`~bzpipe.config.train`, :mod:`~bzpipe.config.evaluate`, :mod:`~bzpipe.config.infer`), what
they share (:mod:`~bzpipe.config.base`, :mod:`~bzpipe.config.sites`) and the loading
(:mod:`~bzpipe.config.loading`); every name is importable from ``bzpipe.config``.
"""

from bzpipe.config.base import (
                                CPR_WINDOW_TOP_M,
                                MAX_IN_FLIGHT_DEFAULT,
                                SURFACE_T_RANGE_C,
                                SitesAndTimes,
                                StageConfig,
                                check_blind_zone,
                                check_quantiles,
)
from bzpipe.config.build import BuildConfig, CprOperatorConfig, GridConfig, PatchConfig, SplitConfig
from bzpipe.config.evaluate import EvalConfig
from bzpipe.config.infer import ERA5_REQUEST_KEYS, INFER_RUNTIME_FIELDS, InferConfig, OverpassSettings
from bzpipe.config.ingest import ERA5_INGEST_KEYS, IngestConfig, SyntheticConfig
from bzpipe.config.loading import (
                                PipelineConfig,
                                apply_overrides,
                                config_record,
                                load_pipeline_config,
                                load_stage_config,
                                override_config,
                                parse_override,
                                read_config_file,
)
from bzpipe.config.sites import KNOWN_SITES, Site, resolve_site
from bzpipe.config.train import TrainConfig, seed_runs

__all__ = ["CPR_WINDOW_TOP_M", "ERA5_INGEST_KEYS", "ERA5_REQUEST_KEYS", "INFER_RUNTIME_FIELDS", "KNOWN_SITES",
           "MAX_IN_FLIGHT_DEFAULT", "SURFACE_T_RANGE_C", "BuildConfig", "CprOperatorConfig", "EvalConfig",
           "GridConfig", "InferConfig", "IngestConfig", "OverpassSettings", "PatchConfig", "PipelineConfig",
           "Site", "SitesAndTimes", "SplitConfig", "StageConfig", "SyntheticConfig", "TrainConfig",
           "apply_overrides", "check_blind_zone", "check_quantiles", "config_record", "load_pipeline_config",
           "load_stage_config", "override_config", "parse_override", "read_config_file", "resolve_site",
           "seed_runs"]
