"""Typed, validated configuration: one model per pipeline stage.

A configuration is loaded from a YAML/JSON/TOML file, then overridden from the
command line (``--set train.epochs=3``) or from Prefect flow parameters (the
flows take the same models as typed parameters, so the Prefect UI shows their
schema).  Every output records ``config.model_dump(mode="json")``.

A pipeline file has top-level ``store_root``, ``sites``, ``start``, ``end`` and
``seed``; they are handed down to every stage section that does not set them
itself, so one file describes a whole run::

    store_root: s3://my-bucket/bzpipe
    sites: [nsa, oli]
    start: 2019-01-01
    end: 2019-03-31
    train: {epochs: 40}
"""

from __future__ import annotations

import json
import tomllib
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bzpipe.errors import ConfigError

# --------------------------------------------------------------------------- sites


class Site(BaseModel):
    """An ARM ground site with a vertically pointing cloud radar."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="ARM site code, lower case (nsa, oli, sgp, ...)")
    facility: str = Field(description="ARM facility code (C1, M1, ...)")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=360)
    elevation_m: float = Field(description="radar altitude above mean sea level, m")
    kazr_datastream: str = Field(description="KaZR datastream class without site/facility/level")
    kazr_level: str = "c0"

    def datastream(self, kind: str = "kazr", level: str | None = None) -> str:
        """Full ARM datastream name, e.g. ``nsaarsclkazr1kolliasC1.c0``."""
        if kind == "kazr":
            return f"{self.name}{self.kazr_datastream}{self.facility}.{level or self.kazr_level}"
        return f"{self.name}{kind}{self.facility}.{level or 'b1'}"


#: The sites of King et al. (2024): Utqiagvik (NSA C1) and Oliktok Point (OLI M1).
KNOWN_SITES: dict[str, Site] = {
    "nsa": Site(name="nsa", facility="C1", latitude=71.3230, longitude=-156.6090,
                elevation_m=8.0, kazr_datastream="arsclkazr1kollias"),
    "oli": Site(name="oli", facility="M1", latitude=70.4950, longitude=-149.8860,
                elevation_m=2.0, kazr_datastream="arsclkazr1kollias"),
    "sgp": Site(name="sgp", facility="C1", latitude=36.6050, longitude=-97.4850,
                elevation_m=318.0, kazr_datastream="kazrge", kazr_level="a1"),
}


def resolve_site(site: str | Site | dict[str, Any]) -> Site:
    """A :class:`Site` from its code (``"nsa"``), a dict, or a Site."""
    if isinstance(site, Site):
        return site
    if isinstance(site, dict):
        return Site.model_validate(site)
    try:
        return KNOWN_SITES[site.lower()]
    except KeyError:
        raise ConfigError(f"unknown site {site!r}; known: {sorted(KNOWN_SITES)} "
                          "(or give a full site mapping)") from None


# --------------------------------------------------------------------------- stages


class StageConfig(BaseModel):
    """Fields every stage shares."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    store_root: str = Field("bzpipe-data", description="local folder or s3://bucket/prefix")
    seed: int = 0

    @field_validator("store_root")
    @classmethod
    def _root_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("store_root must not be empty")
        return v


class SitesAndTimes(StageConfig):
    sites: list[str | Site] = Field(default_factory=lambda: ["nsa", "oli"])
    start: date = date(2019, 1, 1)
    end: date = Field(date(2019, 1, 2), description="last day, inclusive")

    @field_validator("sites")
    @classmethod
    def _sites_known(cls, v: list[str | Site]) -> list[str | Site]:
        if not v:
            raise ValueError("at least one site is needed")
        for s in v:
            resolve_site(s)
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "SitesAndTimes":
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def site_objects(self) -> list[Site]:
        return [resolve_site(s) for s in self.sites]

    def days(self) -> list[date]:
        n = (self.end - self.start).days + 1
        return [date.fromordinal(self.start.toordinal() + i) for i in range(n)]

    def start_datetime(self) -> datetime:
        return datetime.combine(self.start, time(0), tzinfo=timezone.utc)

    def end_datetime(self) -> datetime:
        """Exclusive end: midnight after ``end``."""
        return datetime.combine(date.fromordinal(self.end.toordinal() + 1), time(0), tzinfo=timezone.utc)


class SyntheticConfig(BaseModel):
    """The offline sample-data generator (the embedded default source)."""

    model_config = ConfigDict(extra="forbid")

    time_step_s: float = Field(4.0, gt=0, description="KaZR profile interval")
    hours_per_day: float = Field(24.0, gt=0, le=24, description="hours written per day file")
    n_gates: int = Field(400, ge=32, description="KaZR range gates")
    gate_spacing_m: float = Field(30.0, gt=0)
    first_gate_m: float = Field(160.0, ge=0)
    cloudsat_profiles: int = Field(4000, ge=64, description="profiles per synthetic CloudSat granule")


class IngestConfig(SitesAndTimes):
    kazr_source: Literal["offline", "arm"] = "offline"
    era5_source: Literal["offline", "cds"] = "offline"
    fetch_met: bool = True
    era5_box_deg: float = Field(0.75, gt=0, le=10, description="half-width of the ERA-5 box around each site")
    era5_levels_hpa: list[int] = Field(default_factory=lambda: [
        1000, 975, 950, 925, 900, 875, 850, 825, 800, 775, 750, 700, 650, 600, 550, 500, 450, 400, 350, 300])
    arm_concurrency: int = Field(4, ge=1)
    cds_concurrency: int = Field(2, ge=1)
    retries: int = Field(3, ge=0)
    retry_delay_s: float = Field(5.0, ge=0)
    request_timeout_s: float = Field(120.0, gt=0)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    kazr_datastream: str | None = Field(
        None, description="KaZR datastream class (e.g. kazrge); default: each site's kazr_datastream")
    kazr_level: str | None = Field(None, description="KaZR data level (e.g. a1); default: each site's")
    arm_live_url: str = Field("https://adc.arm.gov", description="ARM Live Data Webservice base URL")
    cds_poll_max_s: float = Field(120.0, gt=0, description="longest wait between CDS job status polls")
    arm_username_secret: str = Field("arm-username", description="Prefect Secret block (flows, if no env)")
    arm_token_secret: str = Field("arm-token", description="Prefect Secret block (flows, if no env)")
    cds_key_secret: str = Field("cds-api-key", description="Prefect Secret block (flows, if no env)")
    tmp_dir: str | None = Field(None, description="local folder for downloads in flight; default: system temp")

    @field_validator("era5_levels_hpa")
    @classmethod
    def _levels_reach_300(cls, v: list[int]) -> list[int]:
        if not v or min(v) > 300:
            raise ValueError("ERA-5 levels must reach up to 300 hPa at least")
        if any(p <= 0 or p > 1100 for p in v):
            raise ValueError("pressure levels must lie in (0, 1100] hPa")
        return sorted(set(v), reverse=True)


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_heights: int = Field(128, ge=16)
    top_m: float = Field(10000.0, gt=0, description="top of the height grid above ground, m")
    time_step_s: float = Field(4.0, gt=0, description="output time step; bins [t, t + step) labelled by t")

    @property
    def dz_m(self) -> float:
        return self.top_m / self.n_heights


class PatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(128, ge=8, description="time steps per patch")
    blind_zone_rows: int = Field(16, ge=1, description="lowest rows masked as blind zone")
    stride: int | None = Field(None, ge=1, description="time steps between patch starts; default = width")
    min_echo_fraction: float = Field(0.0, ge=0, le=1, description="drop patches with less echo than this")


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    block_hours: float | None = Field(None, gt=0, description="block length; default from decorrelation time")
    gap_s: float | None = Field(None, ge=0, description="gap between splits; default decorrelation + patch")
    max_lag_s: float = Field(6 * 3600.0, gt=0, description="longest lag used for the autocorrelation")

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {v}")
        return v


class BuildConfig(SitesAndTimes):
    grid: GridConfig = Field(default_factory=GridConfig)
    patch: PatchConfig = Field(default_factory=PatchConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    cold_threshold_c: float | None = Field(
        -2.0, description="keep samples whose surface temperature stays below this (degC); None keeps all")
    met_max_gap_s: float = Field(600.0, gt=0, description="longest met gap bridged by interpolation, s")
    era5_max_gap_s: float = Field(3 * 3600.0, gt=0, description="longest ERA-5 gap bridged in time, s")
    era5_columns: Literal["nearest", "bilinear"] = "nearest"
    chunk_samples: int = Field(8, ge=1, description="samples per Zarr chunk of x")
    region_samples: int = Field(128, ge=1, description="samples per region write (multiple of chunk_samples)")
    overwrite: bool = Field(False, description="replace a complete dataset version built with another config")
    version: str = Field("v1", pattern=r"^[A-Za-z0-9_.-]+$", description="dataset version name")
    dask_address: str | None = Field(None, description="existing scheduler; env DASK_SCHEDULER_ADDRESS")
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    dask_processes: bool = Field(True, description="LocalCluster workers as processes (False: threads)")

    @model_validator(mode="after")
    def _patch_fits(self) -> "BuildConfig":
        if self.patch.blind_zone_rows >= self.grid.n_heights:
            raise ValueError("blind zone must be shallower than the height grid")
        if self.region_samples % self.chunk_samples:
            raise ValueError("region_samples must be a multiple of chunk_samples")
        return self


class TrainConfig(StageConfig):
    dataset: str = Field("v1", description="dataset version (or full store URI) to train on")
    run_name: str = Field("unet3p", pattern=r"^[A-Za-z0-9_.-]+$")
    channels: Literal["3+_1", "3+_5"] = "3+_5"
    filters: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
    dropout: float = Field(0.2, ge=0, lt=1)
    deep_supervision: bool = True
    rep_prior: bool = Field(False, description="start from the REP fill and predict a correction "
                            "(see bzpipe.model.UNet3PlusConfig); off in the paper's model")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    lr_step_epochs: int = Field(10, ge=1)
    lr_gamma: float = Field(0.5, gt=0, le=1)
    patience: int = Field(8, ge=1, description="early stopping on the validation split")
    ramp_max_rows: int = Field(8, ge=0, description="random ramp above the blind zone, rows")
    max_batches_per_epoch: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = True
    backend: Literal["local", "torchrun", "kubernetes", "slurm"] = "local"
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1, description="nodes (kubernetes / slurm backends)")
    resume: bool = Field(True, description="continue from models/<run_name>/checkpoint-last.pt if it exists")
    amp_dtype: Literal["bf16", "fp16"] = Field("bf16", description="GPU autocast dtype (fp16: + GradScaler)")
    channels_last: bool = Field(True, description="channels_last memory format on GPU")
    max_val_batches: int | None = Field(None, ge=1)
    val_ramp_rows: int = Field(0, ge=0, description="ramp above the blind zone for the validation loss")
    image: str = Field("bzpipe:latest", description="container image (kubernetes backend)")
    k8s_namespace: str = "default"
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    wait: bool = Field(True, description="cluster backends: block until the job ends")


class EvalConfig(StageConfig):
    dataset: str = "v1"
    run_name: str = "unet3p"
    split: Literal["train", "val", "test"] = "test"
    mc_passes: int = Field(50, ge=1)
    quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)
    spread_exclusion_quantile: float | None = Field(
        None, gt=0, le=1, description="drop pixels whose MC spread is above this quantile, for every method")
    n_bootstrap: int = Field(500, ge=10)
    echo_threshold_dbz: float = -60.0
    cloud_fraction_threshold: float = 0.05
    precip_threshold_dbz: float = -20.0
    max_patches: int | None = Field(None, ge=1)
    checkpoint: Literal["best", "last"] = "best"
    ramp_rows: int = Field(0, ge=0, description="rows above the blind zone also hidden from the U-Net")
    baselines: tuple[str, ...] = Field(("REP", "MAR", "TELEA", "NS"), description="of REP, MAR, TELEA, NS")
    mar_window: int = Field(17, ge=1, description="marching-average window (odd), pixels")
    inpaint_radius: float = Field(5.0, gt=0, description="cv2.inpaint neighbourhood radius, pixels")
    confidence: float = Field(0.9, gt=0, lt=1, description="bootstrap interval level")
    batch_size: int = Field(16, ge=1, description="patches per model batch")
    mc_max_batch: int = Field(64, ge=1, description="samples x passes per forward pass")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    n_cases: int = Field(3, ge=0, description="example curtains in the report")
    spread_skill_bins: int = Field(10, ge=1)
    xai: bool = True
    xai_samples: int = Field(16, ge=1, description="patches for saliency and drop-channel importance")
    drop_channel: Literal["mean", "shuffle"] = Field(
        "mean", description="drop a channel by its training mean (0 standardized) or by shuffling patches")

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = tuple(b.upper() for b in v)
        unknown = [b for b in v if b not in ("REP", "MAR", "TELEA", "NS")]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from REP, MAR, TELEA, NS")
        return v

    @field_validator("mar_window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"mar_window must be odd, got {v}")
        return v


#: IngestConfig fields that shape the ERA-5 requests; inference fetches missing months with the same ones
ERA5_INGEST_KEYS = ("era5_box_deg", "era5_levels_hpa", "cds_concurrency", "retries", "retry_delay_s",
                    "request_timeout_s", "cds_poll_max_s", "cds_key_secret", "tmp_dir")


class InferConfig(StageConfig):
    run_name: str = "unet3p"
    landing: str = Field("landing/cloudsat", description="prefix (relative to the store root, or a URI) scanned for granules")
    blind_zone_m: float = Field(1200.0, gt=0)
    mc_passes: int = Field(50, ge=1)
    quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)
    window_overlap: int = Field(32, ge=0)
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    dask_address: str | None = None
    n_workers: int = Field(2, ge=1)
    expected_release: str | None = Field("R05", description="granules of another release are quarantined")
    which: str = Field("best", description="checkpoint of the run to apply (best, last)")
    cloud_mask_min: int | None = Field(20, ge=0, le=40, description="CPR cloud mask for echo; None: all")
    max_profiles: int | None = Field(None, ge=1, description="only the first N profiles (tests, benchmarks)")
    threads_per_worker: int = Field(1, ge=1)
    era5_source: Literal["offline", "cds"] = Field("offline", description="fetches missing ERA-5 (5-ch models)")
    emit_dedupe_s: float = Field(3600.0, ge=0, description="the scanner re-emits a granule only after this")
    scan_interval_s: float = Field(600.0, gt=0, description="schedule of the landing scanner")
    plot: bool = Field(True, description="write a curtain PNG beside each output")
    sites: list[str | Site] = Field(default_factory=lambda: ["nsa", "oli"],
                                    description="sites whose ERA-5 boxes a 5-channel model reads along the track")
    era5_ingest: dict[str, Any] = Field(
        default_factory=dict,
        description="ingest settings for the ERA-5 a 5-channel model fetches (e.g. era5_box_deg up to 10 to "
                    "cover more of the track); a pipeline file hands the ingest section's ERA-5 settings down")

    @field_validator("era5_ingest")
    @classmethod
    def _era5_ingest_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(ERA5_INGEST_KEYS))
        if unknown:
            raise ValueError(f"not ERA-5 ingest settings: {unknown}; allowed: {list(ERA5_INGEST_KEYS)}")
        IngestConfig(**v)  # the values themselves must be valid ingest settings
        return v


class PipelineConfig(BaseModel):
    """All stages of one end-to-end run."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    infer: InferConfig = Field(default_factory=InferConfig)


_SHARED_KEYS = ("store_root", "sites", "start", "end", "seed")
_STAGES = ("ingest", "build", "train", "evaluate", "infer")

C = TypeVar("C", bound=BaseModel)


# --------------------------------------------------------------------------- loading


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML file into a plain mapping."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror})") from e
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.') or 'yaml'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, _, raw = item.partition("=")
    path = [k for k in key.strip().split(".") if k]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-key overrides applied."""
    out = json.loads(json.dumps(data, default=str))
    if not overrides:
        return out
    items = ([parse_override(o) for o in overrides] if isinstance(overrides, list)
             else [(k.split("."), v) for k, v in overrides.items()])
    for path, value in items:
        node = out
        for k in path[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {k} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _hand_down(data: dict[str, Any]) -> dict[str, Any]:
    shared = {k: data.pop(k) for k in _SHARED_KEYS if k in data}
    for stage in _STAGES:
        section = data.setdefault(stage, {})
        if not isinstance(section, dict):
            raise ConfigError(f"section {stage!r} must be a mapping")
        fields = _stage_model(stage).model_fields
        for k, v in shared.items():
            if k in fields:
                section.setdefault(k, v)
    # later stages read what earlier ones wrote: link their names unless set explicitly
    version = data["build"].get("version")
    run = data["train"].get("run_name")
    for stage, key, value in (("train", "dataset", version), ("evaluate", "dataset", version),
                              ("evaluate", "run_name", run), ("infer", "run_name", run)):
        if value is not None:
            data[stage].setdefault(key, value)
    # ERA-5 months fetched at inference are requested as the ingest stage requests them
    era5 = {k: data["ingest"][k] for k in ERA5_INGEST_KEYS if k in data["ingest"]}
    if era5 and isinstance(data["infer"].get("era5_ingest", {}), dict):
        data["infer"]["era5_ingest"] = {**era5, **data["infer"].get("era5_ingest", {})}
    return data


def _stage_model(stage: str) -> type[BaseModel]:
    return PipelineConfig.model_fields[stage].annotation  # type: ignore[return-value]


def _validate(model: type[C], data: dict[str, Any], origin: str) -> C:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_pipeline_config(path: str | Path | None = None,
                         overrides: list[str] | dict[str, Any] | None = None) -> PipelineConfig:
    """Load the whole-pipeline configuration from ``path`` (optional) plus overrides."""
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, overrides)
    return _validate(PipelineConfig, _hand_down(data), str(path or "<defaults>"))


def load_stage_config(model: type[C], path: str | Path | None = None,
                      overrides: list[str] | dict[str, Any] | None = None) -> C:
    """Load one stage's config.

    ``path`` may hold either that stage's fields at top level or a whole
    pipeline file (then the stage's section, with the shared keys handed down,
    is used).
    """
    data = read_config_file(path) if path else {}
    stage = next((s for s in _STAGES if _stage_model(s) is model), None)
    if stage and (stage in data or any(s in data for s in _STAGES)):
        data = _hand_down(data).get(stage, {})
        if overrides:
            stripped: list[str] | dict[str, Any]
            if isinstance(overrides, list):
                stripped = [o[len(stage) + 1:] if o.startswith(stage + ".") else o for o in overrides]
            else:
                stripped = {(k[len(stage) + 1:] if k.startswith(stage + ".") else k): v
                            for k, v in overrides.items()}
            overrides = stripped
    data = apply_overrides(data, overrides)
    return _validate(model, data, str(path or "<defaults>"))


def config_record(config: BaseModel) -> dict[str, Any]:
    """The JSON-able record of a config that every output stores."""
    return {"type": type(config).__name__, "values": config.model_dump(mode="json")}


def override_config(config: C, overrides: list[str] | dict[str, Any] | None) -> C:
    """A copy of ``config`` with dotted-key overrides applied and validated."""
    if not overrides:
        return config
    data = apply_overrides(config.model_dump(mode="json"), overrides)
    return _validate(type(config), data, "<overrides>")
