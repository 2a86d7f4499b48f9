"""Is what a CloudSat granule decoded to physically possible?  Damaged bytes, not weather, if not.

A byte flipped inside a data array decodes without any error from HDF4: the value is just
different.  These checks catch the damage wherever the physics of the CPR leaves no room for it
(facts from ``docs/cloudsat_cpr.md`` [GRAN], [DPC-1B]):

* ``Height``: within the product's -5000..30000 m; in each profile either every bin valid or none
  (a whole profile may be fill, a single bin never is); and falling by one range bin (~240 m,
  ``Vertical_binsize``) from each bin to the next, within 2 m (the int16 metres round it);
* ``Latitude`` / ``Longitude``: present for every profile, within +-90 / +-180, and consecutive
  profiles ~1.1 km apart, i.e. a ground speed of ~6.8 km/s (4..10 km/s accepted);
* time: ``Profile_time`` strictly increasing, steps of at most 60 s (0.16 s in the product), the
  granule at most 6000 s long, and its first profile between the CloudSat launch and today;
* ``Radar_Reflectivity`` (valid values): -100..100 dBZ; ``DEM_elevation``: -500..9000 m.

A granule failing any check raises :class:`~bzpipe.errors.ImplausibleDataError` (a
``CorruptFileError``), so it is quarantined with the reason like any damaged file.  A flip that
moves a value by less than the checks can see passes, and is then within the instrument's noise
(e.g. a height 1 m off, a reflectivity still inside its valid range).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import xarray as xr

from bzpipe.errors import ImplausibleDataError

HEIGHT_RANGE_M = (-5000.0, 30000.0)          # Height valid_range [GRAN]
BIN_SIZE_M = 239.83                          # Vertical_binsize [GRAN]
BIN_SIZE_TOLERANCE_M = 2.0                   # int16 metres: observed steps are 239 and 240 m
GROUND_SPEED_KM_S = (4.0, 10.0)              # observed 6.77..6.91 km/s (0.16 s, ~1.1 km per profile)
MAX_PROFILE_STEP_S = 60.0                    # observed 0.159..0.161 s
MAX_GRANULE_S = 6000.0                       # Profile_time valid range 0..6000 s [GRAN]
CLOUDSAT_LAUNCH = datetime(2006, 4, 28, tzinfo=UTC)
REFLECTIVITY_RANGE_DBZ = (-100.0, 100.0)
DEM_RANGE_M = (-500.0, 9000.0)
EARTH_RADIUS_KM = 6371.0


def check_granule(ds: xr.Dataset, source: str) -> xr.Dataset:
    """``ds`` when every check passes; else raise :class:`ImplausibleDataError` naming the file and
    the first problems found."""
    problems = granule_problems(ds)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ImplausibleDataError(source, "implausible values, the file is probably damaged: "
                                           + "; ".join(problems[:3]) + more)
    return ds


def granule_problems(ds: xr.Dataset) -> list[str]:
    """Every physical impossibility found in a decoded granule (empty when it is plausible)."""
    out: list[str] = []
    out += _height_problems(ds["height"].values, float(ds.attrs.get("vertical_binsize_m") or BIN_SIZE_M))
    out += _geolocation_problems(ds["latitude"].values, ds["longitude"].values, ds["time"].values)
    out += _time_problems(ds["time"].values)
    if "reflectivity" in ds:
        out += _range_problems("Radar_Reflectivity", ds["reflectivity"].values, REFLECTIVITY_RANGE_DBZ, "dBZ")
    if "dem_elevation" in ds:
        out += _range_problems("DEM_elevation", ds["dem_elevation"].values, DEM_RANGE_M, "m")
    return out


def _range_problems(name: str, a: np.ndarray, bounds: tuple[float, float], units: str) -> list[str]:
    a = np.asarray(a, dtype=np.float64)
    bad = np.isfinite(a) & ((a < bounds[0]) | (a > bounds[1]))
    if not bad.any():
        return []
    return [f"{name!r} has {int(bad.sum())} value(s) outside {bounds[0]:g}..{bounds[1]:g} {units} "
            f"(e.g. {a[bad].flat[0]:g} at index {np.unravel_index(np.flatnonzero(bad)[0], a.shape)})"]


def _height_problems(h: np.ndarray, bin_size: float) -> list[str]:
    h = np.asarray(h, dtype=np.float64)
    out = _range_problems("Height", h, HEIGHT_RANGE_M, "m")
    if not 0.9 * BIN_SIZE_M <= bin_size <= 1.1 * BIN_SIZE_M:
        out.append(f"'Vertical_binsize' is {bin_size:g} m, not ~{BIN_SIZE_M:g} m")
        bin_size = BIN_SIZE_M
    valid = np.isfinite(h)
    partial = valid.any(axis=1) & ~valid.all(axis=1)
    if partial.any():
        p = int(np.flatnonzero(partial)[0])
        out.append(f"'Height' has invalid bins inside {int(partial.sum())} otherwise valid profile(s) "
                   f"(first: profile {p}, bin {int(np.flatnonzero(~valid[p])[0])})")
    step = -np.diff(h, axis=1)                          # bin 0 is the top: heights fall bin by bin
    off = np.isfinite(step) & (np.abs(step - bin_size) > BIN_SIZE_TOLERANCE_M)
    if off.any():
        p, b = (int(i) for i in np.unravel_index(np.flatnonzero(off)[0], off.shape))
        out.append(f"'Height' does not fall by one bin ({bin_size:.1f} m) from bin to bin in "
                   f"{int(off.any(axis=1).sum())} profile(s) (first: profile {p}, bins {b}-{b + 1}: "
                   f"{h[p, b]:g} -> {h[p, b + 1]:g} m)")
    return out


def _geolocation_problems(lat: np.ndarray, lon: np.ndarray, time: np.ndarray) -> list[str]:
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    out = []
    for name, a, lim in (("Latitude", lat, 90.0), ("Longitude", lon, 180.0)):
        n_bad = int((~np.isfinite(a)).sum())
        if n_bad:
            out.append(f"{name!r} is invalid for {n_bad} profile(s) (the CPR track is always located)")
        out += _range_problems(name, a, (-lim, lim), "degrees")
    if out or lat.size < 2:
        return out
    la, lo = np.radians(lat), np.radians(lon)
    hav = (np.sin(np.diff(la) / 2) ** 2
           + np.cos(la[:-1]) * np.cos(la[1:]) * np.sin(np.diff(lo) / 2) ** 2)
    dist_km = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0)))
    dt = np.diff(np.asarray(time).astype("datetime64[ns]").astype(np.int64)) / 1e9
    ok = dt > 0
    speed = np.full(dist_km.shape, np.nan)
    speed[ok] = dist_km[ok] / dt[ok]
    lo_s, hi_s = GROUND_SPEED_KM_S
    bad = ok & ((speed < lo_s) | (speed > hi_s))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        out.append(f"the track jumps: {int(bad.sum())} step(s) between consecutive profiles imply a ground "
                   f"speed outside {lo_s:g}..{hi_s:g} km/s (first: profiles {i}-{i + 1}, {dist_km[i]:.2f} "
                   f"km in {dt[i]:.3f} s; ({lat[i]:.4f}, {lon[i]:.4f}) -> "
                   f"({lat[i + 1]:.4f}, {lon[i + 1]:.4f}))")
    return out


def _time_problems(time: np.ndarray) -> list[str]:
    t = np.asarray(time).astype("datetime64[ns]")
    if t.size == 0:
        return []
    out = []
    if np.isnat(t).any():
        return [f"{int(np.isnat(t).sum())} profile time(s) are invalid"]
    step = np.diff(t.astype(np.int64)) / 1e9
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0])
        out.append(f"'Profile_time' is not increasing ({int((step <= 0).sum())} step(s); "
                   f"first at profile {i})")
    if (step > MAX_PROFILE_STEP_S).any():
        out.append(f"'Profile_time' jumps by up to {step.max():.1f} s between profiles (at most "
                   f"{MAX_PROFILE_STEP_S:g} s expected)")
    span = float((t[-1] - t[0]) / np.timedelta64(1, "s"))
    if span > MAX_GRANULE_S:
        out.append(f"the granule spans {span:.0f} s, longer than an orbit's {MAX_GRANULE_S:g} s")
    first = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(t[0].astype(np.int64) // 1000))
    latest = datetime.now(UTC) + timedelta(days=1)
    if not CLOUDSAT_LAUNCH <= first <= latest:
        out.append(f"the first profile is at {first:%Y-%m-%d %H:%M:%S} UTC, outside the CloudSat mission "
                   f"({CLOUDSAT_LAUNCH:%Y-%m-%d} until today)")
    return out
