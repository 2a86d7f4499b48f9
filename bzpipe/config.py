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
import math
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


# --------------------------------------------------------------------------- physical limits

#: top of the CloudSat CPR range window: bin 0 lies at about +24.8 to 25.1 km MSL [GRAN] (cloudsat_cpr.md)
CPR_WINDOW_TOP_M = 25000.0
#: coldest / warmest near-surface air temperature on record (Vostok -89.2 degC; Death Valley +56.7 degC)
SURFACE_T_RANGE_C = (-90.0, 60.0)


def check_quantiles(v: tuple[float, ...]) -> tuple[float, ...]:
    """Quantile levels must lie strictly between 0 and 1."""
    bad = [q for q in v if not 0.0 < q < 1.0]
    if bad:
        raise ValueError(f"quantiles must lie strictly between 0 and 1, got {bad}")
    return tuple(sorted(set(v)))


def check_blind_zone(blind_zone_m: float, n_heights: int, top_m: float, *, trained_rows: int | None = None,
                     ramp_rows: int = 0, where: str = "infer.blind_zone_m") -> int:
    """Rows of a model grid (``n_heights`` rows up to ``top_m``) that a blind zone of ``blind_zone_m``
    covers; raises :class:`ConfigError` when no row above it would stay visible to the model, or (with
    ``trained_rows``) when it is taller than any mask the model was trained with (``trained_rows`` +
    ``ramp_rows``)."""
    dz = top_m / n_heights
    rows = int(math.ceil(blind_zone_m / dz - 1e-9))
    if rows >= n_heights:
        raise ConfigError(f"{where}={blind_zone_m:g} m covers {rows} rows of {dz:g} m, but the model grid has only "
                          f"{n_heights} rows up to {top_m:g} m: no observed row would be left above the blind "
                          "zone to fill it from")
    if trained_rows is not None and rows > trained_rows + ramp_rows:
        raise ConfigError(f"{where}={blind_zone_m:g} m covers {rows} rows of {dz:g} m, but the model is trained "
                          f"to fill at most {trained_rows} + {ramp_rows} (ramp) rows; lower the blind zone or "
                          "train with a taller blind zone / ramp")
    return rows


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


#: tasks of one fan-out (files, site-days, granules) that a flow run keeps unfinished at once
MAX_IN_FLIGHT_DEFAULT = 16


class SitesAndTimes(StageConfig):
    sites: list[str | Site] = Field(default_factory=lambda: ["nsa", "oli"])
    start: date = date(2019, 1, 1)
    end: date = Field(date(2019, 1, 2), description="last day, inclusive")
    max_in_flight: int = Field(MAX_IN_FLIGHT_DEFAULT, ge=1, description=(
        "most tasks of one fan-out (files, site-days) submitted and unfinished at once; the rest wait"))

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
    eval_stride: int | None = Field(None, ge=1, description=(
        "time steps between val/test patch starts; default = stride (King et al. overlap test windows by "
        "up to 50 %: width / 2); the block bootstrap keeps overlapping patches from counting as independent"))
    echo_block: int = Field(10, ge=0, description=(
        "keep a patch only when an echo block of echo_block x echo_block pixels (rows x time steps) lies "
        "in its observed rows above the blind zone, as King et al. (2024) select samples (10); decided "
        "on observed rows only, never on the hidden blind zone; 0 keeps every patch"))
    min_echo_fraction: float = Field(0.0, ge=0, le=1, description=(
        "drop patches whose observed rows above the blind zone hold less echo than this (fraction)"))


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    block_hours: float | None = Field(None, gt=0, description=(
        "block length; default the longer of min_block_days and two gaps, in whole days"))
    min_block_days: float = Field(3.0, gt=0, description="shortest default block, days")
    gap_s: float | None = Field(None, ge=0, description=(
        "gap between splits; default the first lag where the autocorrelations of the echo and of the "
        "ERA-5 series have both fallen to acf_threshold"))
    acf_threshold: float = Field(0.1, gt=0, lt=1, description="autocorrelation that sets the default gap")
    max_lag_s: float = Field(10 * 86400.0, gt=0, description=(
        "longest lag used for the autocorrelation (a series still correlated there counts as this)"))

    def min_block_s(self) -> float:
        """The shortest block this config allows (known before any data is read)."""
        return self.block_hours * 3600.0 if self.block_hours is not None else self.min_block_days * 86400.0

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {v}")
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError(f"the train and validation fractions must be > 0 (training needs both), got {v}")
        return v


class CprOperatorConfig(BaseModel):
    """The KaZR -> CloudSat-CPR forward operator of the dataset build (:mod:`bzpipe.forward`).

    Enabled, the build turns every colocated site-day into what the CPR would have seen of it
    (Ka -> W conversion, along-track footprint with the ERA-5 wind at each height, 480 m pulse on
    240 m bins, CPR noise and sensitivity) and a column of the dataset is one CPR profile.
    Facts and sources: ``docs/cloudsat_cpr.md`` keys [OR], [SJ19], [T08], [DPC-sensor].
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="build CPR-resolution patches (one column = one CPR profile)")
    pulse_length_m: float = Field(480.0, gt=0, description="range-weighting pulse length L [OR], [SJ19]")
    range_sampling_m: float = Field(240.0, gt=0, description="CPR range-bin spacing [SJ19]")
    profile_spacing_m: float = Field(1100.0, gt=0, description="along-track CPR profile spacing [DPC-sensor]")
    ifov_m: float = Field(1451.0, gt=0, description="antenna footprint IFOV (W_x = 0.25 at +-IFOV/2) [OR]")
    mds_dbz: float = Field(-28.0, description="minimum detectable signal (CPR design, Im et al. 2005)")
    noise: bool = Field(True, description="CPR-like reflectivity noise (std 9.24 dB at -37 dBZ .. 0.28 dB "
                                          "at -4 dBZ, after Hogan et al. 2005 via [OR])")
    ka_to_w: bool = Field(True, description="35 -> 94 GHz conversion of Kollias et al. (2019) below 30 dBZ")
    min_wind_m_s: float = Field(1.0, gt=0, description="slowest advection used to turn time into distance")
    reference_height_m: float = Field(1000.0, ge=0, description="height whose advection dates a profile")
    day_guard_km: float = Field(150.0, ge=0, description=(
        "along-track distance dropped at the start of each day: consecutive days are not adjacent on the "
        "along-track axis, so this keeps the split's gap between them (>= decorrelation length + a patch)"))


class BuildConfig(SitesAndTimes):
    grid: GridConfig = Field(default_factory=GridConfig)
    patch: PatchConfig = Field(default_factory=PatchConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    cold_threshold_c: float | None = Field(
        -2.0, description="keep samples whose surface temperature stays below this (degC); None keeps all")
    met_max_gap_s: float = Field(600.0, gt=0, description="longest met gap bridged by interpolation, s")
    era5_max_gap_s: float = Field(3 * 3600.0, gt=0, description="longest ERA-5 gap bridged in time, s")
    era5_columns: Literal["nearest", "bilinear"] = "nearest"
    forward_operator: CprOperatorConfig = Field(default_factory=CprOperatorConfig)
    chunk_samples: int = Field(8, ge=1, description=(
        "samples per Zarr shard of x (one stored object; inner chunks of one sample for random access)"))
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
        lo, hi = SURFACE_T_RANGE_C
        if self.cold_threshold_c is not None and not lo <= self.cold_threshold_c <= hi:
            raise ValueError(f"cold_threshold_c={self.cold_threshold_c} degC is outside any surface air "
                             f"temperature on Earth ({lo:g}..{hi:g} degC)")
        return self

    def check_split_blocks(self) -> None:
        """Raise :class:`ConfigError` when start..end cannot hold one split block per split.

        Called before any work (the pipeline before ingest, the build flow before
        colocation).  The data-driven block (:func:`bzpipe.split.default_block_s`) is
        at least ``split.min_block_days`` (or ``split.block_hours``); the plan checks
        again with the actual block length and the days that hold data.
        """
        span_s = ((self.end - self.start).days + 1) * 86400.0
        block_s = self.split.min_block_s()
        n_blocks = int(math.ceil(span_s / block_s - 1e-9))
        need = sum(f > 0 for f in self.split.fractions)
        if n_blocks < need:
            raise ConfigError(
                f"build: start..end ({self.start}..{self.end}) spans {span_s / 86400:.1f} days: at most {n_blocks} "
                f"split block(s) of {block_s / 86400:.2f} days, but the {need} splits with fractions "
                f"{self.split.fractions} need at least one block each (>= {need * block_s / 86400:.1f} days); "
                "extend the period or lower split.min_block_days / split.block_hours")


class TrainConfig(StageConfig):
    dataset: str = Field("v1", description="dataset version (or full store URI) to train on")
    run_name: str = Field("unet3p", pattern=r"^[A-Za-z0-9_.-]+$")
    channels: Literal["3+_1", "3+_5"] = "3+_5"
    filters: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
    dropout: float = Field(0.2, ge=0, lt=1)
    deep_supervision: bool = True
    rep_prior: bool = Field(False, description="start from the REP fill and predict a correction "
                            "(see bzpipe.model.UNet3PlusConfig); off in the paper's model")
    seeds: list[int] | None = Field(None, description=(
        "train one run per seed (run_name for the first, <run_name>.seed<k> for the others); "
        "None: the single seed `seed`"))
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    lr_schedule: Literal["cosine", "step"] = Field("cosine", description=(
        "after the warm-up: cosine decay to lr_min_ratio x lr over the epochs, or x lr_gamma every "
        "lr_step_epochs"))
    warmup_epochs: float = Field(1.0, ge=0, description="linear learning-rate warm-up from 0, epochs")
    lr_min_ratio: float = Field(0.05, ge=0, le=1, description="cosine schedule: final lr / lr")
    lr_step_epochs: int = Field(10, ge=1)
    lr_gamma: float = Field(0.5, gt=0, le=1)
    bn_momentum: float = Field(0.01, gt=0, le=1, description=(
        "batch-norm running-statistics momentum, PyTorch convention (Keras momentum 0.99 of King et al. = "
        "0.01); bias-corrected at the start of a run (bzpipe.optim)"))
    bn_eps: float = Field(1e-3, gt=0, description="batch-norm epsilon (Keras default 1e-3, as King et al.)")
    val_passes: int = Field(1, ge=0, description=(
        "validation loss of the model as inference uses it: MC-dropout passes (dropout on, fixed seed) "
        "averaged per pass in dBZ; 0: dropout off (deterministic network)"))
    patience: int = Field(8, ge=1, description="early stopping on the validation split")
    ramp_max_rows: int = Field(8, ge=0, description="random ramp above the blind zone, rows")
    max_batches_per_epoch: int | None = Field(None, ge=1)
    num_workers: int | None = Field(None, ge=0, description=(
        "DataLoader worker processes; None: auto (4 per GPU process, 0 on CPU: bzpipe.torchdata.make_loader)"))
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = True
    backend: Literal["local", "torchrun", "kubernetes", "slurm"] = "local"
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1, description="nodes (kubernetes / slurm backends)")
    resume: bool = Field(True, description="continue from models/<run_name>/checkpoint-last.pt if it exists")
    amp_dtype: Literal["bf16", "fp16"] = Field("bf16", description="GPU autocast dtype (fp16: + GradScaler)")
    channels_last: bool = Field(True, description="channels_last memory format (faster on GPU and CPU)")
    max_val_batches: int | None = Field(None, ge=1)
    val_ramp_rows: int = Field(0, ge=0, description="ramp above the blind zone for the validation loss")
    image: str = Field("bzpipe:latest", description="container image (kubernetes backend)")
    k8s_namespace: str = "default"
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"
    wait: bool = Field(True, description="cluster backends: block until the job ends")

    def seed_runs(self) -> list[tuple[str, int]]:
        """``(run_name, seed)`` of every run :attr:`seeds` asks for (one run when None)."""
        return seed_runs(self.run_name, self.seeds if self.seeds else [self.seed])


def seed_runs(run_name: str, seeds: list[int]) -> list[tuple[str, int]]:
    """Run names of a multi-seed training: the first seed keeps ``run_name``, the others get
    ``<run_name>.seed<k>``; duplicates are refused."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"train.seeds lists a seed twice: {seeds}")
    return [(run_name if i == 0 else f"{run_name}.seed{s}", int(s)) for i, s in enumerate(seeds)]


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
    bootstrap_unit_hours: float = Field(24.0, ge=0, description=(
        "block bootstrap unit: the patches of one site in floor(time / unit_hours) are resampled together "
        "(24: site-days); 0 resamples single patches (i.i.d.: too narrow for correlated patches)"))
    max_truth_dbz: float | None = Field(None, description=(
        "exclude test patches whose truth exceeds this anywhere (King et al.'s MAX_DBZ = 20), for every "
        "method; None keeps all; the report states the rule and the count"))
    seed_runs: list[str] = Field(default_factory=list, description=(
        "further training runs (other seeds) scored on the same patches; the report gives mean +- sd "
        "across run_name and these (set by a pipeline file from train.seeds)"))
    batch_size: int = Field(16, ge=1, description="patches per model batch")
    mc_max_batch: int = Field(64, ge=1, description="samples x passes per forward pass")
    mc_path: Literal["band", "full"] = Field("band", description=(
        "band: the exact band-limited decoder (bzpipe.model.band, ~4x less work per MC pass); "
        "full: the whole forward pass (for checking)"))
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    n_cases: int = Field(3, ge=0, description="example curtains in the report")
    spread_skill_bins: int = Field(10, ge=1)
    xai: bool = True
    xai_samples: int = Field(16, ge=1, description="patches for saliency and drop-channel importance")
    drop_channel: Literal["mean", "shuffle"] = Field(
        "mean", description="drop a channel by its training mean (0 standardized) or by shuffling patches")
    allow_dataset_mismatch: bool = Field(
        False, description="evaluate even when the dataset's checksum is not the one the model was trained "
                           "on (the report then says so); refused otherwise")

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

    @field_validator("quantiles")
    @classmethod
    def _quantile_levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return check_quantiles(v)


#: IngestConfig fields that shape the ERA-5 requests; inference fetches missing months with the same ones
ERA5_INGEST_KEYS = ("era5_box_deg", "era5_levels_hpa", "cds_concurrency", "retries", "retry_delay_s",
                    "request_timeout_s", "cds_poll_max_s", "cds_key_secret", "tmp_dir")


#: InferConfig fields that do not change an output's numbers: where the store is, which run (the model
#: id covers the checkpoint), hardware, scheduling, plots, and the release gate (a granule of another
#: release is quarantined, not filled differently).  Every other field enters the output's key.
INFER_RUNTIME_FIELDS = ("store_root", "run_name", "which", "landing", "device", "dask_address", "n_workers",
                        "max_in_flight", "cloudsat_source",
                        "threads_per_worker", "expected_release", "emit_dedupe_s", "scan_interval_s", "plot",
                        "overpass")
#: era5_ingest keys that change which ERA-5 values are fetched (the others are how they are fetched)
ERA5_REQUEST_KEYS = ("era5_box_deg", "era5_levels_hpa")


class OverpassSettings(BaseModel):
    """Overpass validation (:mod:`bzpipe.overpass`): granules passing near a KaZR site, compared with
    the site's KaZR put through the CPR forward operator."""

    model_config = ConfigDict(extra="forbid")

    sites: list[str | Site] | None = Field(None, description="KaZR sites to validate at; None: infer.sites")
    radius_km: float = Field(100.0, gt=0, description="CPR profiles within this distance of the site")
    window_h: float = Field(3.0, gt=0, description="KaZR within this many hours of the closest approach")
    report_run: str | None = Field(None, description="reports/<report_run>/overpass.json; None: run_name")
    min_profiles: int = Field(10, ge=1, description="fewer matched profiles: the overpass is not scored")


class InferConfig(StageConfig):
    run_name: str = "unet3p"
    landing: str = Field("landing/cloudsat", description="prefix (relative to the store root, or a URI) scanned for granules")
    blind_zone_m: float = Field(1200.0, gt=0)
    mc_passes: int = Field(50, ge=1)
    quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)
    window_overlap: int = Field(32, ge=0)
    batch_size: int = Field(64, ge=0, description=(
        "samples (windows x MC passes) per forward pass; 0: automatic, filling the GPU's memory (64 on CPU)"))
    mc_path: Literal["band", "full"] = Field("band", description=(
        "band: the exact band-limited decoder (bzpipe.model.band, ~4x less work per MC pass); "
        "full: the whole forward pass (for checking)"))
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
    max_in_flight: int = Field(MAX_IN_FLIGHT_DEFAULT, ge=1, description=(
        "most granules of a backfill submitted and unfinished at once; the rest wait"))
    cloudsat_source: Literal["offline", "landing"] | None = Field(None, description=(
        "offline: the pipeline stages a synthetic sample granule (the offline generator) into the landing "
        "area; landing: real granules arrive there from outside and nothing synthetic is staged; "
        "None: offline when the ingest sources are offline, else landing"))
    sites: list[str | Site] = Field(default_factory=lambda: ["nsa", "oli"],
                                    description="sites whose ERA-5 boxes a 5-channel model reads along the track")
    era5_ingest: dict[str, Any] = Field(
        default_factory=dict,
        description="ingest settings for the ERA-5 a 5-channel model fetches (e.g. era5_box_deg up to 10 to "
                    "cover more of the track); a pipeline file hands the ingest section's ERA-5 settings down")
    blind_zone_ocean_m: float | None = Field(None, gt=0, description=(
        "clutter depth above the surface over ocean (land_sea_flag 2), m; None: blind_zone_m (the land depth)"))
    surface_from: Literal["surface_height_bin", "dem"] = Field("surface_height_bin", description=(
        "where the surface bin comes from: the product's own SurfaceHeightBin (falling back to the DEM, "
        "with a warning, when the granule lacks it) or always the DEM"))
    atmosphere_sources: tuple[Literal["ecmwf_aux", "era5"], ...] = Field(("ecmwf_aux", "era5"), description=(
        "where a 5-channel model's state along the track comes from, in order: the granule's ECMWF-AUX "
        "companion, then ERA-5 (stored site boxes, then the granule's track boxes); profiles without any "
        "are flagged and not filled (or filled by radar_only_run)"))
    era5_track_boxes: bool = Field(True, description=(
        "with era5_source cds: request ERA-5 for the boxes along the track that nothing else covers"))
    radar_only_run: str | None = Field(None, description=(
        "a finished 1-channel model run that fills the profiles without an atmospheric state"))
    allow_resolution_mismatch: bool = Field(False, description=(
        "apply a model trained at KaZR resolution (dataset built without build.forward_operator) to CPR "
        "granules anyway; the output is flagged (resolution_mismatch = 1)"))
    fill_out_of_domain: bool = Field(False, description=(
        "also fill profiles outside the training domain (warmer than its cold threshold, or outside its "
        "latitude band); they stay flagged in out_of_domain"))
    domain_latitude_margin_deg: float = Field(5.0, ge=0, description=(
        "the training latitude band: the training sites' latitudes widened by this margin"))
    overpass: OverpassSettings = Field(default_factory=OverpassSettings)

    @field_validator("quantiles")
    @classmethod
    def _quantile_levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return check_quantiles(v)

    @field_validator("atmosphere_sources")
    @classmethod
    def _sources_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"atmosphere_sources lists a source twice: {list(v)}")
        return v

    @field_validator("blind_zone_m")
    @classmethod
    def _blind_zone_below_cpr_top(cls, v: float) -> float:
        if v >= CPR_WINDOW_TOP_M:
            raise ValueError(f"blind_zone_m={v:g} m reaches the top of the CPR range window "
                             f"(~{CPR_WINDOW_TOP_M:g} m): nothing would be observed above it")
        return v

    def settings_id(self) -> str:
        """8 hex digits of every setting that changes an output's numbers; part of the output's key
        (:meth:`bzpipe.store.Store.output_key`), so a run with other settings never reuses an output.

        Everything but :data:`INFER_RUNTIME_FIELDS` (where and how the run happens) counts, so a
        field added later enters the key unless it is declared runtime-only.
        """
        from bzpipe.provenance import sha256_json

        values = self.model_dump(mode="json", exclude=set(INFER_RUNTIME_FIELDS))
        values["era5_ingest"] = {k: v for k, v in values.get("era5_ingest", {}).items()
                                 if k in ERA5_REQUEST_KEYS}
        return sha256_json(values)[:8]

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

    @model_validator(mode="after")
    def _stages_fit_the_grid(self) -> "PipelineConfig":
        """What one stage asks of the grid and patches the build makes must fit them."""
        g, p, t = self.build.grid, self.build.patch, self.train
        rows = p.blind_zone_rows
        for where, extra in (("train.ramp_max_rows", t.ramp_max_rows), ("train.val_ramp_rows", t.val_ramp_rows),
                             ("evaluate.ramp_rows", self.evaluate.ramp_rows)):
            if rows + extra >= g.n_heights:
                raise ValueError(f"{where}={extra}: the blind zone ({rows} rows) plus {extra} ramp rows hides "
                                 f"all {g.n_heights} rows of the grid")
        check_blind_zone(self.infer.blind_zone_m, g.n_heights, g.top_m, trained_rows=rows,
                         ramp_rows=t.ramp_max_rows)
        return self


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
    # the evaluation scores every seed the training trains
    seeds = data["train"].get("seeds")
    if isinstance(seeds, list) and len(seeds) > 1:
        names = [r for r, _ in seed_runs(str(data["train"].get("run_name", "unet3p")), seeds)][1:]
        data["evaluate"].setdefault("seed_runs", names)
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
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}".removeprefix(": ")   # a whole-config check
                 for err in e.errors()]
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
