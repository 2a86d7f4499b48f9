"""Synthetic CloudSat granules (2B-GEOPROF and its ECMWF-AUX companion) along a polar orbit near NSA / OLI.

Geometry: a great circle with the CloudSat inclination (98.2 deg, so the
track's highest latitude is 81.8 deg), 0.16 s and ~1.1 km between profiles,
passing within 30 km of the chosen site at a point near the middle of the
granule (or at a chosen time: :func:`generate_overpass`).  Bins: 125 of 239.83 m,
bin 0 at the top (about 25 km MSL).

Curtain: the site's true reflectivity (:func:`.scene.reflectivity_curtain`, the same scene
the synthetic KaZR records) with along-track distance mapped to time by frozen advection with
the true wind at the time of closest approach, height band by height band
(:data:`BAND_EDGES_M`): the profile ``s`` metres along the track holds, at height ``z``, the
site's column at ``t_over + s / |V(z)|`` (Taylor's hypothesis per height, as the forward
operator :mod:`bzpipe.forward.cpr` inverts it; wind clipped to 3-30 m s-1).  Each bin is the
Gaussian range-weighted mean of that curtain (480 m pulse, :func:`bzpipe.forward.cpr.range_weights`),
a point sample along track (no footprint averaging: a simplification).  Then the CPR's view of
it: noise with the CPR's std (:func:`bzpipe.forward.cpr.noise_std_db`), detection above the
-28 dBZ design MDS (cloud mask 20 / 30 / 40 with increasing margin), noise values (mask 0) where
nothing is detected, strong surface echo in the surface bin and decaying clutter in the 4 bins
above it (mask 5, "likely ground clutter"), fill (NaN) below the surface; ``SurfaceHeightBin``
is the bin whose centre is nearest the DEM.  DEM and land/sea flag follow a crude North-Slope
geography (coastal plain, Brooks Range, Alaska Range; Arctic Ocean north of the coast, Gulf of
Alaska south).

ECMWF-AUX (:func:`ecmwf_aux_arrays`): the synthetic reanalysis view of the same atmosphere
(``state_at(..., view="era5")``: no mesoscale detail, smooth analysis errors) at the same mapped
times, on the fixed ``EC_height`` bins; bins below the ground are fill.  The real product holds the
operational ECMWF analysis ([DPC-EC]); here the reanalysis view stands in for it.

The HDF-EOS2 writing is :mod:`.cloudsat_hdf`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bzpipe.config import Site, SyntheticConfig, resolve_site
from bzpipe.forward.cpr import noise_std_db, range_weights
from bzpipe.infer.regrid import interp_rows
from bzpipe.sources.synthetic.atmosphere import state_at
from bzpipe.sources.synthetic.noise import hash_normal, hash_uniform, make_key
from bzpipe.sources.synthetic.scene import reflectivity_curtain
from bzpipe.thermo import specific_humidity

INCLINATION_DEG = 98.2
PROFILE_INTERVAL_S = 0.16
PROFILE_SPACING_M = 1100.0
N_BINS = 125
BIN_SPACING_M = 239.83
TOP_BIN_HEIGHT_M = 24940.0
EARTH_RADIUS_M = 6_371_000.0
#: height bands (m above ground) that each get their own advection speed
BAND_EDGES_M = (0.0, 400.0, 1000.0, 2000.0, 4000.0, 1.0e5)
ADVECTION_RANGE_M_S = (3.0, 30.0)
DETECTION_DBZ = -28.0  # CPR design MDS (Im et al. 2005; docs/cloudsat_cpr.md)
PULSE_LENGTH_M = 480.0
LAND, OCEAN = 1, 2
_REF_ORBIT = (67551, datetime(2019, 1, 2, 17, 58, 51, tzinfo=UTC))
ORBIT_PERIOD_S = 86400.0 / 14.5625


def granule_number_for(start: datetime) -> int:
    """Orbit (granule) number of a start time, from a real R05 granule and the orbit period."""
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    return max(1, _REF_ORBIT[0] + int(np.floor((start - _REF_ORBIT[1]).total_seconds() / ORBIT_PERIOD_S)))


def _destination(lat0: float, lon0: float, az_deg: float, dist_m: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Points at great-circle distances ``dist_m`` from (lat0, lon0) along azimuth ``az_deg``."""
    p1, l1, az = np.radians(lat0), np.radians(lon0), np.radians(az_deg)
    d = np.asarray(dist_m, dtype=np.float64) / EARTH_RADIUS_M
    p2 = np.arcsin(np.sin(p1) * np.cos(d) + np.cos(p1) * np.sin(d) * np.cos(az))
    l2 = l1 + np.arctan2(np.sin(az) * np.sin(d) * np.cos(p1), np.cos(d) - np.sin(p1) * np.sin(p2))
    return np.degrees(p2), (np.degrees(l2) + 180.0) % 360.0 - 180.0


def track(site: Site, n_profiles: int, key: np.uint64, i_over: int | None = None) -> dict[str, np.ndarray]:
    """Latitude, longitude, signed along-track distance (m) from closest approach, and the
    closest-approach profile index ``i_over`` (drawn from ``key`` unless given)."""
    u = hash_uniform(key, np.arange(4, dtype=np.int64))
    ascending = u[0] < 0.5
    cross_m = (2.0 * u[1] - 1.0) * 30_000.0
    i_over = (int(n_profiles * (0.4 + 0.2 * u[2])) if i_over is None
              else int(np.clip(i_over, 0, n_profiles - 1)))
    cos_lat = np.cos(np.radians(site.latitude))
    az = np.degrees(np.arcsin(np.clip(np.cos(np.radians(INCLINATION_DEG)) / cos_lat, -1.0, 1.0)))
    az = az if ascending else 180.0 - az
    plat, plon = _destination(site.latitude, site.longitude, az + 90.0, np.array([cross_m]))
    s = (np.arange(n_profiles) - i_over) * PROFILE_SPACING_M
    lat, lon = _destination(float(plat[0]), float(plon[0]), az, s)
    return {"latitude": lat, "longitude": lon, "along_m": s, "i_over": np.array(i_over)}


def geography(lat: np.ndarray, lon: np.ndarray, key: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(DEM elevation m MSL, land/sea flag 1 land / 2 ocean) of a crude Alaskan North Slope."""
    coast = 71.4 + (lon + 157.0) * (70.3 - 71.4) / 9.0
    land = (lat < coast) & (lat > 59.5) & (lon > -168.0) & (lon < -141.0)
    cell = np.round(lat * 200).astype(np.int64) * 100_000 + np.round(lon * 50).astype(np.int64)
    rough = 25.0 * hash_normal(key, cell)
    elev = (5.0 + np.minimum(150.0 * np.clip(coast - lat, 0.0, None), 400.0)
            + 1500.0 * np.exp(-((lat - 68.3) / 0.5) ** 2)  # Brooks Range
            + 2000.0 * np.exp(-((lat - 63.2) / 0.4) ** 2)  # Alaska Range
            + rough)
    dem = np.where(land, np.maximum(elev, 1.0), 0.0)
    return np.round(dem), np.where(land, LAND, OCEAN).astype(np.uint8)


def advection_speeds(site: Site, t_over: float, seed: int, heights: np.ndarray) -> np.ndarray:
    """|V| (m s-1) of the true wind at ``heights`` (m AGL) at ``t_over``, clipped to 3-30 m s-1."""
    u, v = state_at(site, np.array([t_over]), seed).wind(np.asarray(heights, np.float64))
    return np.clip(np.hypot(u[0], v[0]), *ADVECTION_RANGE_M_S)


def band_times(site: Site, t_over: float, along_m: np.ndarray,
               seed: int) -> list[tuple[float, float, np.ndarray]]:
    """``[(bottom, top, times (P,)), ...]``: per height band, when the site saw the air that each
    profile holds (``t_over + s / |V(band centre)|``)."""
    edges = np.asarray(BAND_EDGES_M)
    centres = np.append(0.5 * (edges[:-2] + edges[1:-1]), edges[-2] + 1000.0)
    speeds = advection_speeds(site, t_over, seed, centres)
    return [(float(edges[i]), float(edges[i + 1]), t_over + np.asarray(along_m, np.float64) / speeds[i])
            for i in range(len(centres))]


def along_track_truth(site: Site, t_over: float, along_m: np.ndarray, heights_agl: np.ndarray,
                      seed: int) -> np.ndarray:
    """True reflectivity (P, H) dBZ along the track: each height band from the site's curtain at that
    band's mapped times (:func:`band_times`)."""
    h = np.asarray(heights_agl, np.float64)
    out = np.full((len(along_m), h.size), np.nan, np.float32)
    for lo, hi, times in band_times(site, t_over, along_m, seed):
        rows = (h >= lo) & (h < hi)
        if rows.any():
            out[:, rows] = reflectivity_curtain(site, times, h, seed)[:, rows]
    return out


def geoprof_arrays(start: datetime, n_profiles: int, seed: int, site: str | Site | None = None,
                   i_over: int | None = None) -> dict[str, np.ndarray | int | str]:
    """Everything :func:`generate_cloudsat_granule` writes, as arrays (see the module docstring).

    ``i_over`` puts the closest approach at that profile (default: drawn from the seed).
    """
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    gkey = make_key(seed, "cloudsat", int(start.timestamp()))
    if site is None:
        site = ("nsa", "oli")[int(hash_uniform(gkey, np.array([7], dtype=np.int64))[0] * 2)]
    site = resolve_site(site)
    tr = track(site, n_profiles, gkey, i_over)
    lat, lon, along = tr["latitude"], tr["longitude"], tr["along_m"]
    i_over = int(tr["i_over"])
    profile_time = np.arange(n_profiles) * PROFILE_INTERVAL_S
    dem, lsf = geography(lat, lon, make_key(seed, "cloudsat-dem"))

    offset = 120.0 * np.sin(np.radians(2.0 * lat + lon))
    height = np.round(TOP_BIN_HEIGHT_M + offset[:, None] - BIN_SPACING_M * np.arange(N_BINS)[None, :])
    agl = height - dem[:, None]
    t_over = start.timestamp() + i_over * PROFILE_INTERVAL_S

    # true reflectivity on a fine AGL grid, then the 480 m Gaussian pulse for every bin
    grid = np.arange(30.0, 12000.0, 60.0)
    true = along_track_truth(site, t_over, along, grid, seed)
    lin = np.where(np.isfinite(true), 10.0 ** (np.nan_to_num(true, nan=-99.0) / 10.0), 0.0)
    offsets = np.arange(-PULSE_LENGTH_M, PULSE_LENGTH_M + 1.0, 60.0)
    w = range_weights(offsets, PULSE_LENGTH_M)
    sub = agl[:, :, None] + offsets[None, None, :]
    idx = np.clip(np.round((sub - grid[0]) / 60.0).astype(int), 0, grid.size - 1)
    inside = (sub >= 0.0) & (sub <= grid[-1] + 30.0)
    rows = np.arange(n_profiles)[:, None, None]
    z_mean = (np.where(inside, lin[rows, idx], 0.0) * w).sum(axis=2) / w.sum()
    with np.errstate(divide="ignore"):
        dbz = np.where(z_mean > 0, 10.0 * np.log10(z_mean), -np.inf)

    cell = np.arange(n_profiles, dtype=np.int64)[:, None] * 1024 + np.arange(N_BINS, dtype=np.int64)[None, :]
    dbz = dbz + noise_std_db(np.maximum(dbz, -60.0)) * np.clip(hash_normal(gkey, cell, stream=1), -3.0, 3.0)
    detected = dbz >= DETECTION_DBZ
    mask = np.select([dbz >= DETECTION_DBZ + 5.0, dbz >= DETECTION_DBZ + 3.0, detected], [40, 30, 20], 0)
    noise = np.minimum(-36.0 + 2.0 * hash_normal(gkey, cell, stream=2), DETECTION_DBZ - 0.5)
    refl = np.where(detected, dbz, noise)

    # surface echo and clutter: surface bin = the bin whose centre is nearest the DEM
    surf_bin = np.argmin(np.abs(agl), axis=1)
    bins = np.arange(N_BINS)[None, :]
    above = surf_bin[:, None] - bins  # 0 at the surface bin, k for k bins above it
    surf_dbz = np.where(lsf == OCEAN, 40.0, 30.0)[:, None] + 3.0 * hash_normal(gkey, cell, stream=3)
    clutter = surf_dbz - 12.0 * above
    is_clutter = (above >= 0) & (above <= 4) & (clutter > refl)
    refl = np.where(is_clutter, clutter, refl)
    mask = np.where(is_clutter, 5, mask)
    below = above < 0
    refl = np.where(below, np.nan, refl)
    mask = np.where(below, 0, mask)
    return {"reflectivity_dbz": refl.astype(np.float32), "height_m": height,
            "cloud_mask": mask.astype(np.int8), "surface_height_bin": surf_bin.astype(np.int16),
            "latitude": lat, "longitude": lon, "profile_time_s": profile_time, "dem_elevation_m": dem,
            "land_sea_flag": lsf, "granule_number": granule_number_for(start), "site": site.name,
            "closest_approach_index": i_over, "along_m": along, "overpass_time_s": t_over}


def ecmwf_aux_arrays(arr: dict[str, np.ndarray | int | str], seed: int) -> dict[str, np.ndarray]:
    """The ECMWF-AUX companion of :func:`geoprof_arrays`' granule (module docstring): ``ec_height_m``
    (nbin,), ``temperature_k``, ``specific_humidity``, ``u_m_s``, ``v_m_s``, ``pressure_pa`` (P, nbin)."""
    site = resolve_site(str(arr["site"]))
    dem = np.asarray(arr["dem_elevation_m"], np.float64)
    ec_height = TOP_BIN_HEIGHT_M - BIN_SPACING_M * np.arange(N_BINS)
    agl = ec_height[None, :] - dem[:, None]                                  # (P, K)
    p_grid = np.arange(-600.0, 26000.0, 100.0)
    out = {k: np.full(agl.shape, np.nan) for k in ("temperature_k", "specific_humidity", "u_m_s", "v_m_s",
                                                   "pressure_pa")}
    for lo, hi, times in band_times(site, float(arr["overpass_time_s"]), np.asarray(arr["along_m"]), seed):
        sel = (agl >= (lo if lo > 0 else -0.5 * BIN_SPACING_M)) & (agl < hi)
        if not sel.any():
            continue
        st = state_at(site, times, seed, view="era5")
        t = st.temperature(agl)
        p_hpa = np.exp(interp_rows(agl, np.broadcast_to(p_grid, (len(times), p_grid.size)),
                                   np.log(st.pressure(p_grid))))
        q = specific_humidity(st.relative_humidity(agl, t), t, p_hpa)
        u, v = st.wind(agl)
        for key, val in (("temperature_k", t), ("specific_humidity", q), ("u_m_s", u), ("v_m_s", v),
                         ("pressure_pa", 100.0 * p_hpa)):
            out[key] = np.where(sel, val, out[key])
    return {"ec_height_m": ec_height, **out}


def generate_cloudsat_granule(path_dir: str | os.PathLike[str], start: datetime, n_profiles: int | None,
                              seed: int, cfg: SyntheticConfig, site: str | Site | None = None, *,
                              ecmwf_aux: bool = True, i_over: int | None = None) -> Path:
    """Write one synthetic 2B-GEOPROF granule (real file name and HDF-EOS2 layout) into ``path_dir``,
    and its ECMWF-AUX companion beside it (unless ``ecmwf_aux=False``); returns the 2B-GEOPROF path.

    ``n_profiles`` defaults to ``cfg.cloudsat_profiles``; ``site`` (NSA or OLI by
    default, chosen from the seed and start time) is where the track passes, closest at profile
    ``i_over`` (default: drawn from the seed).
    """
    from bzpipe.sources.synthetic.cloudsat_hdf import write_ecmwf_aux_granule, write_geoprof_granule

    n = int(n_profiles or cfg.cloudsat_profiles)
    if n < 2:
        raise ValueError("a granule needs at least 2 profiles")
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    arr = geoprof_arrays(start, n, seed, site, i_over)
    geo = dict(latitude=arr["latitude"], longitude=arr["longitude"], profile_time_s=arr["profile_time_s"],
               start=start, granule_number=int(arr["granule_number"]))
    path = write_geoprof_granule(
        Path(path_dir), reflectivity_dbz=arr["reflectivity_dbz"], height_m=arr["height_m"],
        cloud_mask=arr["cloud_mask"], dem_elevation_m=arr["dem_elevation_m"],
        land_sea_flag=arr["land_sea_flag"], surface_height_bin=arr["surface_height_bin"], **geo)
    if ecmwf_aux:
        write_ecmwf_aux_granule(Path(path_dir), **ecmwf_aux_arrays(arr, seed), **geo)
    return path


def generate_overpass(path_dir: str | os.PathLike[str], site: str | Site, overpass: datetime, n_profiles: int,
                      seed: int, cfg: SyntheticConfig) -> Path:
    """A granule whose closest approach to ``site`` is at ``overpass`` (to within a profile): the
    coincident CloudSat overpass of the synthetic KaZR, drawn from the same scene.  Returns the
    2B-GEOPROF path (ECMWF-AUX beside it)."""
    overpass = overpass if overpass.tzinfo else overpass.replace(tzinfo=UTC)
    i_over = n_profiles // 2
    start = overpass - timedelta(seconds=i_over * PROFILE_INTERVAL_S)
    start = start.replace(microsecond=0)                         # granule names carry whole seconds
    return generate_cloudsat_granule(path_dir, start, n_profiles, seed, cfg, site, i_over=i_over)


__all__ = ["ecmwf_aux_arrays", "generate_cloudsat_granule", "generate_overpass", "geoprof_arrays",
           "granule_number_for", "track"]
