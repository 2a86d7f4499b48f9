"""The ingest stage: where raw KaZR, met and ERA-5 files come from, and how they are fetched."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bzpipe.config.base import SitesAndTimes


class SyntheticConfig(BaseModel):
    """The offline sample-data generator (the embedded default source)."""

    model_config = ConfigDict(extra="forbid")

    time_step_s: float = Field(4.0, gt=0, description="KaZR profile interval")
    hours_per_day: float = Field(24.0, gt=0, le=24, description="hours written per day file")
    hours_per_day_from: dict[date, float] = Field(default_factory=dict, description=(
        "from each of these days on (inclusive, the latest one that is not after the day), this many "
        "hours per day file instead of hours_per_day: e.g. {2019-11-01: 1} writes 1-h days from then on. "
        "A CPU-budget device of the offline demo (real KaZR days have 24 h): a held-out test winter "
        "(build.split.test_from) of many short days costs a little ingest, colocation and evaluation"))
    n_gates: int = Field(400, ge=32, description="KaZR range gates")
    gate_spacing_m: float = Field(30.0, gt=0)
    first_gate_m: float = Field(160.0, ge=0)
    cloudsat_profiles: int = Field(4000, ge=64, description="profiles per synthetic CloudSat granule")

    @field_validator("hours_per_day_from")
    @classmethod
    def _hours_valid(cls, v: dict[date, float]) -> dict[date, float]:
        bad = {str(d): h for d, h in v.items() if not 0 < h <= 24}
        if bad:
            raise ValueError(f"hours_per_day_from: hours must be in (0, 24], got {bad}")
        return dict(sorted(v.items()))

    def file_settings(self, day: str | date = "") -> dict[str, object]:
        """What the content of the file of ``day`` (ISO; "" for a month's ERA-5) depends on: the
        settings with the schedule resolved to that day's hours."""
        out = self.model_dump(mode="json", exclude={"hours_per_day_from"})
        if day:
            out["hours_per_day"] = self.hours_on(date.fromisoformat(str(day)))
        return out

    def hours_on(self, day: date) -> float:
        """The hours written for ``day``: the latest ``hours_per_day_from`` entry not after it, or
        ``hours_per_day``."""
        hours = self.hours_per_day
        for d, h in self.hours_per_day_from.items():   # sorted by day
            if d <= day:
                hours = h
        return hours


class IngestConfig(SitesAndTimes):
    """The ingest stage: KaZR and met files from ARM (or the offline generator), ERA-5 from the CDS
    (or the generator), with their concurrency, retries and timeouts.  (The Prefect Secret blocks the
    flows read credentials from are flow settings: :class:`flows.settings.IngestSecrets`.)"""

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
    tmp_dir: str | None = Field(None, description=(
        "local folder for downloads in flight; default: system temp"))
    offline_processes: int = Field(0, ge=0, description=(
        "generate offline files in this many spawned worker processes (the generator is pure Python and "
        "numpy, so threads share one core); 0: in the task's own thread.  The files are the same either way"))

    @field_validator("era5_levels_hpa")
    @classmethod
    def _levels_reach_300(cls, v: list[int]) -> list[int]:
        if not v or min(v) > 300:
            raise ValueError("ERA-5 levels must reach up to 300 hPa at least")
        if any(p <= 0 or p > 1100 for p in v):
            raise ValueError("pressure levels must lie in (0, 1100] hPa")
        return sorted(set(v), reverse=True)


#: IngestConfig fields that shape the ERA-5 requests; inference fetches missing months with the same ones
ERA5_INGEST_KEYS = ("era5_box_deg", "era5_levels_hpa", "cds_concurrency", "retries", "retry_delay_s",
                    "request_timeout_s", "cds_poll_max_s", "tmp_dir")
