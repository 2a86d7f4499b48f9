"""The dataset build stage: grid, patches, split, the CPR forward operator, the Dask cluster."""

from __future__ import annotations

import math
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bzpipe.config.base import SURFACE_T_RANGE_C, SitesAndTimes
from bzpipe.errors import ConfigError


class GridConfig(BaseModel):
    """The common height x time grid that radar and ERA-5 are colocated on."""

    model_config = ConfigDict(extra="forbid")

    n_heights: int = Field(128, ge=16)
    top_m: float = Field(10000.0, gt=0, description="top of the height grid above ground, m")
    time_step_s: float = Field(4.0, gt=0, description="output time step; bins [t, t + step) labelled by t")

    @property
    def dz_m(self) -> float:
        return self.top_m / self.n_heights


class PatchConfig(BaseModel):
    """The patches cut from the grid: width, blind-zone rows, placement and the sample filter."""

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
    filter_train: bool = Field(False, description=(
        "apply echo_block and min_echo_fraction to the training split too, as King et al. (true); "
        "false (a documented improvement, README Skill): train on every usable window, clear air above "
        "included, while validation and test keep the filter. The model fills every column it is applied "
        "to (CloudSat profiles under clear air too), and shallow snowfall and low cloud under a clear sky "
        "are the same boundary-layer physics it must learn; on the demo the best validation loss fell "
        "for each of three seeds"))


class SplitConfig(BaseModel):
    """The leak-free train / validation / test split: fractions, block length and the gap between splits."""

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
    test_from: date | None = Field(None, description=(
        "a held-out test period: every block from this day on (00 UTC) is test, and fractions share the "
        "blocks before it between train and val (its test fraction must be 0); the split gap is still "
        "kept between the two periods.  E.g. the first day of a later winter (with months): the test is "
        "a season the model never saw, as a whole, the strongest separation a time series allows; "
        "None: test blocks are drawn among the others by fractions"))

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

    @model_validator(mode="after")
    def _test_period(self) -> SplitConfig:
        if self.test_from is not None and self.fractions[2] != 0:
            raise ValueError(f"split.test_from ({self.test_from}) makes every block from that day on the "
                             f"test split: the fractions share the blocks before it between train and val, "
                             f"so their test fraction must be 0, got {self.fractions}")
        return self


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
    """The dataset build stage: colocation, the split and patches, the Zarr layout, the Dask cluster."""

    grid: GridConfig = Field(default_factory=GridConfig)
    patch: PatchConfig = Field(default_factory=PatchConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    cold_threshold_c: float | None = Field(
        -2.0, description="keep samples whose surface temperature stays below this (degC); None keeps all")
    met_max_gap_s: float = Field(600.0, gt=0, description="longest met gap bridged by interpolation, s")
    era5_max_gap_s: float = Field(3 * 3600.0, gt=0, description="longest ERA-5 gap bridged in time, s")
    era5_columns: Literal["nearest", "bilinear"] = "nearest"
    era5_humidity: Literal["specific", "relative"] = Field("relative", description=(
        "humidity channel: 'specific' (q, as King et al., standardized like every ERA-5 channel) or "
        "'relative' (relative humidity "
        "from ERA-5 q and t at the standard pressure, bzpipe.thermo: the saturation the blind-zone "
        "processes depend on, which a small network does not derive from q and t in CPU minutes)"))
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
    def _patch_fits(self) -> BuildConfig:
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
        days = self.days()
        months = "" if self.months is None else f", months {self.months}"
        block_s = self.split.min_block_s()
        test_from = self.split.test_from
        if test_from is not None:
            n_test = sum(d >= test_from for d in days)
            n_before = len(days) - n_test
            need_before = int(math.ceil(2 * block_s / 86400 - 1e-9))
            if n_test == 0 or n_before < need_before:
                raise ConfigError(
                    f"build: split.test_from {test_from} leaves {n_before} day(s) of start..end "
                    f"({self.start}..{self.end}{months}) before it and {n_test} from it on; train and val "
                    f"need at least one block of {block_s / 86400:.2f} days each before it "
                    f"(>= {need_before} days) and the test at least one day from it on; move test_from or "
                    "extend the period")
            days = [d for d in days if d < test_from]
        span_s = len(days) * 86400.0                         # the days of start..end in months
        n_blocks = int(math.ceil(span_s / block_s - 1e-9))
        need = sum(f > 0 for f in self.split.fractions)
        if n_blocks < need:
            raise ConfigError(
                f"build: start..end ({self.start}..{self.end}{months}) spans {span_s / 86400:.1f} days: "
                f"at most {n_blocks} split block(s) of {block_s / 86400:.2f} days, but the {need} splits "
                f"with fractions {self.split.fractions} need at least one block each "
                f"(>= {need * block_s / 86400:.1f} days); "
                "extend the period or lower split.min_block_days / split.block_hours")
