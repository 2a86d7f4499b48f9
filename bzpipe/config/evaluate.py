"""The evaluation stage: which model on which split, the baselines, scores and report contents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from bzpipe.config.base import StageConfig, check_quantiles


class EvalConfig(StageConfig):
    """The evaluation stage: which model on which split, the baselines, the scores and the report."""

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
    checkpoint: Literal["best", "last"] = Field("last", description=(
        "the weights scored: last, the final epoch's (averaged over about an epoch: train.ema_epochs), as "
        "King et al. evaluate theirs; best, the best validation epoch's.  On the development winter the "
        "last weights gave the better MAE in 5 of 6 runs and the other an equal one (README, Skill)"))
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
