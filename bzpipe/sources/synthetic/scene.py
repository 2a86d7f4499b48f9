"""Radar reflectivity curtains driven by the hidden atmosphere (:mod:`.atmosphere`).

The curtain is the "true" equivalent reflectivity (dBZ, NaN = no hydrometeors)
before any instrument effect; the KaZR and CloudSat writers add their own
sensitivity, speckle, clutter and quality problems.  Numbers and sources:
:mod:`.climatology`.

Physics, evaluated top-down one height at a time (vectorized over time):

* **cells and edges**: every cloud is cut out of a fractal field of time
  (:func:`~.noise.fractal_noise`, spectrum ~ k^-5/3 [G01]) by a threshold that
  falls as the cloud's driver strengthens, so clouds have sharp, ragged edges,
  clear gaps, and textures that are self-similar over minutes to hours;
* a **mid-level snow-generating layer** (ragged top) whose reflectivity grows
  from about -32 dBZ at its top to its generating value at its base;
* **fall streaks** below every generating level: particles fall at ~1 m s-1 and
  drift with the wind *relative to the generating level*, so the cells seen at
  height ``z`` and time ``t`` are those that passed at ``t - drift/U``: the
  streaks slant with the wind shear [HK05];
* **sublimation** below ice saturation (``rate ~ (1 - RH_ice)``, faster for
  weaker echoes [ZG08]): falling snow fades out (virga) where the air below the
  cloud is dry; **depositional growth** above ice saturation: reflectivity grows
  toward the surface in a moist boundary layer (and stays ~constant near ice
  saturation [M14]);
* a **low mixed-phase layer** where the boundary layer is supersaturated w.r.t.
  ice and cold: ice generated at the boundary-layer top (0.35-2.4 km; a
  liquid-topped layer [Sh11b] that precipitates [Si21]), weak there (about -36 dBZ)
  and growing as it falls: shallow snowfall that may stay entirely below 1.2 km
  under clear air, or grow from < -20 dBZ above the blind zone to > -20 dBZ at
  the surface;
* thin **cirrus** with short fall streaks;
* **blowing snow** in the lowest few hundred metres when the 10 m wind exceeds
  8 m s-1 on a cold day.

What happens below 1.2 km is thus caused by the boundary-layer humidity,
temperature and wind profile: the fields ERA-5 reports (with the errors of
:func:`~.atmosphere.state_at` ``view="era5"``), plus the echo entering from above.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from bzpipe.config import Site, resolve_site
from bzpipe.sources.synthetic import climatology as clim
from bzpipe.sources.synthetic.atmosphere import AtmosphereState, state_at, to_epoch_seconds
from bzpipe.sources.synthetic.noise import gridded_fractal, make_key

WEATHER_TOP_M = 10000.0  #: no hydrometeors above this height
NO_ECHO_DBZ = clim.NO_ECHO_DBZ  #: weaker (true) reflectivities are reported as no echo (NaN)
MAX_LAG_S = 3.0 * 3600.0  #: longest fall-streak lag
ENV_STEP_S = 60.0  #: profiles of T, RH and wind are computed on this absolute time lattice and interpolated
GONE = -99.0  #: dBZ of snow that has sublimated away
#: growth stops here (light to moderate snow at Ka band; King et al. drop test patches > 20)
MAX_SNOW_DBZ = 10.0


class _Textures:
    """Fractal textures of absolute time (unit variance, k^-5/3), tabulated once and interpolated.

    ``SPECS``: name -> (outer scale s, inner scale s).  ``*_cells`` decide where a cloud is
    (thresholded); the others modulate its reflectivity.
    """

    SPECS = {"mid_cells": (4 * 3600.0, 60.0), "mid_gen": (2 * 3600.0, 30.0), "mid_top": (3 * 3600.0, 120.0),
             "low_cells": (2 * 3600.0, 60.0), "low_gen": (3600.0, 30.0), "low_top": (2 * 3600.0, 120.0),
             "ci_cells": (3 * 3600.0, 120.0), "ci_gen": (3600.0, 60.0), "blowing": (600.0, 30.0)}

    def __init__(self, site: Site, seed: int, t0: float, t1: float, step_s: float = 10.0) -> None:
        self.tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, (outer, inner) in self.SPECS.items():
            self.tables[name] = gridded_fractal(make_key(seed, site.name, "texture", name),
                                                t0 - MAX_LAG_S - 60.0, t1 + 60.0, step_s, outer, inner,
                                                clim.TEXTURE_HURST)

    def __call__(self, name: str, t: np.ndarray) -> np.ndarray:
        grid, values = self.tables[name]
        return np.interp(t, grid, values)


def _to_lin(dbz: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(dbz), 10.0 ** (np.nan_to_num(dbz, nan=-200.0) / 10.0), 0.0)


def _internal_grid(heights: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Physics grid and the indices of ``heights`` in it (None: interpolate)."""
    top = max(WEATHER_TOP_M, float(heights.max()))
    if heights.size > 1:
        d = np.diff(heights)
        s = float(d[0])
        if 0 < s <= 100.0 and np.allclose(d, s, rtol=0, atol=1e-3):
            k0 = int(np.floor(heights[0] / s))
            k1 = int(np.ceil((top - heights[0]) / s))
            grid = heights[0] + s * np.arange(-k0, k1 + 1)
            return grid, np.arange(heights.size) + k0
    return np.arange(0.0, top + 30.0, 30.0), None


def fall_rate_db_per_km(dbz: np.ndarray, rh_ice: np.ndarray) -> np.ndarray:
    """Change of falling snow's reflectivity per km of descent (dB km-1, positive = weakening).

    Below ice saturation it sublimates at ``K_SUBLIMATION (1 - RH)``, faster for
    weak echoes (up to 5x below -10 dBZ) [ZG08]; above it grows at
    ``K_GROWTH (RH - 1)`` (negative rate).
    """
    return np.where(rh_ice < 1.0,
                    clim.K_SUBLIMATION * (1.0 - rh_ice) * (1.0 + np.clip((-10.0 - dbz) / 10.0, 0.0, 4.0)),
                    -clim.K_GROWTH * (rh_ice - 1.0))


def _fall_through(dbz: np.ndarray, falling: np.ndarray, rh: np.ndarray, dz: float) -> np.ndarray:
    """Falling snow's mean reflectivity one layer (``dz`` m) lower (:func:`fall_rate_db_per_km`);
    at most :data:`MAX_SNOW_DBZ`; below -70 dBZ it is gone (:data:`GONE`)."""
    out = np.where(falling, np.minimum(dbz - fall_rate_db_per_km(dbz, rh) * dz / 1000.0, MAX_SNOW_DBZ), dbz)
    return np.where(out < -70.0, GONE, out)


class _Stream:
    """Snow falling from one generating level: its mean dBZ and drift, carried down the column."""

    def __init__(self, n: int, u_gen: np.ndarray, v_gen: np.ndarray, fall_speed: float) -> None:
        self.mean = np.full(n, GONE)
        self.drift = np.zeros(n)                       # m along the generating-level wind
        self.u, self.v = u_gen, v_gen
        self.speed = np.maximum(np.hypot(u_gen, v_gen), 3.0)
        self.ex, self.ey = u_gen / self.speed, v_gen / self.speed
        self.fall_speed = fall_speed

    def lag(self, below_gen: np.ndarray, u: np.ndarray, v: np.ndarray, dz: float) -> np.ndarray:
        """Advance the drift one layer down (where below the generating level); the source-time lag, s."""
        step = ((self.u - u) * self.ex + (self.v - v) * self.ey) * dz / self.fall_speed
        self.drift = np.where(below_gen, self.drift + step, 0.0)
        return np.clip(np.abs(self.drift) / self.speed, 0.0, MAX_LAG_S)


def reflectivity_curtain(site: str | Site, times: np.ndarray | list[datetime], heights_agl: np.ndarray,
                         seed: int, state: AtmosphereState | None = None) -> np.ndarray:
    """True reflectivity (dBZ, float32, NaN = no echo) of shape ``(n_times, n_heights)``.

    ``times``: datetime64 / datetimes / seconds since 1970; ``heights_agl``: m
    above ground, increasing.  Deterministic in ``(seed, site, time, height)``.
    ``state`` may be passed when the caller already has ``state_at(site, times, seed)``.
    """
    site = resolve_site(site)
    t = to_epoch_seconds(times).ravel()
    heights = np.asarray(heights_agl, dtype=np.float64)
    if heights.ndim != 1 or np.any(np.diff(heights) <= 0):
        raise ValueError("heights_agl must be 1-D and strictly increasing")
    st = state if state is not None else state_at(site, t, seed)
    tex = _Textures(site, seed, float(t.min()), float(t.max()))
    # the environment (T, RH, wind profiles) on an absolute 60 s lattice, linearly interpolated
    k0 = int(np.floor(t.min() / ENV_STEP_S))
    env_t = (k0 + np.arange(int(np.ceil(t.max() / ENV_STEP_S)) - k0 + 2)) * ENV_STEP_S
    env = state_at(site, env_t, seed)
    pos = (t - env_t[0]) / ENV_STEP_S
    e0 = np.clip(np.floor(pos).astype(int), 0, env_t.size - 2)
    ew = pos - e0

    def fine(a: np.ndarray) -> np.ndarray:
        a = a[:, 0]
        return a[e0] * (1.0 - ew) + a[e0 + 1] * ew

    def wind_at(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, v = st.wind(z[:, None])
        return u[:, 0], v[:, 0]

    grid, index = _internal_grid(heights)
    out = np.full((t.size, grid.size), np.nan, dtype=np.float32)
    n = t.size

    # --- mid-level layer: ragged top, cells where the envelope is strong enough
    inten = st.layer_intensity
    has_layer = inten > 0
    top_eff = st.layer_top + 300.0 * tex("mid_top", t)
    z_gen = top_eff - 300.0
    mid = _Stream(n, *wind_at(z_gen), clim.SNOW_FALL_SPEED)
    dbz_gen_mean = -22.0 + 24.0 * inten
    mid_thr = 0.6 - 2.5 * inten

    # --- low mixed-phase layer: ice-supersaturated, cold boundary layer (generating at its top)
    t_bl = st.temperature((0.5 * st.bl_top)[:, None])[:, 0]
    supersat = st.rh_low - clim.LOW_CLOUD_RH_ICE
    has_low = (supersat > 0) & (t_bl < 273.15 + clim.LOW_CLOUD_MAX_T_C)
    low_top = np.clip(st.bl_top + 100.0 * tex("low_top", t), *clim.LOW_CLOUD_TOP_M)
    low = _Stream(n, *wind_at(low_top), clim.SNOW_FALL_SPEED)
    low_gen = -36.0 + 80.0 * np.clip(supersat, 0.0, 0.2)
    # liquid-topped Arctic layers are extensive and persistent [Sh11b]: mostly overcast once supersaturated
    low_thr = 0.2 - 20.0 * np.clip(supersat, 0.0, 0.2)
    low_started = np.zeros(n, dtype=bool)

    # --- cirrus
    has_ci = st.cirrus_intensity > 0
    zc_gen = st.cirrus_top - 150.0
    ci = _Stream(n, *wind_at(zc_gen), clim.CIRRUS_FALL_SPEED)

    # --- blowing snow near the surface
    u10, v10 = wind_at(np.full(n, 10.0))
    blowing = np.where(st.surface_temperature < 268.15, np.clip(np.hypot(u10, v10) - 8.0, 0.0, None), 0.0)
    blow_depth = np.minimum(60.0 + 40.0 * blowing, 350.0)

    tops = [top_eff[has_layer].max() if has_layer.any() else -1.0,
            st.cirrus_top[has_ci].max() if has_ci.any() else -1.0,
            low_top[has_low].max() if has_low.any() else -1.0, blow_depth.max()]
    z_max = max(tops) + 50.0
    for k in range(grid.size - 1, -1, -1):
        z = grid[k]
        if z > z_max:  # above every cloud: no echo, nothing to carry down
            continue
        dz = grid[k + 1] - z if k + 1 < grid.size else grid[1] - grid[0]
        zz = np.full((1, 1), z)
        rh = fine(env.relative_humidity(zz, env.temperature(zz)))
        u, v = env.wind(zz)
        u, v = fine(u), fine(v)
        z_lin = np.zeros(n)

        # mid-level layer: in cloud, or fall streaks below it; cells decided at the source time
        if z <= tops[0]:
            lag = mid.lag(z < z_gen, u, v, dz)
            src = t - lag
            cells = tex("mid_cells", src) > mid_thr
            in_cloud = has_layer & (z <= top_eff) & (z >= st.layer_base)
            frac = np.clip((top_eff - z) / np.maximum(top_eff - st.layer_base, 100.0), 0.0, 1.0)
            mid.mean = np.where(in_cloud, -32.0 + (dbz_gen_mean + 32.0) * frac ** 0.7, mid.mean)
            below = has_layer & (z < st.layer_base) & (mid.mean > GONE)
            mid.mean = _fall_through(mid.mean, below, rh, dz)
            alive = (in_cloud | below) & (mid.mean > GONE) & cells
            z_lin += np.where(alive, _to_lin(mid.mean + 5.0 * tex("mid_gen", src)), 0.0)

        # cirrus (nothing to do above the highest cirrus top)
        if z <= tops[1]:
            src = t - ci.lag(z < zc_gen, u, v, dz)
            in_ci = has_ci & (z <= st.cirrus_top) & (z >= st.cirrus_base)
            fr = np.clip((st.cirrus_top - z) / np.maximum(st.cirrus_top - st.cirrus_base, 100.0), 0.0, 1.0)
            ci.mean = np.where(in_ci, -34.0 + (12.0 * st.cirrus_intensity + 4.0) * fr, ci.mean)
            below_c = has_ci & (z < st.cirrus_base) & (ci.mean > GONE)
            ci.mean = _fall_through(ci.mean, below_c, rh, dz)
            alive_c = ((in_ci | below_c) & (ci.mean > GONE)
                       & (tex("ci_cells", src) > 0.9 - 1.5 * st.cirrus_intensity))
            if alive_c.any():
                z_lin += np.where(alive_c, _to_lin(ci.mean + 4.0 * tex("ci_gen", src)), 0.0)

        # low mixed-phase layer: generated at its top, grows (or sublimates) on the way down
        if z <= tops[2]:
            src = t - low.lag(z < low_top, u, v, dz)
            at_top = has_low & (z <= low_top) & ~low_started
            low_started |= at_top
            low.mean = np.where(at_top, low_gen, low.mean)
            falling = has_low & (z < low_top) & ~at_top & (low.mean > GONE)
            low.mean = _fall_through(low.mean, falling, rh, dz)
            alive_l = has_low & (z <= low_top) & (low.mean > GONE) & (tex("low_cells", src) > low_thr)
            z_lin += np.where(alive_l, _to_lin(low.mean + 4.0 * tex("low_gen", src)), 0.0)

        # blowing snow near the surface
        if z < tops[3]:
            on_b = (blowing > 0) & (z < blow_depth)
            dbz_b = -20.0 + 2.5 * blowing - 15.0 * z / blow_depth + 3.0 * tex("blowing", t)
            z_lin += np.where(on_b, _to_lin(dbz_b), 0.0)

        with np.errstate(divide="ignore"):
            dbz = 10.0 * np.log10(z_lin)
        out[:, k] = np.where(dbz >= NO_ECHO_DBZ, dbz, np.nan)

    if index is not None:
        return out[:, index]
    return _interp_columns(out, grid, heights)


def _interp_columns(values: np.ndarray, grid: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Linear interpolation in height of dBZ; NaN where either neighbour is NaN except at the exact node."""
    pos = np.clip(np.interp(heights, grid, np.arange(grid.size)), 0, grid.size - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, grid.size - 1)
    w = (pos - i0)[None, :]
    a, b = values[:, i0], values[:, i1]
    res = a * (1 - w) + b * w
    res = np.where(np.isnan(a) & (w < 0.5), np.nan, np.where(np.isnan(a), b, res))
    res = np.where(np.isnan(b) & (w >= 0.5), np.nan, np.where(np.isnan(b) & ~np.isnan(a), a, res))
    return res.astype(np.float32)


def along_track_curtain(site: str | Site, overpass_time: datetime | float, along_track_m: np.ndarray,
                        heights_agl: np.ndarray, seed: int, advection_m_s: float = 10.0) -> np.ndarray:
    """True reflectivity along a satellite track near ``site``: ``(n_profiles, n_heights)`` dBZ.

    A frozen-turbulence (Taylor) mapping turns the signed along-track distance
    from the point of closest approach into time: the profile at ``s`` metres
    is the site's column at ``overpass_time + s / advection_m_s``.
    """
    t0 = float(to_epoch_seconds(overpass_time).ravel()[0])
    times = t0 + np.asarray(along_track_m, dtype=np.float64) / advection_m_s
    return reflectivity_curtain(site, times, heights_agl, seed)
