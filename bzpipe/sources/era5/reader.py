"""Read ERA-5 (and IFS) files into the schema Datasets of :mod:`bzpipe.schema`.

:func:`read_era5` (pressure levels) returns dims ``(time, pressure_level,
latitude, longitude)``: ``time`` datetime64[ns] UTC, ``pressure_level`` hPa
decreasing, ``latitude`` decreasing, ``longitude`` increasing in [-180, 180);
variables ``t`` K, ``q`` kg kg-1, ``u`` / ``v`` m s-1, ``z`` m2 s-2, float32.
attrs ``source_file``, ``layout``, ``ensemble_member``.

Layouts: the current CDS netCDF (``valid_time``, ``pressure_level``,
``number`` / ``expver`` coords), the legacy CDS netCDF (``time`` in hours
since 1900, ``level`` in millibars, int16 packed; an ``expver`` dimension of
mixed ERA5 / ERA5T months is combined, ERA5 first), and GRIB via cfgrib
(``isobaricInhPa``; analysis ``time`` x ``step`` is flattened to valid
times; a scalar time becomes a length-1 dim).  Ensemble files: ``member``
selects one member (default 0, the control); ``member=None`` keeps a leading
``number`` dim.  Names are matched by short name, aliases, then CF
``standard_name``.  ``q`` missing but relative humidity ``r`` present: ``q`` is
derived from ``r``, ``t`` and the level pressure with the IFS saturation formula
(mixed phase between -23 and 0 degC; attr ``derived``); ``z`` may come from
geopotential height ``gh`` (x g).

:func:`read_era5_single_level` reads single-level fields (``t2m`` K);
:func:`read_ifs_column` reads an IFS model-level column (cloudnet ``model`` files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from bzpipe.errors import CorruptFileError, EmptyDataError, InputFileError, MissingVariableError
from bzpipe.schema import G0
from bzpipe.sources.fileio import convert, decode_times, find_name, open_netcdf, sniff_format
from bzpipe.thermo import saturation_vapour_pressure_mixed

PRESSURE_LEVEL_VARIABLES: tuple[str, ...] = ("t", "q", "u", "v", "z")

_SPEC: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[float, float]]]] = {
    "t": (("t", "ta", "temperature", "air_temperature", "T"), ("air_temperature",),
          {"k": (1.0, 0.0), "kelvin": (1.0, 0.0), "degc": (1.0, 273.15), "c": (1.0, 273.15)}),
    "q": (("q", "hus", "specific_humidity", "Q"), ("specific_humidity",),
          {"kg kg-1": (1.0, 0.0), "kg/kg": (1.0, 0.0), "1": (1.0, 0.0), "kg kg1": (1.0, 0.0),
           "g kg-1": (1e-3, 0.0), "g/kg": (1e-3, 0.0)}),
    "u": (("u", "ua", "uwind", "U"), ("eastward_wind",),
          {"m s-1": (1.0, 0.0), "m/s": (1.0, 0.0), "ms-1": (1.0, 0.0), "knots": (0.514444, 0.0)}),
    "v": (("v", "va", "vwind", "V"), ("northward_wind",),
          {"m s-1": (1.0, 0.0), "m/s": (1.0, 0.0), "ms-1": (1.0, 0.0), "knots": (0.514444, 0.0)}),
    "z": (("z", "geopotential", "Z", "phi"), ("geopotential",),
          {"m2 s-2": (1.0, 0.0), "m2/s2": (1.0, 0.0), "m2s-2": (1.0, 0.0), "j kg-1": (1.0, 0.0)}),
}
_UNITS_OUT = {"t": "K", "q": "kg kg-1", "u": "m s-1", "v": "m s-1", "z": "m2 s-2"}
_LONG = {"t": "temperature", "q": "specific humidity", "u": "eastward wind", "v": "northward wind",
         "z": "geopotential"}
_GH = (("gh", "geopotential_height", "zg"), ("geopotential_height",),
       {"gpm": (G0, 0.0), "m": (G0, 0.0)})
_RH = (("r", "rh", "relative_humidity"), ("relative_humidity",), {"%": (0.01, 0.0), "percent": (0.01, 0.0),
                                                                  "1": (1.0, 0.0)})
_LEVEL_NAMES = ("pressure_level", "level", "isobaricInhPa", "plev", "lev", "pressure")
_LEVEL_UNITS = {"hpa": (1.0, 0.0), "millibars": (1.0, 0.0), "mbar": (1.0, 0.0), "mb": (1.0, 0.0),
                "pa": (0.01, 0.0)}
_TIME_NAMES = ("valid_time", "time")


# ------------------------------------------------------------------ opening


def _open_grib(path: Path) -> xr.Dataset:
    import cfgrib  # noqa: F401  (registers the engine; pyproj is loaded first by bzpipe.sources)

    kw = {"indexpath": "", "errors": "raise"}
    try:
        try:
            ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs=kw, decode_timedelta=True)
        except Exception as e:  # several hypercubes: keep the pressure levels
            if "multiple values" not in str(e) and "DatasetBuildError" not in type(e).__name__:
                raise
            ds = xr.open_dataset(path, engine="cfgrib", decode_timedelta=True,
                                 backend_kwargs={**kw, "filter_by_keys": {"typeOfLevel": "isobaricInhPa"}})
        with ds:
            ds = ds.load()
    except (FileNotFoundError, InputFileError):
        raise
    except Exception as e:  # eccodes / cfgrib raise many unrelated types for damaged files
        raise CorruptFileError(path, f"cannot read GRIB ({type(e).__name__}: {e})") from e
    # cfgrib fills the fields of missing messages with NaN: a hole in the hypercube means lost messages
    for name, da in ds.data_vars.items():
        spatial = [d for d in da.dims if d in ("latitude", "longitude", "values")]
        if spatial and da.isnull().all(dim=spatial).any():
            raise CorruptFileError(path, f"GRIB messages missing: some {name} fields are absent "
                                         "(truncated file?)")
    return ds


def open_any(path: str | Path) -> tuple[xr.Dataset, str]:
    """(Dataset with numeric times, kind) for netCDF-3/4 or GRIB."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    kind = sniff_format(p)
    if kind == "grib":
        return _open_grib(p), "grib"
    return open_netcdf(p), kind


def _times(ds: xr.Dataset, name: str, path: Path) -> np.ndarray:
    v = ds[name]
    if v.dtype.kind == "M":
        return v.values.astype("datetime64[ns]")
    return decode_times(v.values, str(v.attrs.get("units", "")), path, name)


def _standardize_time(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """One ``time`` dim with datetime64 values (valid time)."""
    if "step" in ds.dims and "time" in ds.dims and "valid_time" in ds.coords:  # forecasts: flatten
        vt = ds["valid_time"].values
        ds = ds.drop_vars("valid_time").stack(_vt=("time", "step"))
        flat = np.asarray(vt).reshape(-1)
        ds = ds.drop_vars(["_vt", "time", "step"], errors="ignore").rename(_vt="time")
        ds = ds.assign_coords(time=("time", flat.astype("datetime64[ns]")))
    tname = next((n for n in _TIME_NAMES if n in ds.dims), None)
    if tname is None:
        tname = next((n for n in _TIME_NAMES if n in ds.variables and ds[n].ndim == 0), None)
        if tname is None:
            raise MissingVariableError(path, f"no time coordinate; looked for {', '.join(_TIME_NAMES)}")
        ds = ds.expand_dims(tname)
    values = _times(ds, tname, path)
    drop = [n for n in _TIME_NAMES if n != tname and n in ds.variables and ds[n].ndim <= 1]
    ds = ds.drop_vars(drop + ["step"], errors="ignore")
    ds = ds.assign_coords({tname: (tname, values)})
    return ds.rename({tname: "time"}) if tname != "time" else ds


def _combine_expver(ds: xr.Dataset) -> xr.Dataset:
    if "expver" in ds.dims:  # legacy mixed ERA5 (1) / ERA5T (5) months
        parts = [ds.isel(expver=i, drop=True) for i in range(ds.sizes["expver"])]
        out = parts[0]
        for p in parts[1:]:
            out = out.combine_first(p)
        return out
    return ds.drop_vars("expver", errors="ignore")


def _select_member(ds: xr.Dataset, member: int | None) -> tuple[xr.Dataset, str]:
    if "number" in ds.dims:
        if member is None:
            return ds, "all (number dim kept)"
        if member not in ds["number"].values:
            raise InputFileError(ds.attrs.get("_path", "?"), f"ensemble member {member} not in the file "
                                                             f"(members {ds['number'].values.tolist()})")
        return ds.sel(number=member, drop=True), str(member)
    if "number" in ds.variables:
        m = int(np.asarray(ds["number"].values).ravel()[0])
        return ds.drop_vars("number"), str(m)
    return ds, "n/a"


def _horizontal(ds: xr.Dataset, path: Path) -> xr.Dataset:
    lat = find_name(ds, ("latitude", "lat"), path, "latitude")
    lon = find_name(ds, ("longitude", "lon"), path, "longitude")
    ds = ds.rename({k: v for k, v in ((lat, "latitude"), (lon, "longitude")) if k != v})
    lons = ((ds["longitude"].values.astype(np.float64) + 180.0) % 360.0) - 180.0
    ds = ds.assign_coords(latitude=ds["latitude"].values.astype(np.float64), longitude=lons)
    return ds.sortby("longitude").sortby("latitude", ascending=False)


def _get(ds: xr.Dataset, spec: tuple, path: Path, what: str, required: bool = True
         ) -> tuple[str | None, xr.DataArray | None]:
    """(name in file, values converted to the output units as a DataArray with the file's dims)."""
    names, std, table = spec
    n = find_name(ds, names, path, what, standard_names=std, required=required)
    if n is None:
        return None, None
    values = convert(ds[n].values, ds[n].attrs.get("units"), table, path, n, default=next(iter(table)))
    return n, xr.DataArray(values, dims=ds[n].dims, coords={d: ds[d] for d in ds[n].dims if d in ds.coords})


# --------------------------------------------------------------- pressure levels


def read_era5(path: str | Path, variables: Sequence[str] = PRESSURE_LEVEL_VARIABLES,
              member: int | None = 0) -> xr.Dataset:
    """Read ERA-5 pressure-level fields (see the module docstring).

    ``variables``: which of ``t q u v z`` are required (all by default); a
    missing one raises MissingVariableError naming it and the names looked
    for.  A variable that is entirely missing/fill raises EmptyDataError.
    """
    path = Path(path)
    unknown = set(variables) - set(_SPEC)
    if unknown:
        raise ValueError(f"unknown ERA-5 variables {sorted(unknown)}; known: {sorted(_SPEC)}")
    raw, kind = open_any(path)
    raw.attrs["_path"] = str(path)
    ds = _standardize_time(_combine_expver(raw), path)
    ds, member_used = _select_member(ds, member)
    lname = find_name(ds, _LEVEL_NAMES, path, "pressure level")
    assert lname is not None
    levels = convert(ds[lname].values, ds[lname].attrs.get("units"), _LEVEL_UNITS, path, lname, default="hpa")
    ds = ds.rename({lname: "pressure_level"}) if lname != "pressure_level" else ds
    ds = ds.assign_coords(pressure_level=levels)
    ds = _horizontal(ds, path)
    dims = (("number",) if "number" in ds.dims else ()) + ("time", "pressure_level", "latitude", "longitude")

    out_vars: dict[str, tuple] = {}
    derived: dict[str, str] = {}
    missing = []
    for v in variables:
        n, values = _get(ds, _SPEC[v], path, v, required=False)
        if n is None and v == "z":
            n, values = _get(ds, _GH, path, "gh", required=False)
            if n is not None:
                derived["z"] = f"g * {n}"
        if n is None and v == "q":
            n, values = _q_from_rh(ds, path)
            if n is not None:
                derived["q"] = f"from {n}, t and pressure (IFS saturation, mixed phase)"
        if n is None:
            names, std, _ = _SPEC[v]
            missing.append(f"{v} (looked for {', '.join(names)}, standard_name {', '.join(std)})")
            continue
        assert values is not None
        da = values.transpose(*[d for d in dims if d in values.dims])
        if da.dims != dims:
            raise InputFileError(path, f"{n} has dims {da.dims}, expected {dims}")
        arr = da.values.astype(np.float32)
        if not np.isfinite(arr).any():
            raise EmptyDataError(path, f"{n}: every value is missing/fill")
        attrs = {"units": _UNITS_OUT[v], "long_name": _LONG[v], "source_variable": n}
        if v in derived:
            attrs["derived"] = derived[v]
        out_vars[v] = (dims, arr, attrs)
    if missing:
        raise MissingVariableError(path, "missing " + "; ".join(missing))

    coords = {"time": ds["time"].values, "pressure_level": ("pressure_level", ds["pressure_level"].values,
                                                            {"units": "hPa", "long_name": "pressure"}),
              "latitude": ("latitude", ds["latitude"].values, {"units": "degrees_north"}),
              "longitude": ("longitude", ds["longitude"].values, {"units": "degrees_east"})}
    if "number" in ds.dims:
        coords["number"] = ds["number"].values
    out = xr.Dataset(out_vars, coords=coords, attrs={"source_file": path.name, "layout": _layout(raw, kind),
                                                     "ensemble_member": member_used})
    out = out.sortby("pressure_level", ascending=False).sortby("time")
    _, first = np.unique(out["time"].values, return_index=True)
    return out.isel(time=np.sort(first))


def _layout(raw: xr.Dataset, kind: str) -> str:
    if kind == "grib":
        return "grib"
    if "valid_time" in raw.variables or "pressure_level" in raw.variables:
        return "cds-netcdf"
    return "legacy-netcdf"


def _q_from_rh(ds: xr.Dataset, path: Path) -> tuple[str | None, np.ndarray | None]:
    n, rh = _get(ds, _RH, path, "r", required=False)
    if n is None:
        return None, None
    tn, t = _get(ds, _SPEC["t"], path, "t", required=False)
    if tn is None or rh is None or t is None:
        return None, None
    p = ds["pressure_level"]
    e = rh * xr.apply_ufunc(saturation_vapour_pressure_mixed, t)
    return n, (0.622 * e / (p - 0.378 * e)).clip(min=0.0)


# ------------------------------------------------------------------ single level


_SINGLE = {"t2m": (("t2m", "2t", "VAR_2T", "tas", "t2"), (), {"k": (1.0, 0.0), "degc": (1.0, 273.15)}),
           "sp": (("sp", "surface_pressure", "ps"), ("surface_air_pressure",),
                  {"pa": (1.0, 0.0), "hpa": (100.0, 0.0)})}


def read_era5_single_level(path: str | Path, variables: Sequence[str] = ("t2m",), member: int | None = 0
                           ) -> xr.Dataset:
    """Read ERA-5 single-level fields: dims ``(time, latitude, longitude)``; ``t2m`` (2 m
    temperature) K, ``sp`` (surface pressure) Pa.  Same conventions as :func:`read_era5`."""
    path = Path(path)
    raw, kind = open_any(path)
    ds = _standardize_time(_combine_expver(raw), path)
    ds, member_used = _select_member(ds, member)
    ds = _horizontal(ds, path)
    out_vars = {}
    for v in variables:
        if v not in _SINGLE:
            raise ValueError(f"unknown single-level variable {v!r}; known: {sorted(_SINGLE)}")
        n, values = _get(ds, _SINGLE[v], path, v)
        assert n is not None and values is not None
        assert values is not None
        da = values.squeeze(drop=True)
        dims = (("number",) if "number" in da.dims else ()) + ("time", "latitude", "longitude")
        if "time" not in da.dims:
            da = da.expand_dims("time")
        arr = da.transpose(*dims).values.astype(np.float32)
        if not np.isfinite(arr).any():
            raise EmptyDataError(path, f"{n}: every value is missing/fill")
        out_vars[v] = (dims, arr, {"units": "K" if v == "t2m" else "Pa", "source_variable": n})
    coords = {"time": ds["time"].values, "latitude": ds["latitude"].values,
              "longitude": ds["longitude"].values}
    if "number" in ds.dims:
        coords["number"] = ds["number"].values
    return xr.Dataset(out_vars, coords=coords, attrs={"source_file": path.name, "layout": _layout(raw, kind),
                                                      "ensemble_member": member_used})


# ------------------------------------------------------------------ IFS column


_IFS = {"t": (("temperature", "t", "T"), ("air_temperature",), _SPEC["t"][2]),
        "q": (("q", "specific_humidity"), ("specific_humidity",), _SPEC["q"][2]),
        "u": (("uwind", "u"), ("eastward_wind",), _SPEC["u"][2]),
        "v": (("vwind", "v"), ("northward_wind",), _SPEC["v"][2]),
        "height": (("height",), ("height",), {"m": (1.0, 0.0), "km": (1000.0, 0.0)}),
        "pressure": (("pressure",), ("air_pressure",), {"pa": (0.01, 0.0), "hpa": (1.0, 0.0)})}


def _first(ds: xr.Dataset, name: str) -> float:
    return float(np.ravel(ds[name].values)[0]) if name in ds.variables else float("nan")


def read_ifs_column(path: str | Path) -> xr.Dataset:
    """Read an IFS single-column model-level file (cloudnet ``model`` layout).

    Returns dims ``(time, level)`` (``level`` = model level number, ordered from
    the surface up) with ``height`` m above ground, ``pressure`` hPa, ``t`` K,
    ``q`` kg kg-1, ``u`` / ``v`` m s-1; attrs ``latitude``, ``longitude``,
    ``location``, ``source_file``.
    """
    path = Path(path)
    ds, _ = open_any(path)
    tname = find_name(ds, ("time",), path, "time")
    assert tname is not None
    times = _times(ds, tname, path)
    lname = find_name(ds, ("level", "model_level", "lev"), path, "model level")
    assert lname is not None
    out_vars = {}
    for v, spec in _IFS.items():
        n, values = _get(ds, spec, path, v)
        assert n is not None and values is not None
        assert values is not None
        da = values.drop_vars(list(values.coords)).rename({lname: "level", tname: "time"})
        if set(da.dims) != {"time", "level"}:
            raise InputFileError(path, f"{n} has dims {ds[n].dims}, expected ({tname}, {lname})")
        arr = da.transpose("time", "level").values.astype(np.float32)
        if not np.isfinite(arr).any():
            raise EmptyDataError(path, f"{n}: every value is missing/fill")
        units = {"height": "m", "pressure": "hPa"}.get(v, _UNITS_OUT.get(v, ""))
        out_vars[v] = (("time", "level"), arr, {"units": units, "source_variable": n})
    out = xr.Dataset(out_vars, coords={"time": times, "level": ds[lname].values.astype(np.int32)},
                     attrs={"source_file": path.name, "location": str(ds.attrs.get("location", "")),
                            "latitude": _first(ds, "latitude"), "longitude": _first(ds, "longitude")})
    out["height"].attrs["long_name"] = "height above ground"
    return out.sortby("level", ascending=False)
