"""The CloudSat application stage: the fill settings (which enter the output key) and how runs happen."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bzpipe.config.base import CPR_WINDOW_TOP_M, MAX_IN_FLIGHT_DEFAULT, StageConfig, check_quantiles
from bzpipe.config.ingest import ERA5_INGEST_KEYS, IngestConfig
from bzpipe.config.sites import Site

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
    """The CloudSat application stage: which model fills which granules, and how (the settings that
    change the numbers enter the output key, :meth:`settings_id`)."""

    run_name: str = "unet3p"
    landing: str = Field("landing/cloudsat",
                         description="prefix (relative to the store root, or a URI) scanned for granules")
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
    which: Literal["best", "last"] = Field("last", description=(
        "checkpoint of the run to apply: last (the final epoch's, as the evaluation's default "
        "evaluate.checkpoint and King et al.) or best (the best validation epoch's)"))
    cloud_mask_min: int | None = Field(20, ge=0, le=40, description="CPR cloud mask for echo; None: all")
    max_profiles: int | None = Field(None, ge=1, description="only the first N profiles (tests, benchmarks)")
    threads_per_worker: int = Field(1, ge=1)
    era5_source: Literal["offline", "cds"] = Field("offline",
                                                   description="fetches missing ERA-5 (5-ch models)")
    emit_dedupe_s: float = Field(3600.0, ge=0, description="the scanner re-emits a granule only after this")
    scan_interval_s: float = Field(600.0, gt=0, description="schedule of the landing scanner")
    plot: bool = Field(True, description="write a curtain PNG beside each output")
    max_in_flight: int = Field(MAX_IN_FLIGHT_DEFAULT, ge=1, description=(
        "most granules of a backfill submitted and unfinished at once; the rest wait"))
    cloudsat_source: Literal["offline", "landing"] | None = Field(None, description=(
        "offline: the pipeline stages a synthetic sample granule (the offline generator) into the landing "
        "area; landing: real granules arrive there from outside and nothing synthetic is staged; "
        "None: offline when the ingest sources are offline, else landing"))
    sites: list[str | Site] = Field(default_factory=lambda: ["nsa", "oli"], description=(
        "sites whose ERA-5 boxes a 5-channel model reads along the track"))
    era5_ingest: dict[str, Any] = Field(
        default_factory=dict,
        description="ingest settings for the ERA-5 a 5-channel model fetches (e.g. era5_box_deg up to 10 to "
                    "cover more of the track); a pipeline file hands the ingest section's ERA-5 settings "
                    "down")
    blind_zone_ocean_m: float | None = Field(None, gt=0, description=(
        "clutter depth above the surface over ocean (land_sea_flag 2), m; None: blind_zone_m "
        "(the land depth)"))
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
        (:func:`bzpipe.store.layout.output_key`), so a run with other settings never reuses an output.

        Everything but :data:`INFER_RUNTIME_FIELDS` (where and how the run happens) counts, so a
        field added later enters the key unless it is declared runtime-only.
        """
        from bzpipe.checksums import sha256_json

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
