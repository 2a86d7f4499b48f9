"""Synthetic ARM files: KaZR ARSCL (``c0``) day files and surface ``met`` (``b1``) day files.

Both are written in the ARM netCDF layout (``base_time`` / ``time_offset`` /
``time``, ``lat`` / ``lon`` / ``alt``, ``qc_<var>`` bit-packed quality
variables with ``flag_masks`` / ``flag_meanings`` / ``flag_assessments``,
ARM global attributes) so that :mod:`bzpipe.sources.arm.reader` reads real
and synthetic files alike.  Every value is a deterministic function of
``(seed, site, absolute time)``; files are byte-for-byte reproducible.

KaZR instrument model on top of the true curtain (:mod:`.scene`): gaussian
speckle (0.7 dB), minimum detectable reflectivity ``-50 dBZ + 20 log10(r / 1 km)``,
one or two radar outages of a few minutes per day (missing + QC "Bad"),
isolated interference spikes (QC "Bad"), and an "Indeterminate" flag for
echoes within 3 dB of the detection limit (data kept).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import netCDF4
import numpy as np
from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

from bzpipe import __version__
from bzpipe.config import Site, SyntheticConfig, resolve_site
from bzpipe.sources.synthetic.atmosphere import state_at, water_over_ice
from bzpipe.sources.synthetic.noise import hash_normal, hash_uniform, make_key
from bzpipe.sources.synthetic.scene import reflectivity_curtain

MISSING = -9999.0
SYNTHETIC_NOTE = ("SYNTHETIC DATA written by the bzpipe sample-data generator; not an ARM measurement. "
                  "Layout follows the ARM standards so the same readers serve real files.")

LOCATIONS = {
    "nsa": "North Slope of Alaska (NSA), Utqiagvik (formerly Barrow), Alaska",
    "oli": "North Slope of Alaska (NSA), Oliktok Point, Alaska",
    "sgp": "Southern Great Plains (SGP), Lamont, Oklahoma",
}

#: KaZR QC bits: (meaning, assessment)
KAZR_QC_BITS = (
    ("Value is equal to missing_value (no significant detection or no data)", "Bad"),
    ("Radar outage: no data were recorded", "Bad"),
    ("Echo within 3 dB of the minimum detectable reflectivity", "Indeterminate"),
    ("Interference spike detected", "Bad"),
)
MET_QC_BITS = (
    ("Value is equal to missing_value", "Bad"),
    ("Value is less than valid_min", "Bad"),
    ("Value is greater than valid_max", "Bad"),
    ("Difference between current and previous values exceeds valid_delta", "Indeterminate"),
)


# ------------------------------------------------------------------ names


def _day(day: date | datetime) -> date:
    return day.date() if isinstance(day, datetime) else day


def kazr_file_name(site: str | Site, day: date | datetime) -> str:
    """ARM file name of a KaZR day file, e.g. ``nsaarsclkazr1kolliasC1.c0.20190101.000000.nc``."""
    site = resolve_site(site)
    return f"{site.datastream('kazr')}.{_day(day):%Y%m%d}.000000.nc"


def met_file_name(site: str | Site, day: date | datetime) -> str:
    """ARM file name of a surface-met day file, e.g. ``nsametC1.b1.20190101.000000.cdf``."""
    site = resolve_site(site)
    return f"{site.datastream('met')}.{_day(day):%Y%m%d}.000000.cdf"


# ------------------------------------------------------------------ arrays


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def kazr_heights(cfg: SyntheticConfig) -> np.ndarray:
    """Gate centres, m AGL."""
    return cfg.first_gate_m + cfg.gate_spacing_m * np.arange(cfg.n_gates, dtype=np.float64)


def minimum_detectable_dbz(height_m: np.ndarray) -> np.ndarray:
    """KaZR sensitivity: -50 dBZ at 1 km range, falling off as range squared."""
    return -50.0 + 20.0 * np.log10(np.maximum(np.asarray(height_m, dtype=np.float64), 100.0) / 1000.0)


_SPECKLE_BITS = 16


def speckle(key: np.uint64, tidx: np.ndarray, gate_id: np.ndarray) -> np.ndarray:
    """Standard-normal noise per (time index, gate id), deterministic and cheap: a table of
    2**16 hashed normals indexed by a multiplicative hash of the pair."""
    table = hash_normal(key, np.arange(1 << _SPECKLE_BITS, dtype=np.int64), stream=7).astype(np.float32)
    a = (tidx.astype(np.uint64) * np.uint64(0x9E3779B1))[:, None]
    b = (gate_id.astype(np.uint64) * np.uint64(0x85EBCA77))[None, :]
    with np.errstate(over="ignore"):
        h = (a ^ b) * np.uint64(0xC2B2AE3D27D4EB4F)
    return table[(h >> np.uint64(64 - _SPECKLE_BITS)).astype(np.intp)]


def kazr_day_arrays(site: str | Site, day: date | datetime, cfg: SyntheticConfig, seed: int
                    ) -> dict[str, np.ndarray]:
    """What :func:`write_kazr_day` writes: ``time`` (s after midnight), ``height`` (m),
    ``reflectivity`` (float32 dBZ, NaN = missing), ``qc`` (int32 bits, see :data:`KAZR_QC_BITS`)."""
    site = resolve_site(site)
    day = _day(day)
    t_mid = _midnight(day)
    n_t = int(round(cfg.hours_on(day) * 3600.0 / cfg.time_step_s))
    toff = np.arange(n_t, dtype=np.float64) * cfg.time_step_s
    t_abs = t_mid + toff
    heights = kazr_heights(cfg)
    dbz = reflectivity_curtain(site, t_abs, heights, seed)  # float32 (time, height)

    key = make_key(seed, site.name, "kazr")
    tidx = np.round(t_abs * 10.0).astype(np.int64)  # absolute time in 0.1 s
    gate_id = np.round(heights).astype(np.int64)
    mds = minimum_detectable_dbz(heights)[None, :].astype(np.float32)
    qc = np.zeros(dbz.shape, dtype=np.int32)
    for i in range(0, n_t, 2048):  # in blocks of profiles to bound memory
        blk = dbz[i:i + 2048] + np.float32(0.7) * speckle(key, tidx[i:i + 2048], gate_id)
        blk[~(blk >= mds)] = np.nan
        dbz[i:i + 2048] = blk
        qc[i:i + 2048] |= np.where(np.isfinite(blk) & (blk < mds + 3.0), 4, 0).astype(np.int32)

    # interference spikes: about one profile in 50 has one spurious gate
    u = hash_uniform(key, tidx, stream=1)
    rows = np.nonzero(u < 0.02)[0]
    gates = (hash_uniform(key, tidx[rows], stream=2) * heights.size).astype(int)
    dbz[rows, gates] = 55.0 + 10.0 * hash_uniform(key, tidx[rows], stream=3)
    qc[rows, gates] |= 8

    # radar outages: 1-2 per day, 2-10 minutes each (keyed by the day)
    dkey = make_key(seed, site.name, "kazr_outage", day.toordinal())
    n_out = 1 + int(hash_uniform(dkey, np.zeros(1, np.int64))[0] * 2)
    for j in range(n_out):
        u = hash_uniform(dkey, np.array([1 + 2 * j, 2 + 2 * j], dtype=np.int64))
        start = u[0] * 86400.0
        stop = start + 120.0 + 480.0 * u[1]
        out = (toff >= start) & (toff < stop)
        dbz[out, :] = np.nan
        qc[out, :] |= 2

    qc |= np.where(np.isnan(dbz), 1, 0).astype(np.int32)
    return {"time": toff, "height": heights, "reflectivity": dbz, "qc": qc}


def met_day_arrays(site: str | Site, day: date | datetime, seed: int, step_s: float = 60.0
                   ) -> dict[str, np.ndarray]:
    """What :func:`write_met_day` writes, 1-min values (NaN = missing), plus ``qc_<name>`` ints."""
    site = resolve_site(site)
    day = _day(day)
    toff = np.arange(0.0, 86400.0, step_s)
    t_abs = _midnight(day) + toff
    st = state_at(site, t_abs, seed)
    z = np.array([2.0])
    t_k = st.temperature(z)[:, 0]
    rh_ref = st.relative_humidity(z)[:, 0]
    rh_w = 100.0 * np.minimum(rh_ref / water_over_ice(t_k), 1.0)
    p = st.pressure(z)[:, 0]
    u, v = st.wind(np.array([10.0]))
    u, v = u[:, 0], v[:, 0]
    key = make_key(seed, site.name, "met")
    idx = np.round(t_abs).astype(np.int64)
    out = {
        "time": toff,
        "temp_mean": t_k - 273.15 + 0.1 * hash_normal(key, idx, 0),
        "rh_mean": np.clip(rh_w + 0.5 * hash_normal(key, idx, 1), 1.0, 100.0),
        "atmos_pressure": p / 10.0,
        "wspd_vect_mean": np.hypot(u, v),
        "wdir_vect_mean": (np.degrees(np.arctan2(-u, -v)) + 360.0) % 360.0,
    }
    out["wspd_arith_mean"] = out["wspd_vect_mean"] * 1.03
    qcs = {name: np.zeros(toff.size, dtype=np.int32) for name in out if name != "time"}
    # a few missing minutes (logger dropouts) and one out-of-range temperature
    dkey = make_key(seed, site.name, "met_gaps", day.toordinal())
    gaps = (hash_uniform(dkey, np.arange(3, dtype=np.int64)) * toff.size).astype(int)
    for name in qcs:
        out[name][gaps] = np.nan
        qcs[name][gaps] |= 1
    spike = int(hash_uniform(dkey, np.array([99], dtype=np.int64))[0] * toff.size)
    if spike not in gaps:
        out["temp_mean"][spike] = 99.0
        qcs["temp_mean"][spike] |= 4
    out.update({f"qc_{k}": v for k, v in qcs.items()})
    return out


# ------------------------------------------------------------------ writing


def _atomic_write(path: Path, fill: Callable[[netCDF4.Dataset], None], fmt: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    try:
        # netCDF-C / HDF5 are not thread-safe: share xarray's lock with readers in other threads
        with NETCDF4_PYTHON_LOCK, netCDF4.Dataset(tmp, "w", format=fmt) as nc:
            fill(nc)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _arm_time(nc: netCDF4.Dataset, day: date, toff: np.ndarray) -> None:
    base = int(_midnight(day))
    since = f"seconds since {day:%Y-%m-%d} 00:00:00 0:00"
    bt = nc.createVariable("base_time", "i4")
    bt.setncatts({"string": f"{day:%d-%b-%Y},00:00:00 GMT", "long_name": "Base time in Epoch",
                  "units": "seconds since 1970-1-1 0:00:00 0:00", "ancillary_variables": "time_offset"})
    bt.assignValue(base)
    to = nc.createVariable("time_offset", "f8", ("time",))
    to.setncatts({"long_name": "Time offset from base_time", "units": since,
                  "ancillary_variables": "base_time"})
    to[:] = toff
    tv = nc.createVariable("time", "f8", ("time",))
    tv.setncatts({"long_name": "Time offset from midnight", "units": since, "standard_name": "time"})
    tv[:] = toff


def _arm_location(nc: netCDF4.Dataset, site: Site) -> None:
    for name, value, attrs in (
            ("lat", site.latitude, {"long_name": "North latitude", "units": "degree_N",
                                    "valid_min": np.float32(-90.0), "valid_max": np.float32(90.0),
                                    "standard_name": "latitude"}),
            ("lon", site.longitude, {"long_name": "East longitude", "units": "degree_E",
                                     "valid_min": np.float32(-180.0), "valid_max": np.float32(180.0),
                                     "standard_name": "longitude"}),
            ("alt", site.elevation_m, {"long_name": "Altitude above mean sea level", "units": "m",
                                       "standard_name": "altitude"})):
        v = nc.createVariable(name, "f4")
        v.setncatts(attrs)
        v.assignValue(value)


def _qc_variable(nc: netCDF4.Dataset, name: str, dims: tuple[str, ...], long_name: str,
                 bits: tuple[tuple[str, str], ...], values: np.ndarray, **kw: object) -> None:
    v = nc.createVariable(f"qc_{name}", "i4", dims, **kw)
    v.setncatts({
        "long_name": f"Quality check results on variable: {long_name}",
        "units": "1",
        "description": ("This variable contains bit-packed integer values, where each bit represents a QC "
                        "test on the data. Non-zero bits indicate the QC condition given in the description "
                        "for those bits; a value of 0 (no bits set) indicates the data has not failed any "
                        "QC tests."),
        "flag_method": "bit",
        "flag_masks": np.array([1 << i for i in range(len(bits))], dtype=np.int32),
        "flag_meanings": " ".join(m.replace(" ", "_").replace(":", "") for m, _ in bits),
        "flag_assessments": " ".join(a for _, a in bits),
    })
    v[:] = values


def _global_attrs(nc: netCDF4.Dataset, site: Site, datastream: str, day: date, seed: int,
                  platform: str, level: str, doi: str, process: str) -> None:
    nc.setncatts({
        "command_line": f"bzpipe-synthetic --site {site.name} --date {day:%Y%m%d} --seed {seed}",
        "Conventions": "ARM-1.3",
        "process_version": f"bzpipe-synthetic-{__version__} ({process})",
        "dod_version": f"{platform}-{level}-synthetic",
        "site_id": site.name,
        "platform_id": platform,
        "facility_id": site.facility,
        "data_level": level,
        "location_description": LOCATIONS.get(site.name, f"ARM site {site.name.upper()} {site.facility}"),
        "datastream": datastream,
        "doi": doi,
        "input_datastreams": "none (synthetic)",
        "history": f"created by bzpipe {__version__} synthetic generator, seed {seed}",
        "comment": SYNTHETIC_NOTE,
        "synthetic_seed": np.int32(seed),
        "_file_dates": f"{day:%Y%m%d}",
        "_file_times": "000000",
    })


def write_kazr_day(path_dir: str | os.PathLike[str], site: str | Site, day: date | datetime,
                   cfg: SyntheticConfig, seed: int) -> Path:
    """Write one synthetic KaZR ARSCL day file into ``path_dir``; returns its path.

    Variables: ``base_time`` / ``time_offset`` / ``time`` (s after midnight),
    ``height`` (m AGL, gate centres), ``reflectivity_best_estimate`` (float32
    dBZ, missing -9999 where there is no significant detection or no data),
    ``qc_reflectivity_best_estimate`` (ARM bit-packed QC), ``lat`` / ``lon`` / ``alt``.
    """
    site = resolve_site(site)
    day = _day(day)
    arr = kazr_day_arrays(site, day, cfg, seed)
    path = Path(path_dir) / kazr_file_name(site, day)
    path.parent.mkdir(parents=True, exist_ok=True)

    def fill(nc: netCDF4.Dataset) -> None:
        nc.createDimension("time", None)
        nc.createDimension("height", arr["height"].size)
        _arm_time(nc, day, arr["time"])
        h = nc.createVariable("height", "f4", ("height",))
        h.setncatts({"long_name": "Height above ground level", "units": "m", "standard_name": "height",
                     "comment": "Gate centres"})
        h[:] = arr["height"]
        chunks = (min(arr["time"].size, 900), arr["height"].size)
        r = nc.createVariable("reflectivity_best_estimate", "f4", ("time", "height"), zlib=True, complevel=1,
                              chunksizes=chunks, fill_value=np.float32(MISSING))
        r.setncatts({"long_name": "Best-estimate radar reflectivity", "units": "dBZ",
                     "missing_value": np.float32(MISSING),
                     "ancillary_variables": "qc_reflectivity_best_estimate",
                     "comment": "Gates without significant detection are set to missing_value"})
        r[:] = np.where(np.isnan(arr["reflectivity"]), np.float32(MISSING), arr["reflectivity"])
        _qc_variable(nc, "reflectivity_best_estimate", ("time", "height"), "Best-estimate radar reflectivity",
                     KAZR_QC_BITS, arr["qc"], zlib=True, complevel=1, chunksizes=chunks)
        _arm_location(nc, site)
        _global_attrs(nc, site, site.datastream("kazr"), day, seed, site.kazr_datastream, site.kazr_level,
                      "10.5439/1393437", "KaZR ARSCL (Kollias)")
        nc.setncattr("sampling_interval", f"{cfg.time_step_s:g} seconds")
        nc.setncattr("range_gate_spacing", f"{cfg.gate_spacing_m:g} m")

    return _atomic_write(path, fill, "NETCDF4_CLASSIC")


_MET_VARS = {
    "temp_mean": ("Temperature mean", "degC", -60.0, 40.0),
    "rh_mean": ("Relative humidity mean", "%", 0.0, 104.0),
    "atmos_pressure": ("Atmospheric pressure", "kPa", 80.0, 110.0),
    "wspd_arith_mean": ("Wind speed arithmetic mean", "m/s", 0.0, 100.0),
    "wspd_vect_mean": ("Wind speed vector mean", "m/s", 0.0, 100.0),
    "wdir_vect_mean": ("Wind direction vector mean", "degree", 0.0, 360.0),
}


def write_met_day(path_dir: str | os.PathLike[str], site: str | Site, day: date | datetime,
                  cfg: SyntheticConfig, seed: int) -> Path:
    """Write one synthetic ARM surface-meteorology (``met`` b1) day file; 1-min values.

    ``temp_mean`` degC (2 m), ``rh_mean`` % (w.r.t. water), ``atmos_pressure``
    kPa, ``wspd_vect_mean`` / ``wspd_arith_mean`` m/s, ``wdir_vect_mean`` deg,
    each with an ARM ``qc_`` variable.  ``cfg`` is accepted for symmetry with
    :func:`write_kazr_day` (met files always cover the whole day at 1 min).
    """
    site = resolve_site(site)
    day = _day(day)
    arr = met_day_arrays(site, day, seed)
    path = Path(path_dir) / met_file_name(site, day)
    path.parent.mkdir(parents=True, exist_ok=True)

    def fill(nc: netCDF4.Dataset) -> None:
        nc.createDimension("time", None)
        _arm_time(nc, day, arr["time"])
        for name, (long_name, units, vmin, vmax) in _MET_VARS.items():
            v = nc.createVariable(name, "f4", ("time",), fill_value=np.float32(MISSING))
            v.setncatts({"long_name": long_name, "units": units, "missing_value": np.float32(MISSING),
                         "valid_min": np.float32(vmin), "valid_max": np.float32(vmax),
                         "ancillary_variables": f"qc_{name}"})
            v[:] = np.where(np.isnan(arr[name]), MISSING, arr[name]).astype(np.float32)
            _qc_variable(nc, name, ("time",), long_name, MET_QC_BITS, arr[f"qc_{name}"])
        _arm_location(nc, site)
        _global_attrs(nc, site, site.datastream("met"), day, seed, "met", "b1", "10.5439/1786358",
                      "surface meteorological station")
        nc.setncattr("sampling_interval", "1 minute")

    return _atomic_write(path, fill, "NETCDF3_CLASSIC")
