"""Read ARM vertically pointing cloud-radar files (KaZR, MMCR) and surface-met files.

:func:`read_kazr` returns the radar curtain of :mod:`bzpipe.schema`: dims
``(time, height)``, ``reflectivity`` float32 dBZ (NaN = no echo, missing or
QC-bad), ``height`` m AGL increasing, ``time`` datetime64[ns] UTC, attrs
``site``, ``datastream``, ``source_file``, ``latitude``, ``longitude``,
``altitude`` (plus ``reflectivity_source``, ``qc_applied``, ``echo_mask``,
``height_source``).  An extra ``profile_valid`` (bool, time) is False for
profiles the file's QC marks as not measured (radar outage): their NaNs mean
"no data", not "clear sky".

Layouts it understands:

* ARSCL ``c0`` (``reflectivity_best_estimate`` on ``height``) and the synthetic
  files of :mod:`bzpipe.sources.synthetic` (same layout);
* KaZR ``a1`` moments (``reflectivity_copol`` or ``reflectivity`` on
  ``range``: vertically pointing, so range = height above the antenna);
* MMCR ``b1`` (``Reflectivity`` on ``range``, interleaved operating modes with
  per-mode ``heights`` in m MSL): one mode is kept (default ``GE``, the
  general mode, which spans the whole troposphere; ``BL`` boundary layer,
  ``CI`` cirrus, ``PR`` precipitation are the others) and recorded in attrs.

Moment files without a detection mask (a1, MMCR) carry noise in every gate;
gates whose signal-to-noise ratio is below ``snr_threshold_db`` (default
-12 dB, some 10 dB above the 1-min noise floor) are set to NaN when an SNR
variable is present.  Units: dBZ as is, linear ``mm6 m-3`` -> dBZ; heights
in km -> m, MSL -> AGL (minus ``alt``).  QC: ARM bit-packed ``qc_<var>`` with
``flag_masks`` + ``flag_assessments`` (only "Bad" bits remove data; without
assessments every set bit counts as bad), ``flag_values`` states, or
``bit_N_assessment`` attributes; ``missing_value`` / ``_FillValue`` -> NaN.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from bzpipe.errors import EmptyDataError, InputFileError, MissingVariableError, UnitsError
from bzpipe.sources.fileio import convert, decode_times, find_name, normalize_units, open_netcdf

REFLECTIVITY_NAMES = ("reflectivity_best_estimate", "reflectivity", "Reflectivity", "reflectivity_copol",
                      "reflectivity_co", "ze", "Ze", "ZE", "DBZ", "dbz", "radar_reflectivity")
SNR_NAMES = ("signal_to_noise_ratio_copol", "signal_to_noise_ratio", "SignalToNoiseRatio", "snr_copol", "snr",
             "SNR")
HEIGHT_NAMES = ("height", "heights", "range", "Height", "altitude_agl", "range_bins")
TEMPERATURE_NAMES = ("temp_mean", "temp", "tdry", "air_temperature", "temperature", "T", "atmos_temp")
DEFAULT_SNR_THRESHOLD_DB = -12.0
MMCR_MODES = {"BL": "boundary layer", "CI": "cirrus", "GE": "general", "PR": "precipitation"}

_DBZ_UNITS = {"dbz": (1.0, 0.0), "dbze": (1.0, 0.0), "dbz_e": (1.0, 0.0), "db": (1.0, 0.0)}
_LINEAR_Z_UNITS = {"mm6 m-3", "mm6/m3", "mm6m-3", "mm6 /m3", "mm^6 m^-3", "mm6 m-3 ", "z"}
_HEIGHT_UNITS = {"m": (1.0, 0.0), "meter": (1.0, 0.0), "meters": (1.0, 0.0), "metre": (1.0, 0.0),
                 "metres": (1.0, 0.0), "km": (1000.0, 0.0), "kilometers": (1000.0, 0.0)}
_TEMP_UNITS = {"degc": (1.0, 0.0), "c": (1.0, 0.0), "deg c": (1.0, 0.0), "celsius": (1.0, 0.0),
               "°c": (1.0, 0.0), "degree_celsius": (1.0, 0.0), "degrees_celsius": (1.0, 0.0),
               "k": (1.0, -273.15), "kelvin": (1.0, -273.15), "degf": (5.0 / 9.0, -32.0 * 5.0 / 9.0),
               "f": (5.0 / 9.0, -32.0 * 5.0 / 9.0)}
_PRESSURE_UNITS = {"kpa": (10.0, 0.0), "hpa": (1.0, 0.0), "mb": (1.0, 0.0), "mbar": (1.0, 0.0),
                   "millibars": (1.0, 0.0), "pa": (0.01, 0.0)}


# ----------------------------------------------------------------------- QC


def _attr_list(value: object) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return list(np.atleast_1d(value))


def qc_bits(qc: xr.DataArray) -> tuple[int, int] | None:
    """(bits that mean Bad, Bad bits that are *not* "missing value") of an ARM bit-packed QC
    variable; None when it uses ``flag_values`` states instead of bits."""
    a = qc.attrs
    masks = [int(m) for m in _attr_list(a.get("flag_masks"))]
    meanings = _attr_list(a.get("flag_meanings"))
    assessments = [s.lower() for s in _attr_list(a.get("flag_assessments"))]
    if not masks:
        # older ARM style: bit_1_description / bit_1_assessment
        nums = sorted(int(m.group(1)) for k in a if (m := re.match(r"bit_(\d+)_description$", k)))
        masks = [1 << (n - 1) for n in nums]
        meanings = [str(a.get(f"bit_{n}_description", "")) for n in nums]
        assessments = [str(a.get(f"bit_{n}_assessment", "")).lower() for n in nums]
        if not masks:
            return None if "flag_values" in a else (~0, ~0)
    if len(assessments) != len(masks):
        assessments = ["bad"] * len(masks)
    if len(meanings) != len(masks):
        meanings = [""] * len(masks)
    bad = 0
    outage = 0
    for m, meaning, ass in zip(masks, meanings, assessments, strict=True):
        if ass == "bad":
            bad |= m
            if "missing" not in meaning.lower():
                outage |= m
    return bad, outage


def qc_masks(qc: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """(bad, not-measured) boolean arrays from an ARM QC variable (see :func:`qc_bits`)."""
    vals = np.asarray(qc.values)
    if vals.dtype.kind == "f":
        vals = np.where(np.isfinite(vals), vals, 0)
    vals = vals.astype(np.int64)
    bits = qc_bits(qc)
    if bits is None:  # flag_values states
        states = [int(v) for v in _attr_list(qc.attrs.get("flag_values"))]
        ass = [s.lower() for s in _attr_list(qc.attrs.get("flag_assessments"))]
        bad_states = [s for s, x in zip(states, ass, strict=False) if x == "bad"] if len(ass) == len(states) \
            else [s for s in states if s != 0]
        bad = np.isin(vals, bad_states)
        return bad, np.zeros_like(bad)
    bad_bits, outage_bits = bits
    return (vals & bad_bits) != 0, (vals & outage_bits) != 0


# -------------------------------------------------------------------- time


def arm_times(ds: xr.Dataset, path: str | Path, dim: str = "time") -> np.ndarray:
    """datetime64[ns] of the ``time`` dimension: the ``time`` variable's units, else
    ``base_time`` + ``time_offset``."""
    tv = ds.variables.get("time")
    if tv is not None and "since" in str(tv.attrs.get("units", "")) and tv.dims == (dim,):
        return decode_times(ds["time"].values, ds["time"].attrs["units"], path, "time")
    if "base_time" in ds.variables and "time_offset" in ds.variables:
        bt = ds["base_time"]
        base = decode_times(np.ravel(bt.values)[:1], bt.attrs.get("units", "seconds since 1970-01-01"), path,
                            "base_time")[0]
        off = np.asarray(ds["time_offset"].values, dtype=np.float64)
        if off.ndim > 1:
            off = off[(slice(None),) + (0,) * (off.ndim - 1)]
        return base + np.round(off * 1e9).astype(np.int64).astype("timedelta64[ns]")
    raise MissingVariableError(path, "no time: looked for time (with 'since' units) "
                                     "and base_time + time_offset")


# ----------------------------------------------------------------- helpers


def _scalar(ds: xr.Dataset, names: Iterable[str]) -> float:
    for n in names:
        if n in ds.variables:
            v = np.asarray(ds[n].values, dtype=np.float64).ravel()
            v = v[np.isfinite(v) & (np.abs(v) < 1e6)]
            if v.size:
                return float(v[0])
    return float("nan")


def _site_and_stream(ds: xr.Dataset, path: Path) -> tuple[str, str]:
    a = ds.attrs
    stream = str(a.get("datastream") or a.get("_datastream") or a.get("zeb_platform") or "")
    if not stream:
        m = re.match(r"^([a-z]{3}[A-Za-z0-9]+[A-Z]\d+\.[a-z]\d)\.", path.name)
        stream = m.group(1) if m else path.name.split(".")[0]
    site = str(ds.attrs.get("site_id") or stream[:3]).lower()
    return site, stream


def _to_dbz(values: np.ndarray, units: object, path: Path, name: str) -> tuple[np.ndarray, str]:
    u = normalize_units(units)
    if u in _DBZ_UNITS:
        return values.astype(np.float64), "dBZ"
    if u.replace(" ", "") in {x.replace(" ", "") for x in _LINEAR_Z_UNITS}:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, 10.0 * np.log10(values), np.nan), f"10 log10 of linear {units}"
    raise UnitsError(path, f"{name}: unexpected reflectivity units {units!r} (expected dBZ or mm6 m-3)")


def _mmcr_mode(ds: xr.Dataset, path: Path, mode: str | int) -> tuple[int, str]:
    raw = np.asarray(ds["ModeDescription"].values)
    if raw.ndim == 1:  # already decoded to one string per mode
        desc = [(r.decode() if isinstance(r, bytes) else str(r)).strip("\x00 ") for r in raw]
    elif raw.dtype.kind in "SU":
        desc = ["".join(c.decode() if isinstance(c, bytes) else str(c) for c in row).strip("\x00 ")
                for row in raw]
    else:  # character codes
        desc = [bytes(np.nan_to_num(row, nan=0).astype(np.uint8)).decode("ascii", "replace").strip("\x00 ")
                for row in raw]
    if isinstance(mode, int):
        return mode, desc[mode] if mode < len(desc) else str(mode)
    for i, d in enumerate(desc):
        if d.upper().endswith("_" + mode.upper()):
            return i, d
    raise InputFileError(path, f"MMCR mode {mode!r} not in the file (modes: {[d for d in desc if d]})")


# -------------------------------------------------------------------- KaZR


def read_kazr(path: str | Path, *, snr_threshold_db: float | None = DEFAULT_SNR_THRESHOLD_DB,
              mmcr_mode: str | int = "GE", apply_qc: bool = True) -> xr.Dataset:
    """Read one ARM cloud-radar file into the schema curtain (see the module docstring).

    Raises CorruptFileError, MissingVariableError, UnitsError or EmptyDataError
    (no usable gate: every value missing, or every profile flagged as not measured).
    """
    path = Path(path)
    ds = open_netcdf(path)
    rname = find_name(ds, REFLECTIVITY_NAMES, path, "reflectivity",
                      standard_names=("equivalent_reflectivity_factor",))
    assert rname is not None
    refl = ds[rname]
    if refl.ndim != 2:
        raise InputFileError(path, f"{rname} has dims {refl.dims}, expected (time, height/range)")
    tdim = "time" if "time" in refl.dims else refl.dims[0]
    hdim = next(d for d in refl.dims if d != tdim)
    times = arm_times(ds, path, tdim)
    alt = _scalar(ds, ("alt", "altitude", "Altitude"))
    attrs: dict[str, object] = {}
    rows = np.arange(refl.sizes[tdim])

    if "ModeNum" in ds.variables and "heights" in ds.variables:  # MMCR: interleaved modes
        idx, desc = _mmcr_mode(ds, path, mmcr_mode)
        rows = np.nonzero(np.asarray(ds["ModeNum"].values) == idx)[0]
        if rows.size == 0:
            raise EmptyDataError(path, f"no records of MMCR mode {desc!r}")
        hvar = ds["heights"].isel({ds["heights"].dims[0]: idx})
        hunits = str(hvar.attrs.get("units", "m"))
        hunits = re.sub(r"(?i)\s*msl\s*", "", hunits)
        heights = convert(hvar.values, hunits, _HEIGHT_UNITS, path, "heights")
        heights = heights - (alt if np.isfinite(alt) else 0.0)
        attrs.update(radar_mode=desc, radar_mode_name=MMCR_MODES.get(str(mmcr_mode).upper(), str(mmcr_mode)),
                     height_source="heights (m MSL) of the selected mode minus alt")
    else:
        hname = hdim if hdim in ds.variables else find_name(ds, HEIGHT_NAMES, path, "height/range")
        assert hname is not None
        hvar = ds[hname]
        hunits = str(hvar.attrs.get("units", ""))
        msl = "msl" in hunits.lower() or "mean sea level" in str(hvar.attrs.get("long_name", "")).lower()
        clean = re.sub(r"(?i)\s*(a?msl|agl|above ground level)\s*", "", hunits)
        heights = convert(hvar.values, clean, _HEIGHT_UNITS, path, hname, default="m")
        if msl:
            heights = heights - (alt if np.isfinite(alt) else 0.0)
        if msl:
            attrs["height_source"] = f"{hname} (m MSL) minus alt"
        elif "range" in hname.lower():
            attrs["height_source"] = f"{hname} (range of a vertically pointing radar)"
        else:
            attrs["height_source"] = hname

    values = np.asarray(refl.transpose(tdim, hdim).values, dtype=np.float64)[rows]
    values, how = _to_dbz(values, refl.attrs.get("units", "dBZ"), path, rname)
    times = times[rows]
    raw_missing = ~np.isfinite(values)
    profile_valid = np.ones(rows.size, dtype=bool)

    qc_name = f"qc_{rname}"
    attrs["qc_applied"] = "none"
    if apply_qc and qc_name in ds.variables:
        bad, not_measured = qc_masks(ds[qc_name].transpose(tdim, hdim))
        bad, not_measured = bad[rows], not_measured[rows]
        values = np.where(bad, np.nan, values)
        profile_valid = ~np.all(not_measured, axis=1)
        attrs["qc_applied"] = f"{qc_name}: Bad bits removed"
    attrs["echo_mask"] = "as in file"
    sname = find_name(ds, SNR_NAMES, path, "SNR", required=False)
    if snr_threshold_db is not None and sname is not None and ds[sname].dims == refl.dims:
        snr = np.asarray(ds[sname].transpose(tdim, hdim).values, dtype=np.float64)[rows]
        values = np.where(np.isfinite(snr) & (snr >= snr_threshold_db), values, np.nan)
        attrs["echo_mask"] = f"{sname} >= {snr_threshold_db:g} dB"

    good_h = np.isfinite(heights)
    heights, values = heights[good_h], values[:, good_h]
    order = np.argsort(heights)
    heights, values = heights[order], values[:, order]
    tok = ~np.isnat(times)
    times, values, profile_valid = times[tok], values[tok], profile_valid[tok]
    torder = np.argsort(times, kind="stable")
    times, values, profile_valid = times[torder], values[torder], profile_valid[torder]
    keep = np.concatenate([[True], np.diff(times) > np.timedelta64(0, "ns")])[:times.size]
    times, values, profile_valid = times[keep], values[keep], profile_valid[keep]

    if times.size == 0 or heights.size == 0:
        raise EmptyDataError(path, f"{rname}: no valid times or heights")
    if raw_missing.all() and qc_name not in ds.variables:
        raise EmptyDataError(path, f"{rname}: every value is missing/fill")
    if not profile_valid.any():
        raise EmptyDataError(path, f"{rname}: QC flags every profile as not measured")

    site, stream = _site_and_stream(ds, path)
    out = xr.Dataset(
        {"reflectivity": (("time", "height"), values.astype(np.float32),
                          {"units": "dBZ", "long_name": "equivalent radar reflectivity factor",
                           "source_variable": rname, "conversion": how}),
         "profile_valid": (("time",), profile_valid,
                           {"long_name": "False where QC says the radar did not measure (outage)"})},
        coords={"time": ("time", times, {"long_name": "time (UTC)"}),
                "height": ("height", heights.astype(np.float64),
                           {"units": "m", "long_name": "height above ground level"})},
        attrs={"site": site, "datastream": stream, "source_file": path.name,
               "latitude": _scalar(ds, ("lat",)), "longitude": _scalar(ds, ("lon",)), "altitude": alt,
               "reflectivity_source": rname, **attrs},
    )
    return out


def open_kazr_many(paths: Sequence[str | Path], **kwargs: object) -> xr.Dataset:
    """Read several radar files (e.g. consecutive days) and concatenate them in time order.

    Every file must share the first file's height grid (InputFileError
    otherwise); repeated times keep the first occurrence.
    """
    if not paths:
        raise ValueError("open_kazr_many needs at least one path")
    parts = [read_kazr(p, **kwargs) for p in paths]  # type: ignore[arg-type]
    ref = parts[0].height.values
    for p, ds in zip(paths, parts, strict=True):
        h = ds.height.values
        if h.shape != ref.shape or not np.allclose(h, ref, atol=0.5):
            raise InputFileError(p, f"height grid ({h.size} gates from {h[0]:.1f} m) differs from "
                                    f"{Path(paths[0]).name} ({ref.size} gates from {ref[0]:.1f} m)")
    parts = [ds.assign_coords(height=ref) for ds in parts]
    parts.sort(key=lambda d: d.time.values[0])
    out = xr.concat(parts, dim="time", combine_attrs="drop_conflicts")
    _, first = np.unique(out.time.values, return_index=True)
    out = out.isel(time=np.sort(first))
    keys = ("site", "datastream", "latitude", "longitude", "altitude")
    out.attrs.update({k: parts[0].attrs[k] for k in keys if k in parts[0].attrs})
    out.attrs["source_file"] = ";".join(d.attrs["source_file"] for d in parts)
    return out


# --------------------------------------------------------------------- met


_MET_OPTIONAL = {
    "relative_humidity": (("rh_mean", "rh", "relative_humidity"), {"%": (1.0, 0.0), "percent": (1.0, 0.0),
                                                                   "1": (100.0, 0.0)}, "%"),
    "pressure": (("atmos_pressure", "pres", "pressure", "air_pressure"), _PRESSURE_UNITS, "hPa"),
    "wind_speed": (("wspd_vect_mean", "wspd_arith_mean", "wspd", "wind_speed"),
                   {"m/s": (1.0, 0.0), "m s-1": (1.0, 0.0), "knots": (0.514444, 0.0)}, "m s-1"),
    "wind_direction": (("wdir_vect_mean", "wdir", "wind_direction"),
                       {"degree": (1.0, 0.0), "degrees": (1.0, 0.0), "deg": (1.0, 0.0)}, "degree"),
}


def _met_variable(ds: xr.Dataset, name: str, path: Path, table: dict[str, tuple[float, float]]) -> np.ndarray:
    values = np.asarray(ds[name].values, dtype=np.float64)
    values = convert(values, ds[name].attrs.get("units"), table, path, name)
    qc = f"qc_{name}"
    if qc in ds.variables:
        bad, _ = qc_masks(ds[qc])
        values = np.where(bad, np.nan, values)
    return values


def read_met(path: str | Path) -> xr.Dataset:
    """Read an ARM surface-met file: ``temperature`` (degC) on ``time`` after QC, plus
    ``relative_humidity`` (%), ``pressure`` (hPa), ``wind_speed`` (m s-1), ``wind_direction``
    (degree) when present.  attrs as for :func:`read_kazr`."""
    path = Path(path)
    ds = open_netcdf(path)
    tname = find_name(ds, TEMPERATURE_NAMES, path, "temperature", standard_names=("air_temperature",))
    assert tname is not None
    times = arm_times(ds, path)
    data = {"temperature": (("time",), _met_variable(ds, tname, path, _TEMP_UNITS),
                            {"units": "degC", "long_name": "air temperature", "source_variable": tname})}
    if np.all(np.isnan(data["temperature"][1])):
        raise EmptyDataError(path, f"{tname}: every value is missing or QC-bad")
    for out_name, (names, table, units) in _MET_OPTIONAL.items():
        n = find_name(ds, names, path, out_name, required=False)
        if n is not None and ds[n].dims == ds[tname].dims:
            data[out_name] = (("time",), _met_variable(ds, n, path, table),
                              {"units": units, "source_variable": n})
    site, stream = _site_and_stream(ds, path)
    out = xr.Dataset(data, coords={"time": times},
                     attrs={"site": site, "datastream": stream, "source_file": path.name,
                            "latitude": _scalar(ds, ("lat",)), "longitude": _scalar(ds, ("lon",)),
                            "altitude": _scalar(ds, ("alt",))})
    out = out.sortby("time")
    return out
