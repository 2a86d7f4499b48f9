"""The hidden "true" atmosphere above a site, and ERA-5's imperfect view of it.

Every quantity is built from :func:`~bzpipe.sources.synthetic.noise.smooth_noise`
processes keyed by ``(seed, site, variable)`` on lattices of absolute time, so
the state at a given instant never depends on which file asked for it.  The
numbers and their sources are in :mod:`.climatology` (the one place they live).

Climate (Arctic winter / spring, surface roughly -30..+5 degC): a seasonal mean
plus a warm-air-intrusion wave of period ~4 days (so any few-day span has
periods above and below -2 degC), synoptic and mesoscale noise and a weak
diurnal cycle.  The column has a surface-based inversion, a boundary layer
(top 0.35-2.4 km) with relative humidity ``rh_low`` (w.r.t. ice) that decides
whether a low mixed-phase snow layer forms (supersaturated) or falling snow
sublimates (dry), a subcloud layer ``rh_sub`` between the boundary layer and a
mid-level cloud base, a drier free troposphere, and two cloud layers (a
snow-generating mid-level layer and cirrus) that are saturated where they are.

Two views of the same state (:func:`state_at` ``view=``):

``"truth"``  what the radar scene is made from (:mod:`.scene`) and what the
             surface met station measures;
``"era5"``   what the synthetic ERA-5 files carry (:mod:`.era5_files`): the slow
             (synoptic) part only - the mesoscale components of a 2-hour lattice
             are absent, as in an hourly 31-km reanalysis -, the surface inversion
             weaker than it is ([HI]: reanalyses underestimate inversion strength),
             and smooth errors in boundary-layer and subcloud humidity, boundary-
             layer depth, temperature and wind (:mod:`.climatology` ``ERA5_*``).
             The radar never sees this view; a model can only learn from ERA-5
             what this view carries.

Heights ``z`` are metres above ground level (AGL) at the site; negative
heights are below ground (ERA-5 extrapolates pressure levels there).
Temperatures are K, pressures hPa, humidity relative to ice below 0 degC and
to liquid water above (as in the IFS), winds m s-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from bzpipe.config import Site, resolve_site
from bzpipe.schema import G0
from bzpipe.sources.synthetic import climatology as clim
from bzpipe.sources.synthetic.noise import make_key, smooth_noise
from bzpipe.thermo import saturation_vapour_pressure, saturation_vapour_pressure_water, specific_humidity

R_D = 287.05  # J kg-1 K-1
LAPSE = 6.0e-3  # K m-1, free-tropospheric lapse rate
LAPSE_BELOW_GROUND = 6.5e-3  # K m-1, ERA-5-style extrapolation below the surface
T_TROPOPAUSE = 213.0  # K
HOUR = 3600.0
DAY = 86400.0


def to_epoch_seconds(times: np.ndarray | list[datetime] | datetime) -> np.ndarray:
    """datetime64 / datetime (naive = UTC) / float seconds -> float64 seconds since 1970."""
    if isinstance(times, datetime):
        times = [times]
    arr = np.asarray(times)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype(np.int64) / 1e9
    if arr.dtype == object:
        stamps = [(t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() for t in arr.ravel()]
        return np.array(stamps, dtype=np.float64).reshape(arr.shape)
    return arr.astype(np.float64)


def water_over_ice(t_k: np.ndarray) -> np.ndarray:
    """e_s(water) / e_s(reference): the relative humidity of water saturation (>= 1 below 0 degC)."""
    return saturation_vapour_pressure_water(t_k) / saturation_vapour_pressure(t_k)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class AtmosphereState:
    """Per-time parameters of the column above a site; every array has shape ``(n,)``.

    Profile methods take heights ``z`` (m AGL) of shape ``(m,)`` (same for every
    time) or ``(n, m)`` and return ``(n, m)`` arrays.
    """

    site: Site
    t_s: np.ndarray  #: s since 1970
    surface_temperature: np.ndarray  #: K (2 m)
    surface_pressure: np.ndarray  #: hPa at the radar
    inversion_strength: np.ndarray  #: K
    inversion_depth: np.ndarray  #: m
    bl_top: np.ndarray  #: m, top of the boundary layer (0.35-2.4 km)
    rh_low: np.ndarray  #: boundary-layer relative humidity (w.r.t. ice below 0 degC)
    rh_sub: np.ndarray  #: subcloud-layer relative humidity (above the boundary layer, below 3 km)
    rh_free: np.ndarray  #: free-tropospheric relative humidity near 3 km
    u_low: np.ndarray  #: m s-1 at 200 m
    v_low: np.ndarray
    u_up: np.ndarray  #: m s-1 at 9 km
    v_up: np.ndarray
    layer_intensity: np.ndarray  #: 0..1, 0 = no mid-level cloud
    layer_base: np.ndarray  #: m
    layer_top: np.ndarray  #: m
    cirrus_intensity: np.ndarray  #: 0..1, 0 = no cirrus
    cirrus_base: np.ndarray  #: m
    cirrus_top: np.ndarray  #: m

    def __len__(self) -> int:
        return int(self.t_s.shape[0])

    # ---------------------------------------------------------------- profiles

    @staticmethod
    def _z2(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        return z[None, :] if z.ndim == 1 else z

    def temperature(self, z: np.ndarray) -> np.ndarray:
        """K at heights ``z`` (m AGL): surface value + inversion - lapse, floored at the tropopause."""
        z = self._z2(z)
        ts = self.surface_temperature[:, None]
        x = np.clip(z / self.inversion_depth[:, None], 0.0, 1.0)
        above = ts + self.inversion_strength[:, None] * x * (2.0 - x) - LAPSE * z
        below = ts - LAPSE_BELOW_GROUND * z
        return np.maximum(np.where(z >= 0, above, below), T_TROPOPAUSE)

    def relative_humidity(self, z: np.ndarray, t_k: np.ndarray | None = None) -> np.ndarray:
        """Relative humidity (fraction; w.r.t. ice below 0 degC) at heights ``z`` (m AGL).

        ``rh_low`` in the boundary layer (below ``bl_top``), ``rh_sub`` above it up
        to about 3 km (or the mid-level cloud base), the free troposphere above that
        (drying upwards); saturated inside the cloud layers; capped at water saturation.
        """
        z = self._z2(z)
        if t_k is None:
            t_k = self.temperature(z)
        bl = self.bl_top[:, None]
        sub_top = np.where(self.layer_intensity > 0, np.minimum(self.layer_base, 3000.0), 3000.0)[:, None]
        sub_top = np.maximum(sub_top, bl + 200.0)
        rh_ft = self.rh_free[:, None] * (1.0 - 0.3 * np.clip((z - 3000.0) / 6000.0, 0.0, 1.0))
        w_bl = _smoothstep((z - bl + 75.0) / 150.0)            # 0 inside the boundary layer, 1 above
        w_sub = _smoothstep((z - sub_top + 150.0) / 300.0)     # 0 in the subcloud layer, 1 above it
        rh = ((1.0 - w_bl) * self.rh_low[:, None]
              + w_bl * ((1.0 - w_sub) * self.rh_sub[:, None] + w_sub * rh_ft))
        for inten, base, top, sat in ((self.layer_intensity, self.layer_base, self.layer_top, 1.04),
                                      (self.cirrus_intensity, self.cirrus_base, self.cirrus_top, 1.02)):
            on = (inten > 0)[:, None]
            b, t = base[:, None], top[:, None]
            inside = _smoothstep((z - b + 100.0) / 200.0) * (1.0 - _smoothstep((z - t + 100.0) / 200.0))
            layered = rh + (sat + 0.05 * inten[:, None] - rh) * inside
            rh = np.where(on, np.maximum(layered, rh), rh)
        return np.clip(np.minimum(rh, water_over_ice(t_k)), 0.02, None)

    def wind(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) m s-1 at heights ``z``: log layer below 200 m, linear shear to 9 km, constant above."""
        z = self._z2(z)
        z0 = 1e-3
        f_sfc = np.log(np.clip(z, 2.0, 200.0) / z0) / np.log(200.0 / z0)
        s = np.clip((z - 200.0) / 8800.0, 0.0, 1.0)
        out = []
        for lo, up in ((self.u_low, self.u_up), (self.v_low, self.v_up)):
            lo, up = lo[:, None], up[:, None]
            out.append(np.where(z < 200.0, lo * f_sfc, lo + (up - lo) * s))
        return out[0], out[1]

    # ------------------------------------------------------------ hydrostatics

    def _log_pressure_grid(self, bottom_m: float, top_m: float) -> tuple[np.ndarray, np.ndarray]:
        """(grid (g,), ln p (n, g)) on a 50 m grid through 0 m, from the hydrostatic equation
        with virtual temperature, integrated from the surface pressure."""
        grid = np.union1d(np.arange(np.floor(min(bottom_m, 0.0) / 50.0) * 50.0, max(top_m, 0.0) + 50.0, 50.0),
                          [0.0])
        t = self.temperature(grid)
        ps = self.surface_pressure[:, None]
        p_guess = ps * np.exp(-G0 * grid[None, :] / (R_D * 250.0))
        q = specific_humidity(self.relative_humidity(grid, t), t, p_guess)
        g_over_rtv = G0 / (R_D * t * (1.0 + 0.608 * q))
        steps = 0.5 * (g_over_rtv[:, 1:] + g_over_rtv[:, :-1]) * np.diff(grid)[None, :]
        cum = np.concatenate([np.zeros((len(self), 1)), np.cumsum(steps, axis=1)], axis=1)
        i0 = int(np.searchsorted(grid, 0.0))
        return grid, np.log(ps) - (cum - cum[:, i0:i0 + 1])

    def pressure(self, z: np.ndarray) -> np.ndarray:
        """HPa at heights ``z`` (``(m,)`` m AGL), hydrostatic (see :meth:`_log_pressure_grid`)."""
        z = np.asarray(z, dtype=np.float64)
        grid, lnp = self._log_pressure_grid(float(z.min()), float(z.max()))
        out = np.empty((len(self), z.size))
        for k in range(len(self)):
            out[k] = np.interp(z, grid, lnp[k])
        return np.exp(out)

    def on_pressure_levels(self, levels_hpa: np.ndarray) -> dict[str, np.ndarray]:
        """ERA-5-like fields ``t`` K, ``q`` kg kg-1, ``u``, ``v`` m s-1, ``z`` m2 s-2 (geopotential
        above mean sea level) and ``height`` (m AGL), each ``(n, n_levels)``.

        Levels below the ground (pressure above the surface pressure) are
        extrapolated downwards, as ERA-5 does.
        """
        levels = np.asarray(levels_hpa, dtype=np.float64)
        grid, lnp = self._log_pressure_grid(-2000.0, 16000.0)
        target = np.log(levels)
        # ln p decreases along the grid: count the grid points below each level
        above = (lnp[:, :, None] > target[None, None, :]).sum(axis=1)  # (n, K)
        i0 = np.clip(above - 1, 0, grid.size - 2)
        rows = np.arange(len(self))[:, None]
        l0, l1 = lnp[rows, i0], lnp[rows, i0 + 1]
        w = (l0 - target[None, :]) / (l0 - l1)
        heights = grid[i0] + w * (grid[i0 + 1] - grid[i0])
        t = self.temperature(heights)
        rh = self.relative_humidity(heights, t)
        q = specific_humidity(rh, t, np.broadcast_to(levels, heights.shape))
        u, v = self.wind(heights)
        return {"t": t, "q": q, "u": u, "v": v, "z": G0 * (heights + self.site.elevation_m),
                "height": heights}


# ----------------------------------------------------------------- the state


def _seasonal_mean_c(t_s: np.ndarray) -> np.ndarray:
    """degC: -24 in mid-January rising to about +4 in mid-July (Barrow: February normal -25.7 [ACRC])."""
    doy = (t_s / DAY) % 365.2425
    return -24.0 + 28.0 * 0.5 * (1.0 - np.cos(2.0 * np.pi * (doy - 15.0) / 365.2425))


View = Literal["truth", "era5"]


def state_at(site: str | Site, times: np.ndarray | list[datetime] | datetime, seed: int,
             view: View = "truth") -> AtmosphereState:
    """The atmosphere above ``site`` at ``times`` (datetime64, datetimes or s since 1970).

    ``view="truth"`` is the hidden state the radar scene is made of; ``view="era5"``
    is what the synthetic reanalysis carries (see the module docstring): no
    mesoscale components, a weaker surface inversion, and smooth errors.
    """
    if view not in ("truth", "era5"):
        raise ValueError(f"view must be 'truth' or 'era5', not {view!r}")
    site = resolve_site(site)
    t = to_epoch_seconds(times).ravel()
    era5 = view == "era5"

    def n(name: str, lattice_h: float) -> np.ndarray:
        return smooth_noise(make_key(seed, site.name, name), t, lattice_h * HOUR)

    def fast(name: str, lattice_h: float) -> np.ndarray:
        """A mesoscale component: in the truth, absent from ERA-5."""
        return np.zeros_like(t) if era5 else n(name, lattice_h)

    def err(name: str, sd: float) -> np.ndarray:
        """A smooth ERA-5 error (0 in the truth)."""
        return sd * n(f"era5_error_{name}", clim.ERA5_ERROR_TIME_S / HOUR) if era5 else np.zeros_like(t)

    def const(name: str) -> float:
        """A standard-normal constant of the site (does not vary with time)."""
        return float(smooth_noise(make_key(seed, site.name, name), np.zeros(1), 1.0)[0])

    # surface temperature: seasonal mean + ~4-day warm-air wave + synoptic/mesoscale noise + diurnal
    period = (4.0 + 0.5 * np.tanh(const("wave_period"))) * DAY
    phase = 2.0 * np.pi * (0.5 + 0.5 * np.tanh(const("wave_phase")))
    wave = 8.0 * np.sin(2.0 * np.pi * t / period + phase)
    doy = (t / DAY) % 365.2425
    diurnal_amp = 0.4 + 2.6 * _smoothstep((doy - 40.0) / 100.0)
    local_hour = (t / HOUR + site.longitude / 15.0) % 24.0
    diurnal = diurnal_amp * np.cos(2.0 * np.pi * (local_hour - 14.0) / 24.0)
    ts_c = _seasonal_mean_c(t) + wave + 3.5 * n("t_syn", 30.0) + 1.2 * n("t_meso", 6.0) + diurnal
    ts_c = np.clip(ts_c + err("t", clim.ERA5_T_ERROR_SD), -45.0, 8.0)

    ps = 1012.0 - site.elevation_m / 8.3 + 8.0 * n("ps", 36.0)
    inv = np.clip(3.0 + 0.35 * (-8.0 - ts_c) + 2.0 * n("inv_strength", 12.0), 0.0, 14.0)
    if era5:
        inv = inv * clim.ERA5_INVERSION_FACTOR
    inv_depth = np.clip(450.0 + 180.0 * n("inv_depth", 10.0), 150.0, 1000.0)
    bl_top = np.clip(1100.0 + 450.0 * n("bl_top", 10.0) + 120.0 * fast("bl_top_fast", 2.0)
                     + err("bl_top", clim.ERA5_BL_TOP_ERROR_SD), 350.0, 2400.0)
    rh_low = np.clip(clim.RH_LOW_MEAN
                     + clim.RH_LOW_SD * (0.93 * n("rh_low", 8.0) + 0.37 * fast("rh_low_fast", 2.0))
                     + err("rh_low", clim.ERA5_RH_ERROR_SD), 0.55, 1.2)
    rh_sub = np.clip(clim.RH_SUB_MEAN + clim.RH_SUB_SD * n("rh_sub", 10.0)
                     + err("rh_sub", clim.ERA5_RH_ERROR_SD), 0.5, 1.05)
    rh_free = np.clip(0.8 + 0.12 * n("rh_free", 7.0), 0.35, 0.98)

    wind_err = clim.ERA5_WIND_ERROR_SD
    u_low = 1.5 + 5.5 * n("u_low", 10.0) + err("u_low", wind_err)
    v_low = 0.5 + 5.0 * n("v_low", 10.0) + err("v_low", wind_err)
    u_up = 14.0 + 8.0 * n("u_up", 20.0) + err("u_up", wind_err)
    v_up = 2.0 + 7.0 * n("v_up", 20.0) + err("v_up", wind_err)

    # mid-level layer: an envelope present ~MID_LAYER_OCCURRENCE of the time (cellular edges: .scene)
    a1 = 0.8 * n("layer", 9.0) + 0.3 * fast("layer_fast", 2.0) + 0.12
    layer_int = np.clip(a1 / 1.1, 0.0, 1.0)
    layer_top = 3000.0 + 2000.0 * _sigmoid(1.5 * n("layer_top", 12.0)) + 1500.0 * layer_int
    thick = ((0.35 + 0.65 * np.clip(3.0 * layer_int, 0.0, 1.0))
             * (1200.0 + 2200.0 * _sigmoid(n("layer_thick", 8.0))))
    layer_base = np.maximum(layer_top - thick, np.maximum(bl_top + 150.0, 1250.0))

    a2 = n("cirrus", 5.0)
    cirrus_int = np.clip((a2 - 0.7) / 1.0, 0.0, 1.0)
    cirrus_base = 6800.0 + 900.0 * np.tanh(n("cirrus_base", 10.0))
    cirrus_top = cirrus_base + 400.0 + 1300.0 * cirrus_int

    return AtmosphereState(
        site=site, t_s=t, surface_temperature=ts_c + 273.15, surface_pressure=ps,
        inversion_strength=inv, inversion_depth=inv_depth, bl_top=bl_top, rh_low=rh_low, rh_sub=rh_sub,
        rh_free=rh_free, u_low=u_low, v_low=v_low, u_up=u_up, v_up=v_up,
        layer_intensity=layer_int, layer_base=layer_base, layer_top=layer_top,
        cirrus_intensity=cirrus_int, cirrus_base=cirrus_base, cirrus_top=cirrus_top)
