"""What the stage configs share: the store root and seed, sites and dates, physical limits, checks."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bzpipe.config.sites import Site, resolve_site
from bzpipe.errors import ConfigError

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
        raise ConfigError(f"{where}={blind_zone_m:g} m covers {rows} rows of {dz:g} m, but the model "
                          f"grid has only {n_heights} rows up to {top_m:g} m: no observed row would be "
                          "left above the blind zone to fill it from")
    if trained_rows is not None and rows > trained_rows + ramp_rows:
        raise ConfigError(f"{where}={blind_zone_m:g} m covers {rows} rows of {dz:g} m, but the model is "
                          f"trained to fill at most {trained_rows} + {ramp_rows} (ramp) rows; lower the "
                          "blind zone or train with a taller blind zone / ramp")
    return rows


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
    """The sites and the days (``start`` .. ``end``, inclusive, in ``months``) a stage works on."""

    sites: list[str | Site] = Field(default_factory=lambda: ["nsa", "oli"])
    start: date = date(2019, 1, 1)
    end: date = Field(date(2019, 1, 2), description="last day, inclusive")
    months: list[int] | None = Field(None, description=(
        "calendar months (1-12) of start..end to use, e.g. [11, 12, 1, 2, 3] for the cold seasons of "
        "several years (King et al. keep cold months only); None: every day of start..end"))
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

    @field_validator("months")
    @classmethod
    def _months_valid(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v or any(not 1 <= m <= 12 for m in v) or len(set(v)) != len(v):
            raise ValueError(f"months must be distinct calendar months 1-12, got {v}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> SitesAndTimes:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if not self.days():
            raise ValueError(f"no day of {self.start}..{self.end} is in months {self.months}")
        return self

    def site_objects(self) -> list[Site]:
        return [resolve_site(s) for s in self.sites]

    def days(self) -> list[date]:
        """The days of ``start`` .. ``end`` (inclusive) in ``months``."""
        n = (self.end - self.start).days + 1
        days = (date.fromordinal(self.start.toordinal() + i) for i in range(n))
        return [d for d in days if self.months is None or d.month in self.months]

    def start_datetime(self) -> datetime:
        return datetime.combine(self.start, time(0), tzinfo=UTC)

    def end_datetime(self) -> datetime:
        """Exclusive end: midnight after ``end``."""
        return datetime.combine(date.fromordinal(self.end.toordinal() + 1), time(0), tzinfo=UTC)
