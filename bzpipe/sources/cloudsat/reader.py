"""Read a CloudSat granule (2B-GEOPROF, or a product sharing its geometry) into the schema Dataset.

:func:`read_granule` returns dims ``(profile, bin)`` with bin 0 the top of the
profile, as in the product (see :mod:`bzpipe.schema`):

=================  ==================  ==========================================================
variable           dtype / units       from (CloudSat field)
=================  ==================  ==========================================================
reflectivity       float32 dBZ         ``Radar_Reflectivity`` (int16, factor 100); fill, missing
                                       and values outside ``valid_range`` -> NaN
height             float32 m MSL       ``Height`` (int16); fill -> NaN
cloud_mask         int8 (0-40)         ``CPR_Cloud_mask``; fill / missing / out of range -> -9
latitude           float32 deg N       ``Latitude``
longitude          float32 deg E       ``Longitude`` (-180..180)
time               datetime64[ns] UTC  granule date + ``UTC_start`` + ``Profile_time``
dem_elevation      float32 m MSL       ``DEM_elevation``; -9999 (ocean) -> 0 m; missing -> NaN
land_sea_flag      uint8               ``Navigation_land_sea_flag`` as stored (1 land, 2 ocean, ...)
surface_height_bin int16               ``SurfaceHeightBin`` made 0-based (-1 = none)
cloud_scenario     int16               2B-CLDCLASS ``cloud_scenario`` bit field, as stored
cloud_type         int8 (0-8)          bits 1-4 of ``cloud_scenario`` (0 none, 1 Ci, 2 As, 3 Ac,
                                       4 St, 5 Sc, 6 Cu, 7 Ns, 8 deep convection)
=================  ==================  ==========================================================

Stored values become science values as the CloudSat DPC specifies:
``science = (stored - offset) / factor`` with ``<field>.factor`` and
``<field>.offset`` from the swath attributes; ``valid_range`` and ``missing``
(with ``missop``) are compared with the *stored* values, as is the HDF-EOS fill
value ``_FV_<field>`` (or the SDS ``_FillValue``).

Optional variables appear only when the file has them: ``cloud_mask`` and
``land_sea_flag`` and ``surface_height_bin`` (2B-GEOPROF), ``cloud_scenario`` /
``cloud_type`` (2B-CLDCLASS), ``dem_elevation``.  ``reflectivity`` is required unless
``require_reflectivity=False`` (e.g. for the 2B-CLDCLASS sample, which has the
2B-GEOPROF geometry but no ``Radar_Reflectivity``).
"""

from __future__ import annotations

import dataclasses
import operator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from bzpipe.errors import (
    CorruptFileError,
    EmptyDataError,
    InputFileError,
    MissingVariableError,
    WrongReleaseError,
)
from bzpipe.sources.cloudsat.hdfeos import FieldAttrs, SwathFile, damage_is_corrupt
from bzpipe.sources.cloudsat.names import GranuleInfo, granule_info
from bzpipe.sources.cloudsat.plausibility import check_granule
from bzpipe.sources.cloudsat.tai import tai93_to_utc

CLOUD_MASK_FILL = -9  # int8 value of cloud_mask where the product has no valid mask
DEM_OCEAN = -9999  # DEM_elevation value meaning "ocean" (inside valid_range; 9999 is missing)
REFLECTIVITY_DEFAULT_FACTOR = 100.0  # Radar_Reflectivity is stored in hundredths of dBZ
_MISSOPS = {"==": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}

REQUIRED_GEOMETRY = ("Height", "Latitude", "Longitude", "Profile_time")


@damage_is_corrupt
def read_granule(path: str | Path, *, require_reflectivity: bool = True,
                 source: str | None = None) -> xr.Dataset:
    """Read a CloudSat HDF-EOS2 granule from a local ``path``.

    ``source`` is the name to report in attrs and errors (e.g. the ``s3://`` URI
    when ``path`` is the temporary copy from ``Store.local_path``); its base
    name is parsed for the granule fields when it is a CloudSat file name.

    Returns the Dataset described in the module docstring, attrs ``granule_id``
    (``YYYYDDDHHMMSS_NNNNN``), ``orbit`` (int), ``release`` (``R05``),
    ``product`` (``2B-GEOPROF``), ``start_time`` (ISO 8601 UTC of the first
    profile), ``source_file``, ``epoch``, ``fix``, ``iteration``, ``swath_name``.

    Raises :class:`MissingVariableError` (no ``Radar_Reflectivity`` while
    required, or missing geometry), :class:`CorruptFileError` (not HDF4,
    truncated, inconsistent shapes, anything pyhdf cannot decode),
    :class:`~bzpipe.errors.ImplausibleDataError` (values no CPR produces: damaged
    bytes, see :mod:`~bzpipe.sources.cloudsat.plausibility`), :class:`EmptyDataError`
    (heights all fill, or reflectivity all fill while required), each naming the file.
    """
    source = source or str(path)
    with SwathFile(path, source=source) as sw:
        info = _granule_fields(sw, source)
        for name in REQUIRED_GEOMETRY:
            if not sw.has(name):
                raise MissingVariableError(source, f"no {name!r} field in swath {sw.swath_name!r}")
        has_refl = sw.has("Radar_Reflectivity")
        if require_reflectivity and not has_refl:
            raise MissingVariableError(
                source, f"no 'Radar_Reflectivity' field in swath {sw.swath_name!r} "
                        f"(product {info['product']}; a 2B-GEOPROF granule is needed)")

        height_raw = sw.read("Height")
        if height_raw.ndim != 2:
            raise CorruptFileError(source, f"'Height' has shape {height_raw.shape}, expected (nray, nbin)")
        nray, nbin = height_raw.shape
        if nray == 0 or nbin == 0:
            raise EmptyDataError(source, f"swath has {nray} profiles x {nbin} bins")
        _check_struct_metadata(sw, nray, nbin, source)

        def read1d(name: str) -> np.ndarray:
            raw = sw.read(name)
            if raw.shape != (nray,):
                raise CorruptFileError(source, f"{name!r} has shape {raw.shape}, expected ({nray},)")
            return raw

        def read2d(name: str) -> np.ndarray:
            raw = sw.read(name)
            if raw.shape != (nray, nbin):
                raise CorruptFileError(source, f"{name!r} has shape {raw.shape}, expected ({nray}, {nbin})")
            return raw

        height, height_bad = decode(height_raw, sw.field_attrs("Height"))
        if height_bad.all():
            raise EmptyDataError(source, "'Height' holds only fill values")
        data_vars: dict[str, tuple] = {}

        if has_refl:
            attrs = sw.field_attrs("Radar_Reflectivity")
            if "Radar_Reflectivity.factor" not in sw.attributes:
                attrs = dataclasses.replace(attrs, factor=REFLECTIVITY_DEFAULT_FACTOR)
            dbz, bad = decode(read2d("Radar_Reflectivity"), attrs)
            if bad.all() and require_reflectivity:
                raise EmptyDataError(source, "'Radar_Reflectivity' holds only fill / missing / "
                                             "out-of-range values")
            data_vars["reflectivity"] = (("profile", "bin"), _nan(dbz, bad), {
                "units": "dBZ", "long_name": attrs.long_name or "radar reflectivity factor",
                "source_field": "Radar_Reflectivity"})
        data_vars["height"] = (("profile", "bin"), _nan(height, height_bad), {
            "units": "m", "long_name": "height of the range bin above mean sea level",
            "source_field": "Height"})

        if sw.has("CPR_Cloud_mask"):
            mask, bad = decode(read2d("CPR_Cloud_mask"), sw.field_attrs("CPR_Cloud_mask"))
            data_vars["cloud_mask"] = (("profile", "bin"),
                                       np.where(bad, CLOUD_MASK_FILL, mask).astype(np.int8), {
                "long_name": "CPR cloud mask (0-40; >= 20 cloud likely)",
                "comment": f"{CLOUD_MASK_FILL} where the product has no valid value",
                "source_field": "CPR_Cloud_mask"})
        if sw.has("cloud_scenario"):
            scen = read2d("cloud_scenario").astype(np.int16)
            data_vars["cloud_scenario"] = (("profile", "bin"), scen, {
                "long_name": "2B-CLDCLASS cloud scenario bit field (as stored)",
                "comment": "bit 0 scenario flag, 1-4 cloud type, 5-6 land/sea, 7-8 latitude, "
                           "9-10 algorithm, 11-12 quality, 13-14 precipitation",
                "source_field": "cloud_scenario"})
            data_vars["cloud_type"] = (("profile", "bin"), ((scen >> 1) & 0xF).astype(np.int8), {
                "long_name": "cloud type: 0 none, 1 Ci, 2 As, 3 Ac, 4 St, 5 Sc, 6 Cu, 7 Ns, "
                             "8 deep convection",
                "source_field": "cloud_scenario"})

        for name, var, units, long_name in (("Latitude", "latitude", "degrees_north", "latitude"),
                                            ("Longitude", "longitude", "degrees_east", "longitude")):
            values, bad = decode(read1d(name), sw.field_attrs(name))
            data_vars[var] = ("profile", _nan(values, bad), {"units": units, "long_name": long_name,
                                                             "source_field": name})

        times = profile_times(sw, info["start"], nray, source)
        data_vars["time"] = ("profile", times, {"long_name": "time of the profile (UTC)"})

        if sw.has("DEM_elevation"):
            raw = read1d("DEM_elevation")
            dem, bad = decode(raw, sw.field_attrs("DEM_elevation"))
            dem = np.where((raw == DEM_OCEAN) & ~bad, 0.0, dem)
            data_vars["dem_elevation"] = ("profile", _nan(dem, bad), {
                "units": "m", "long_name": "surface elevation above mean sea level (0 over ocean)",
                "source_field": "DEM_elevation"})
        if sw.has("Navigation_land_sea_flag"):
            data_vars["land_sea_flag"] = ("profile", read1d("Navigation_land_sea_flag").astype(np.uint8), {
                "long_name": "land/sea flag as stored (1 land, 2 ocean; 3-5 coast / inland water classes)",
                "source_field": "Navigation_land_sea_flag"})
        if sw.has("SurfaceHeightBin"):
            data_vars["surface_height_bin"] = ("profile", _surface_bin(
                read1d("SurfaceHeightBin"), sw.field_attrs("SurfaceHeightBin"), nbin), {
                "long_name": "index of the bin holding the surface echo (0-based, bin 0 = top; -1 = none)",
                "source_field": "SurfaceHeightBin", "comment": "the product stores it 1-based"})

        ds_attrs = {
            "granule_id": info["granule_id"], "orbit": info["orbit"], "release": info["release"],
            "product": info["product"], "start_time": _iso(info["start"]), "source_file": source,
            "epoch": info["epoch"] or "", "fix": info["fix"] or "", "iteration": info["iteration"] or "",
            "swath_name": sw.swath_name,
            "hdfeos_version": str(sw.global_attributes.get("HDFEOSVersion", "")),
        }
        if sw.has("Vertical_binsize"):
            ds_attrs["vertical_binsize_m"] = float(sw.read("Vertical_binsize").ravel()[0])
    ds = xr.Dataset(data_vars, coords={"profile": np.arange(nray), "bin": np.arange(nbin)}, attrs=ds_attrs)
    return check_granule(ds, source)


def check_release(ds: xr.Dataset, expected: str = "R05") -> xr.Dataset:
    """Return ``ds`` when its ``release`` attr is ``expected``, else raise :class:`WrongReleaseError`."""
    release = ds.attrs.get("release")
    if release != expected:
        raise WrongReleaseError(ds.attrs.get("source_file", "<unknown file>"),
                                f"CloudSat release {release!r}, expected {expected!r}")
    return ds


def decode(raw: np.ndarray, attrs: FieldAttrs) -> tuple[np.ndarray, np.ndarray]:
    """CloudSat stored values -> (science values float64, invalid mask).

    ``science = (stored - offset) / factor``; invalid where the stored value is
    the fill value, matches ``missing`` under ``missop``, or lies outside
    ``valid_range`` (all compared in stored units).
    """
    raw = np.asarray(raw)
    bad = np.zeros(raw.shape, dtype=bool)
    if attrs.fill is not None:
        bad |= raw == attrs.fill
    if attrs.missing is not None:
        bad |= _MISSOPS.get(attrs.missop, operator.eq)(raw, attrs.missing)
    if attrs.valid_range is not None:
        lo, hi = attrs.valid_range
        bad |= (raw < lo) | (raw > hi)
    if raw.dtype.kind == "f":
        bad |= ~np.isfinite(raw)
    factor = attrs.factor or 1.0  # a 0 factor would be a broken file; treat as unscaled
    values = (raw.astype(np.float64) - attrs.offset) / factor
    return values, bad


def profile_times(sw: SwathFile, start: datetime, nray: int, source: str) -> np.ndarray:
    """datetime64[ns] UTC of each profile: granule date + ``UTC_start`` + ``Profile_time``.

    ``UTC_start`` is seconds since 00 UTC of the first profile's day; the day
    comes from ``start`` (file name or ``start_time`` attribute), shifted by a
    day if ``UTC_start`` is on the other side of midnight.  Without
    ``UTC_start``, ``TAI_start`` (TAI93 seconds) minus leap seconds is used.
    """
    offsets, bad = decode(sw.read("Profile_time"), sw.field_attrs("Profile_time"))
    if offsets.shape != (nray,):
        raise CorruptFileError(source, f"'Profile_time' has shape {offsets.shape}, expected ({nray},)")
    if bad.any():
        raise CorruptFileError(source, f"'Profile_time' has {int(bad.sum())} invalid values")
    if sw.has("UTC_start"):
        utc_start = float(sw.read("UTC_start").ravel()[0])
        midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
        first = midnight + timedelta(seconds=utc_start)
        if (first - start).total_seconds() > 43200:
            first -= timedelta(days=1)
        elif (start - first).total_seconds() > 43200:
            first += timedelta(days=1)
    elif sw.has("TAI_start"):
        first = tai93_to_utc(float(sw.read("TAI_start").ravel()[0]))
    else:
        raise MissingVariableError(source, "neither 'UTC_start' nor 'TAI_start' to anchor 'Profile_time'")
    base = np.datetime64(first.replace(tzinfo=None), "ns")
    return base + np.round(offsets * 1e9).astype("timedelta64[ns]")


# ---------------------------------------------------------------------- helpers
def _granule_fields(sw: SwathFile, source: str) -> dict:
    """Granule id, orbit, product, release, start: from the file name when it is a
    CloudSat name, else from the swath attributes (``granule_number``, ``start_time``,
    ``product_version``).  The release always comes from ``product_version`` when the
    file has it (what is inside the file wins over its name)."""
    name = source.rstrip("/").rsplit("/", 1)[-1]
    info: GranuleInfo | None
    try:
        info = granule_info(name)
    except InputFileError:
        info = None
    a = sw.attributes
    out: dict = {}
    if info is not None:
        out = {"granule_id": info.granule_id, "orbit": info.orbit, "product": info.product,
               "release": info.release, "start": info.start, "epoch": info.epoch, "fix": info.fix,
               "iteration": info.iteration}
    else:
        try:
            start = datetime.strptime(str(a["start_time"]), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            orbit = int(a["granule_number"])
        except (KeyError, ValueError):
            raise CorruptFileError(source, "neither a CloudSat file name nor 'start_time' / "
                                           "'granule_number' swath attributes") from None
        out = {"granule_id": f"{start:%Y%j%H%M%S}_{orbit:05d}", "orbit": orbit,
               "product": str(a.get("algorithm_name", sw.swath_name)), "release": "",
               "start": start, "epoch": None, "fix": None, "iteration": None}
    version = a.get("product_version")
    if isinstance(version, str) and "_" in version:
        out["iteration"], out["release"] = version.split("_", 1)
    if not out["release"]:
        raise CorruptFileError(source, "cannot tell the release "
                                       "(no CloudSat file name, no 'product_version')")
    return out


def _check_struct_metadata(sw: SwathFile, nray: int, nbin: int, source: str) -> None:
    meta = sw.struct_metadata()
    if meta is None:
        return
    dims = meta["dimensions"]
    for dim, n in (("nray", nray), ("nbin", nbin)):
        if dim in dims and dims[dim] != n:
            raise CorruptFileError(source, f"StructMetadata.0 says {dim}={dims[dim]} but 'Height' has {n}")


def _surface_bin(raw: np.ndarray, attrs: FieldAttrs, nbin: int) -> np.ndarray:
    """``SurfaceHeightBin`` (1-based, fill -1 [ICARE]; 3S-GEOPROF-COMB ``cloudsat_util_10.py``) -> 0-based
    int16, -1 where missing or outside ``1..nbin``."""
    values, bad = decode(raw, attrs)
    with np.errstate(invalid="ignore"):
        bad |= ~np.isfinite(values) | (values < 1) | (values > nbin)
    return np.where(bad, -1, np.round(values) - 1).astype(np.int16)


def _nan(values: np.ndarray, bad: np.ndarray) -> np.ndarray:
    return np.where(bad, np.nan, values).astype(np.float32)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
