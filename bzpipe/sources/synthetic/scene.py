"""Radar reflectivity curtains driven by the hidden atmosphere (:mod:`.atmosphere`).

The curtain is the "true" equivalent reflectivity (dBZ, NaN = no hydrometeors)
before any instrument effect; the KaZR and CloudSat writers add their own
sensitivity, speckle, clutter and quality problems.

Physics, evaluated top-down one height at a time (vectorized over time):

* a mid-level snow-generating layer (cellular texture, undulating top) whose
  reflectivity grows from about -32 dBZ at the top to its generating value at
  the base;
* fall streaks below the layer base: particles fall at ~1 m s-1 and drift with
  the wind *relative to the generating level*, so the texture seen at height
  ``z`` and time ``t`` is that of the cell that passed at ``t - drift/U`` (the
  streaks slant with the wind shear);
* sublimation below ice saturation (``rate ~ (1 - RH)``, faster for weaker
  echoes) so echoes fade out with decreasing height (virga) where the air is
  dry, and slow growth where it is supersaturated;
* thin cirrus with short fall streaks;
* shallow snow forming inside a moist (``rh_low`` above ~1.02) and cold
  (below about -2 degC) boundary layer: echo only below the boundary-layer top
  (< 1.15 km);
* blowing snow in the lowest few hundred metres when the 10 m wind exceeds
  8 m s-1 on a cold day.

The last three plus the sublimation of fall streaks make the lowest 1.2 km a
function of the low-level humidity, temperature and wind that ERA-5 reports.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from bzpipe.config import Site, resolve_site
from bzpipe.sources.synthetic.atmosphere import AtmosphereState, state_at, to_epoch_seconds
from bzpipe.sources.synthetic.noise import gridded_noise, make_key

WEATHER_TOP_M = 10000.0  #: no hydrometeors above this height
NO_ECHO_DBZ = -60.0  #: weaker (true) reflectivities are reported as no echo (NaN)
K_SUBLIMATION = 170.0  #: dB km-1 per unit ice-saturation deficit (at -10 dBZ)
K_GROWTH = 60.0  #: dB km-1 per unit ice supersaturation
SNOW_FALL_SPEED = 1.0  #: m s-1
CIRRUS_FALL_SPEED = 0.6  #: m s-1
MAX_LAG_S = 3.0 * 3600.0  #: longest fall-streak lag
ENV_STEP_S = 60.0  #: profiles of T, RH and wind are computed on this absolute time lattice and interpolated


class _Textures:
    """Smooth random textures of absolute time, tabulated once and interpolated."""

    SPECS = {"gen": (240.0, 0.8), "gen_fine": (60.0, 0.6), "top": (600.0, 1.0), "cirrus": (300.0, 1.0),
             "shallow": (180.0, 1.0), "shallow_top": (900.0, 1.0), "blowing": (60.0, 1.0)}

    def __init__(self, site: Site, seed: int, t0: float, t1: float, step_s: float = 10.0) -> None:
        self.tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, (lattice, _) in self.SPECS.items():
            self.tables[name] = gridded_noise(make_key(seed, site.name, "texture", name),
                                              t0 - MAX_LAG_S - 60.0, t1 + 60.0, step_s, lattice)

    def __call__(self, name: str, t: np.ndarray) -> np.ndarray:
        grid, values = self.tables[name]
        return np.interp(t, grid, values)

    def generating(self, t: np.ndarray) -> np.ndarray:
        a = self("gen", t) * self.SPECS["gen"][1] + self("gen_fine", t) * self.SPECS["gen_fine"][1]
        return a / np.hypot(self.SPECS["gen"][1], self.SPECS["gen_fine"][1])


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



def _fall_through(dbz: np.ndarray, falling: np.ndarray, rh: np.ndarray, dz: float) -> np.ndarray:
    """Falling snow's reflectivity one layer (``dz`` m) lower: it sublimates in sub-saturated air
    (faster for weak echoes), grows in supersaturated air; below -55 dBZ it is gone (-99)."""
    rate = np.where(rh < 1.0,                                  # dB per km
                    K_SUBLIMATION * (1.0 - rh) * (1.0 + np.clip((-10.0 - dbz) / 10.0, 0.0, 4.0)),
                    -K_GROWTH * (rh - 1.0))
    out = np.where(falling, dbz - rate * dz / 1000.0, dbz)
    return np.where(out < -55.0, -99.0, out)

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

    grid, index = _internal_grid(heights)
    out = np.full((t.size, grid.size), np.nan, dtype=np.float32)

    n = t.size
    # generating level and its wind
    top_eff = st.layer_top + 250.0 * tex("top", t)
    z_gen = top_eff - 300.0
    ug, vg = st.wind(z_gen[:, None])
    ug, vg = ug[:, 0], vg[:, 0]
    speed_g = np.maximum(np.hypot(ug, vg), 3.0)
    ex, ey = ug / speed_g, vg / speed_g
    zc_gen = st.cirrus_top - 150.0
    uc, vc = st.wind(zc_gen[:, None])
    uc, vc = uc[:, 0], vc[:, 0]
    speed_c = np.maximum(np.hypot(uc, vc), 3.0)
    cx, cy = uc / speed_c, vc / speed_c

    dbz_gen_mean = -20.0 + 28.0 * st.layer_intensity
    has_layer = st.layer_intensity > 0
    has_cirrus = st.cirrus_intensity > 0
    fall = np.full(n, -99.0)  # mean fall-streak dBZ (no texture), -99 = none
    fall_c = np.full(n, -99.0)
    drift = np.zeros(n)  # m, relative to the generating level
    drift_c = np.zeros(n)

    # boundary layer: shallow snow and blowing snow drivers (per time)
    t_bl = st.temperature((0.5 * st.bl_top)[:, None])[:, 0]
    moist = np.clip((st.rh_low - 1.02) / 0.08, 0.0, 1.0)
    cold = np.clip((271.15 - t_bl) / 4.0, 0.0, 1.0)
    shallow = moist * cold
    top_sh = st.bl_top * (0.85 + 0.08 * tex("shallow_top", t))
    u10, v10 = st.wind(np.array([10.0]))
    wind10 = np.hypot(u10[:, 0], v10[:, 0])
    blowing = np.where(st.surface_temperature < 268.15, np.clip(wind10 - 8.0, 0.0, None), 0.0)
    blow_depth = np.minimum(60.0 + 40.0 * blowing, 350.0)

    tops = [top_eff[has_layer].max() if has_layer.any() else -1.0,
            st.cirrus_top[has_cirrus].max() if has_cirrus.any() else -1.0, 1200.0]
    z_max = max(tops) + 50.0
    for k in range(grid.size - 1, -1, -1):
        z = grid[k]
        if z > z_max:  # above every cloud: no echo, nothing to carry down
            continue
        dz = grid[k + 1] - z if k + 1 < grid.size else grid[1] - grid[0]
        zz = np.full((1, 1), z)
        tk = env.temperature(zz)
        rh = fine(env.relative_humidity(zz, tk))
        u, v = env.wind(zz)
        u, v = fine(u), fine(v)
        z_lin = np.zeros(n)

        # --- mid-level layer: in cloud, or fall streak below it
        in_cloud = has_layer & (z <= top_eff) & (z >= st.layer_base)
        below_gen = z < z_gen
        drift = np.where(below_gen, drift + ((ug - u) * ex + (vg - v) * ey) * dz / SNOW_FALL_SPEED, 0.0)
        lag = np.clip(np.abs(drift) / speed_g, 0.0, MAX_LAG_S)
        texture = 5.0 * tex.generating(t - lag)
        frac = np.clip((top_eff - z) / np.maximum(top_eff - st.layer_base, 100.0), 0.0, 1.0)
        dbz_cloud = -32.0 + (dbz_gen_mean + 32.0) * frac ** 0.7
        fall = np.where(in_cloud, dbz_cloud, fall)
        below = has_layer & (z < st.layer_base) & (fall > -90.0)
        fall = _fall_through(fall, below, rh, dz)
        alive = (in_cloud | below) & (fall > -90.0)
        z_lin += np.where(alive, _to_lin(fall + texture), 0.0)

        # --- cirrus (nothing to do above the highest cirrus top)
        if z <= tops[1]:
            in_ci = has_cirrus & (z <= st.cirrus_top) & (z >= st.cirrus_base)
            step_c = ((uc - u) * cx + (vc - v) * cy) * dz / CIRRUS_FALL_SPEED
            drift_c = np.where(z < zc_gen, drift_c + step_c, 0.0)
            lag_c = np.clip(np.abs(drift_c) / speed_c, 0.0, MAX_LAG_S)
            fr = np.clip((st.cirrus_top - z) / np.maximum(st.cirrus_top - st.cirrus_base, 100.0), 0.0, 1.0)
            fall_c = np.where(in_ci, -34.0 + (12.0 * st.cirrus_intensity + 4.0) * fr, fall_c)
            below_c = has_cirrus & (z < st.cirrus_base) & (fall_c > -90.0)
            fall_c = _fall_through(fall_c, below_c, rh, dz)
            alive_c = (in_ci | below_c) & (fall_c > -90.0)
            if alive_c.any():
                z_lin += np.where(alive_c, _to_lin(fall_c + 4.0 * tex("cirrus", t - lag_c)), 0.0)

        # --- shallow boundary-layer snow (only below the boundary-layer top)
        if z < 1200.0:
            depth = np.clip(top_sh - z, 0.0, None)
            lag_sh = np.clip(depth * 0.6 / np.maximum(np.hypot(st.u_low, st.v_low), 3.0), 0.0, MAX_LAG_S)
            dbz_sh = (-34.0 + 26.0 * shallow + 5.0 * tex("shallow", t - lag_sh)
                      - 14.0 * (1.0 - np.clip(depth / 200.0, 0.0, 1.0)))
            on = (shallow > 0.02) & (z < top_sh)
            z_lin += np.where(on, _to_lin(dbz_sh), 0.0)
            # blowing snow near the surface
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
