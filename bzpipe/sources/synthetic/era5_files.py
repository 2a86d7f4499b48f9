"""Synthetic ERA-5 months on pressure levels, in the new or the legacy CDS netCDF layout.

Fields are ERA-5's view of the hidden atmosphere (:func:`.atmosphere.state_at`
``view="era5"``: no mesoscale detail, a weaker surface inversion, smooth
humidity / temperature / wind / boundary-layer-depth errors) sampled hourly
on a 0.25-degree box around the site, on pressure levels.  Horizontal structure comes from frozen
advection: the grid point displaced by ``r`` from the site sees the site's
column at ``t - (r . U) / |U|^2`` (``U`` the 1.5 km wind, shift clipped to
+-3 h), so the point at the site is the same ERA-5 view of the column the KaZR and met files see.
Columns are computed on a 5-minute lattice of absolute time and interpolated.

Layouts (``layout=``):

``"cds"``  current CDS netCDF (since 2024): dims ``valid_time`` (int64 s since
           1970), ``pressure_level`` (float64 hPa, decreasing), ``latitude``
           (decreasing), ``longitude``; coords ``number`` (scalar) and
           ``expver`` (string per time); float32 variables with ``GRIB_*``
           attributes, ``Conventions`` / ``institution`` / ``history`` as cfgrib writes them.
``"legacy"`` old CDS netCDF (grib_to_netcdf): ``time`` (int32 hours since
           1900-01-01), ``level`` (int32 millibars), ``latitude`` / ``longitude``
           float32, variables packed int16 with ``scale_factor`` / ``add_offset`` /
           ``_FillValue`` / ``missing_value``; netCDF-3 64-bit offset.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import netCDF4
import numpy as np
from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

from bzpipe.config import Site, resolve_site
from bzpipe.sources.synthetic.atmosphere import state_at

GRID_DEG = 0.25
LATTICE_S = 300.0
MAX_SHIFT_S = 3 * 3600.0
_CHUNK = 1500

#: short name -> (paramId, long name, units, CF standard name)
ERA5_PARAMS = {
    "z": (129, "Geopotential", "m**2 s**-2", "geopotential"),
    "t": (130, "Temperature", "K", "air_temperature"),
    "q": (133, "Specific humidity", "kg kg**-1", "specific_humidity"),
    "u": (131, "U component of wind", "m s**-1", "eastward_wind"),
    "v": (132, "V component of wind", "m s**-1", "northward_wind"),
}


def era5_file_name(site: str | Site, year: int, month: int) -> str:
    """``era5_<site>_<YYYYMM>.nc``."""
    return f"era5_{resolve_site(site).name}_{year:04d}{month:02d}.nc"


def era5_grid(site: str | Site, box_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(latitudes decreasing, longitudes increasing in -180..180) of the 0.25-degree points
    within ``box_deg`` of the site; always includes the four points around the site."""
    site = resolve_site(site)
    lon0 = ((site.longitude + 180.0) % 360.0) - 180.0

    def axis(c: float) -> np.ndarray:
        lo = min(np.ceil((c - box_deg) / GRID_DEG), np.floor(c / GRID_DEG))
        hi = max(np.floor((c + box_deg) / GRID_DEG), np.ceil(c / GRID_DEG))
        return np.arange(lo, hi + 1) * GRID_DEG

    return axis(site.latitude)[::-1], axis(lon0)


def _month_hours(year: int, month: int) -> np.ndarray:
    start = np.datetime64(f"{year:04d}-{month:02d}-01T00", "h")
    nxt = np.datetime64(f"{year + month // 12:04d}-{month % 12 + 1:02d}-01T00", "h")
    return np.arange(start, nxt, np.timedelta64(1, "h"))


def era5_month_arrays(site: str | Site, year: int, month: int, levels_hpa: list[int] | np.ndarray,
                      box_deg: float, seed: int) -> dict[str, np.ndarray]:
    """Hourly fields ``t q u v z`` (float32, ``(time, level, lat, lon)``) plus ``time``
    (datetime64[s]), ``level`` (hPa, decreasing), ``latitude``, ``longitude``."""
    site = resolve_site(site)
    levels = np.array(sorted(set(int(x) for x in levels_hpa), reverse=True), dtype=np.float64)
    lats, lons = era5_grid(site, box_deg)
    hours = _month_hours(year, month)
    t_h = hours.astype("datetime64[s]").astype(np.int64).astype(np.float64)

    # steering wind at 1.5 km -> time shift per (hour, lat, lon)
    st_h = state_at(site, t_h, seed, view="era5")
    u, v = st_h.wind(np.array([1500.0]))
    u, v = u[:, 0], v[:, 0]
    speed = np.hypot(u, v)
    lon0 = ((site.longitude + 180.0) % 360.0) - 180.0
    dy = (lats - site.latitude) * 110_574.0
    dx = (lons - lon0) * 111_320.0 * np.cos(np.radians(site.latitude))
    dot = u[:, None, None] * dx[None, None, :] + v[:, None, None] * dy[None, :, None]
    shift = np.clip(-dot / (np.maximum(speed, 1e-6) * np.maximum(speed, 3.0))[:, None, None],
                    -MAX_SHIFT_S, MAX_SHIFT_S)
    t_src = t_h[:, None, None] + shift  # (time, lat, lon)

    k0 = int(np.floor(t_src.min() / LATTICE_S))
    k1 = int(np.ceil(t_src.max() / LATTICE_S)) + 1
    lattice = np.arange(k0, k1 + 1) * LATTICE_S
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ERA5_PARAMS}
    for i in range(0, lattice.size, _CHUNK):
        fields = state_at(site, lattice[i:i + _CHUNK], seed, view="era5").on_pressure_levels(levels)
        for k in cols:
            cols[k].append(fields[k])
    pos = (t_src - lattice[0]) / LATTICE_S
    i0 = np.clip(np.floor(pos).astype(int), 0, lattice.size - 2)
    w = (pos - i0)[..., None]
    out: dict[str, np.ndarray] = {"time": hours.astype("datetime64[s]"), "level": levels,
                                  "latitude": lats, "longitude": lons}
    for k, parts in cols.items():
        col = np.concatenate(parts, axis=0)  # (lattice, K)
        val = col[i0] * (1.0 - w) + col[i0 + 1] * w  # (time, lat, lon, K)
        out[k] = np.ascontiguousarray(np.moveaxis(val, -1, 1)).astype(np.float32)
    return out


def _atomic(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_era5_month(path_dir: str | os.PathLike[str], site: str | Site, year: int, month: int,
                     levels_hpa: list[int] | np.ndarray, box_deg: float, seed: int,
                     layout: Literal["cds", "legacy"] = "cds") -> Path:
    """Write one synthetic ERA-5 month (``era5_<site>_<YYYYMM>.nc``) into ``path_dir``."""
    if layout not in ("cds", "legacy"):
        raise ValueError(f"layout must be 'cds' or 'legacy', not {layout!r}")
    site = resolve_site(site)
    arr = era5_month_arrays(site, year, month, levels_hpa, box_deg, seed)
    path = Path(path_dir) / era5_file_name(site, year, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic(path)
    try:
        with NETCDF4_PYTHON_LOCK:  # netCDF-C / HDF5 are not thread-safe (shared with xarray's readers)
            if layout == "cds":
                _write_cds(tmp, arr)
            else:
                _write_legacy(tmp, arr, year, month)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_cds(path: Path, arr: dict[str, np.ndarray]) -> None:
    lats, lons, levels = arr["latitude"], arr["longitude"], arr["level"]
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("valid_time", arr["time"].size)
        nc.createDimension("pressure_level", levels.size)
        nc.createDimension("latitude", lats.size)
        nc.createDimension("longitude", lons.size)
        num = nc.createVariable("number", "i8")
        num.setncatts({"long_name": "ensemble member numerical id", "units": "1",
                       "standard_name": "realization"})
        num.assignValue(0)
        vt = nc.createVariable("valid_time", "i8", ("valid_time",))
        vt.setncatts({"long_name": "time", "standard_name": "time", "units": "seconds since 1970-01-01",
                      "calendar": "proleptic_gregorian"})
        vt[:] = arr["time"].astype(np.int64)
        pl = nc.createVariable("pressure_level", "f8", ("pressure_level",), fill_value=np.nan)
        pl.setncatts({"long_name": "pressure", "units": "hPa", "positive": "down",
                      "stored_direction": "decreasing", "standard_name": "air_pressure"})
        pl[:] = levels
        for name, values, units in (("latitude", lats, "degrees_north"), ("longitude", lons, "degrees_east")):
            c = nc.createVariable(name, "f8", (name,), fill_value=np.nan)
            c.setncatts({"units": units, "standard_name": name, "long_name": name})
            if name == "latitude":
                c.setncattr("stored_direction", "decreasing")
            c[:] = values
        ev = nc.createVariable("expver", str, ("valid_time",))
        ev[:] = np.array(["0001"] * arr["time"].size, dtype=object)
        dims = ("valid_time", "pressure_level", "latitude", "longitude")
        for short, (pid, long_name, units, cf) in ERA5_PARAMS.items():
            v = nc.createVariable(short, "f4", dims, fill_value=np.float32(np.nan), zlib=True, complevel=1,
                                  chunksizes=(min(24, arr["time"].size), levels.size, lats.size, lons.size))
            v.setncatts({
                "GRIB_paramId": np.int64(pid), "GRIB_dataType": "an",
                "GRIB_numberOfPoints": np.int64(lats.size * lons.size),
                "GRIB_typeOfLevel": "isobaricInhPa", "GRIB_stepUnits": np.int64(1),
                "GRIB_stepType": "instant",
                "GRIB_gridType": "regular_ll", "GRIB_uvRelativeToGrid": np.int64(0), "GRIB_NV": np.int64(0),
                "GRIB_Nx": np.int64(lons.size), "GRIB_Ny": np.int64(lats.size), "GRIB_cfName": cf,
                "GRIB_cfVarName": short,
                "GRIB_gridDefinitionDescription": "Latitude/longitude. Also called equidistant cylindrical, "
                                                  "or Plate Carree",
                "GRIB_iDirectionIncrementInDegrees": GRID_DEG, "GRIB_iScansNegatively": np.int64(0),
                "GRIB_jDirectionIncrementInDegrees": GRID_DEG, "GRIB_jPointsAreConsecutive": np.int64(0),
                "GRIB_jScansPositively": np.int64(0),
                "GRIB_latitudeOfFirstGridPointInDegrees": float(lats[0]),
                "GRIB_latitudeOfLastGridPointInDegrees": float(lats[-1]),
                "GRIB_longitudeOfFirstGridPointInDegrees": float(lons[0]),
                "GRIB_longitudeOfLastGridPointInDegrees": float(lons[-1]),
                "GRIB_missingValue": 3.4028234663852886e38, "GRIB_name": long_name, "GRIB_shortName": short,
                "GRIB_totalNumber": np.int64(0), "GRIB_units": units, "long_name": long_name, "units": units,
                "standard_name": cf,
                "coordinates": "number valid_time pressure_level latitude longitude expver",
            })
            v[:] = arr[short]
        nc.setncatts({
            "GRIB_centre": "ecmf",
            "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
            "GRIB_subCentre": np.int64(0), "Conventions": "CF-1.7",
            "institution": "European Centre for Medium-Range Weather Forecasts",
            "history": ('GRIB to CDM+CF via cfgrib-0.9.14.1/ecCodes-2.36.0 with {"source": "data.grib", '
                        '"filter_by_keys": {"stream": ["oper"]}, '
                        '"encode_cf": ["parameter", "time", "geography", "vertical"]} '
                        "(SYNTHETIC: bzpipe sample data)"),
        })


def pack_int16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """grib_to_netcdf-style packing: (int16 data, scale_factor, add_offset); NaN -> -32767."""
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    add_offset = 0.5 * (vmin + vmax)
    scale = (vmax - vmin) / 65532.0 if vmax > vmin else 1.0
    packed = np.round((values.astype(np.float64) - add_offset) / scale)
    packed = np.where(np.isfinite(values), np.clip(packed, -32766, 32766), -32767)
    return packed.astype(np.int16), scale, add_offset


def _write_legacy(path: Path, arr: dict[str, np.ndarray], year: int, month: int) -> None:
    lats, lons, levels = arr["latitude"], arr["longitude"], arr["level"]
    hours = (arr["time"] - np.datetime64("1900-01-01T00:00:00", "s")).astype(np.int64) // 3600
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
        nc.createDimension("longitude", lons.size)
        nc.createDimension("latitude", lats.size)
        nc.createDimension("level", levels.size)
        nc.createDimension("time", None)
        for name, values, units in (("longitude", lons, "degrees_east"), ("latitude", lats, "degrees_north")):
            c = nc.createVariable(name, "f4", (name,))
            c.setncatts({"units": units, "long_name": name})
            c[:] = values
        lv = nc.createVariable("level", "i4", ("level",))
        lv.setncatts({"units": "millibars", "long_name": "pressure_level"})
        lv[:] = levels.astype(np.int32)
        tv = nc.createVariable("time", "i4", ("time",))
        tv.setncatts({"units": "hours since 1900-01-01 00:00:00.0", "long_name": "time",
                      "calendar": "gregorian"})
        tv[:] = hours.astype(np.int32)
        for short, (_, long_name, units, cf) in ERA5_PARAMS.items():
            packed, scale, offset = pack_int16(arr[short])
            v = nc.createVariable(short, "i2", ("time", "level", "latitude", "longitude"),
                                  fill_value=np.int16(-32767))
            v.set_auto_maskandscale(False)
            v.setncatts({"scale_factor": np.float64(scale), "add_offset": np.float64(offset),
                         "missing_value": np.int16(-32767), "units": units, "long_name": long_name,
                         "standard_name": cf})
            v[:] = packed
        stamp = datetime(year, month, 1, tzinfo=UTC)
        nc.setncatts({
            "Conventions": "CF-1.6",
            "history": (f"{stamp:%Y-%m-%d} 00:00:00 GMT by grib_to_netcdf-2.16.0: /opt/ecmwf/eccodes/bin/"
                        "grib_to_netcdf -S param -o /cache/data/adaptor.mars.internal.nc "
                        "/cache/tmp/data.grib "
                        "(SYNTHETIC: bzpipe sample data)"),
        })
