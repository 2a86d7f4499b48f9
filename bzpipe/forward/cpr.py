"""KaZR -> CloudSat-CPR forward operator: what the CPR would have measured of a ground-radar curtain.

The steps follow the orbital-radar simulator ([OR]: Pfitzenmaier et al., doi:10.5194/gmd-2024-129;
method after Lamer et al. 2020 [L20] and Schirmacher et al. 2023 [S23]); facts and their sources
are in ``docs/cloudsat_cpr.md``.  Every step works on linear reflectivity Z (mm6 m-3), never on dBZ:

1. :func:`ka_to_w`: 35 GHz -> 94 GHz, ``Ze94 = Ze35 - 10**a (Ze35 + 100)**b`` dBZ (Kollias et al.
   2019, doi:10.5194/amt-12-4949-2019, as in [OR] ``convert_frequency``).  The fit holds below
   30 dBZ; [OR] drops larger values, bzpipe keeps them with the 30-dBZ correction (rare in Arctic
   snow; a documented deviation).
2. :func:`advected_distance` turns time into distance with the wind at each height (Taylor's
   frozen turbulence): ``x(t, z) = integral |V(t', z)| dt'``.  [OR] uses one mean wind (6 m s-1);
   bzpipe uses the ERA-5 wind at the echo's own height, so a sheared column is mapped per height.
3. :func:`along_track_average`: each CPR profile is the footprint-weighted mean over ``x``: the
   antenna pattern ``W_x(x) = exp(-2 ln2 (x / (IFOV/2))**2)`` (IFOV 1451 m, [OR]) averaged over the
   1100 m a profile integrates ([DPC-sensor]); a Gaussian of sigma ``IFOV / (4 sqrt(ln 2))`` = 436 m
   convolved with a 1100 m box.  128 output columns are 128 CPR profiles, 141 km of air.
4. :func:`range_weighting`: the Gaussian range-weighting function
   ``W_r(dr) = exp(-pi**2 dr**2 / (2 ln2 L**2))`` for ``|dr| <= L``, L = 480 m ([OR], [SJ19]),
   normalised, sampled every 240 m ([SJ19]).  The ground lies anywhere in its CPR bin, so the
   bins' phase relative to the ground is drawn per profile (uniform over one bin).
5. :func:`add_noise` and :func:`detect`: CPR-like noise (std 9.24 dB at -37 dBZ down to 0.28 dB at
   -4 dBZ, linear in dBZ between, constant beyond; [OR] after Hogan et al. 2005), then the
   sensitivity cut: a bin is echo only when its noisy reflectivity reaches the minimum detectable
   signal (-28 dBZ, the CPR design value; Im et al. 2005).  That is the CPR echo rule bzpipe applies
   to granules too (``cloud_mask >= 20``: a significant single-profile detection, Marchand et al.
   2008 [M08]); weaker bins are "no echo".

:func:`cpr_view` runs them all on a curtain on a height grid above ground and returns the CPR
profiles both on the CPR bins and regridded back onto that grid (linear-Z layer averaging, as
:func:`bzpipe.infer.curtain.to_model_grid` does with a granule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erf

from bzpipe.infer.regrid import dbz_to_linear, linear_to_dbz, regrid_dbz

#: Kollias et al. (2019) Ka -> W fit, as in [OR] ``convert_frequency``
KA_W_A, KA_W_B = -16.8251, 8.4923
#: upper end of that fit, dBZ
KA_W_MAX_DBZ = 30.0
#: (dBZ, std dB) of the CPR reflectivity noise ([OR] CloudSat preset, after Hogan et al. 2005)
NOISE_STD_TABLE = ((-37.0, 9.24), (-4.0, 0.28))


# --------------------------------------------------------------------------- single steps


def ka_to_w(dbz35: np.ndarray) -> np.ndarray:
    """35 GHz -> 94 GHz reflectivity (dBZ; NaN = no echo stays NaN). See module step 1."""
    d = np.asarray(dbz35, dtype=np.float64)
    capped = np.minimum(d, KA_W_MAX_DBZ)
    with np.errstate(invalid="ignore"):
        corr = 10.0 ** KA_W_A * np.clip(capped + 100.0, 0.0, None) ** KA_W_B
    return d - corr


def range_weights(offsets_m: np.ndarray, pulse_length_m: float = 480.0) -> np.ndarray:
    """The un-normalised Gaussian range-weighting function at ``offsets_m`` from the bin centre.

    ``exp(-pi**2 dr**2 / (2 ln2 L**2))`` for ``|dr| <= L``, 0 beyond ([OR] radarspec); it is 1/2 at
    ``dr = +-sqrt(2) ln2 L / pi`` (half-power full width 0.624 L = 300 m for L = 480 m).
    """
    dr = np.asarray(offsets_m, dtype=np.float64)
    w = np.exp(-(math.pi ** 2) * dr ** 2 / (2.0 * math.log(2.0) * pulse_length_m ** 2))
    return np.where(np.abs(dr) <= pulse_length_m, w, 0.0)


def range_weighting(z_lin: np.ndarray, row_edges: np.ndarray, bin_centres: np.ndarray, *,
                    valid: np.ndarray | None = None, pulse_length_m: float = 480.0) -> np.ndarray:
    """Linear Z on CPR bins from linear Z on height rows: the pulse-weighted mean.

    Args:
        z_lin: (P, H) linear Z on rows with edges ``row_edges`` (H+1,), m above ground.
        bin_centres: (P, B) or (B,) CPR bin centres, m above ground.
        valid: (P, H) rows that carry data (default: finite ``z_lin``).
        pulse_length_m: L of :func:`range_weights`.

    Returns:
        (P, B) ``sum_r W(h_r - c) dz_r Z_r / sum_r W(h_r - c) dz_r`` over the valid rows (each row
        weighted by the range-weighting function at its centre times its depth); NaN where no
        valid row lies within the pulse.
    """
    z = np.asarray(z_lin, dtype=np.float64)
    p, h = z.shape
    edges = np.asarray(row_edges, dtype=np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    dz = np.diff(edges)
    ok = np.isfinite(z) if valid is None else (np.asarray(valid, bool) & np.isfinite(z))
    c = np.broadcast_to(np.asarray(bin_centres, dtype=np.float64), (p, np.shape(bin_centres)[-1]))
    w = range_weights(centres[None, None, :] - c[:, :, None], pulse_length_m) * dz    # (P, B, H)
    w = w * ok[:, None, :]
    num = np.einsum("pbh,ph->pb", w, np.where(ok, z, 0.0))
    den = w.sum(axis=2)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def advected_distance(times: np.ndarray, speed_m_s: np.ndarray, t_ref: Any = None, *,
                      min_speed_m_s: float = 1.0) -> np.ndarray:
    """Along-wind distance (m) the air at each height has moved since ``t_ref``: (T, H) or (T,).

    ``times`` (T,) datetime64 or seconds, increasing; ``speed_m_s`` (T, H) or (T,) the wind speed
    (NaN where unknown: the nearest known speed of that height is used), floored at
    ``min_speed_m_s``.  Trapezoidal integration; ``x = 0`` at ``t_ref`` (default: the first time),
    negative before it.
    """
    t = _seconds(times)
    v = np.asarray(speed_m_s, dtype=np.float64)
    one_d = v.ndim == 1
    v = v[:, None] if one_d else v
    v = np.maximum(_fill_nearest(v), min_speed_m_s)
    if t.size == 0:
        return np.zeros(v.shape[0] if one_d else v.shape)
    steps = 0.5 * (v[1:] + v[:-1]) * np.diff(t)[:, None]
    x = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(steps, axis=0)])
    t0 = t[0] if t_ref is None else float(_seconds(np.atleast_1d(t_ref))[0])
    if t0 < t[0] or t0 > t[-1]:                          # t_ref outside the record: extrapolate
        edge = 0 if t0 < t[0] else -1
        x0 = x[edge] + v[edge] * (t0 - t[edge])
    else:
        x0 = np.array([np.interp(t0, t, x[:, k]) for k in range(x.shape[1])])
    x = x - x0[None, :]
    return x[:, 0] if one_d else x


def footprint_weight(dx_m: np.ndarray, spacing_m: float, sigma_m: float) -> np.ndarray:
    """Weight of air ``dx_m`` from a profile centre: a ``spacing_m`` box convolved with a Gaussian
    of ``sigma_m`` (1 at the centre of a long box), i.e.
    ``Phi((s/2 - dx)/sigma) - Phi((-s/2 - dx)/sigma)``."""
    d = np.asarray(dx_m, dtype=np.float64)
    k = 1.0 / (math.sqrt(2.0) * sigma_m)
    return 0.5 * (erf((0.5 * spacing_m - d) * k) - erf((-0.5 * spacing_m - d) * k))


def ifov_sigma(ifov_m: float) -> float:
    """Sigma of the Gaussian ``W_x = exp(-2 ln2 (x / (IFOV/2))**2)`` ([OR]): ``IFOV / (4 sqrt(ln 2))``."""
    return ifov_m / (4.0 * math.sqrt(math.log(2.0)))


def along_track_average(values: np.ndarray, x: np.ndarray, *, spacing_m: float, sigma_m: float,
                        valid: np.ndarray | None = None, n_profiles: int | None = None,
                        start_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Footprint-weighted means of ``values`` at profiles ``start_m + (k + 1/2) spacing_m``.

    Args:
        values: (T, H) samples (linear units), T times at H heights.
        x: (T, H) along-track position of each sample (:func:`advected_distance`), increasing in T.
        valid: (T, H) samples with data (default: finite values).
        n_profiles: profiles to make (default: enough to reach the largest ``x``).

    Each sample weighs its own along-track extent (half the distance to its neighbours) times
    :func:`footprint_weight` of its distance from the profile centre.

    Returns:
        ``(mean, coverage)`` both (K, H): the weighted mean over valid samples (NaN where none)
        and the fraction of the footprint's weight that had valid data (0-1).
    """
    v = np.asarray(values, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    t, h = v.shape
    ok = np.isfinite(v) if valid is None else (np.asarray(valid, bool) & np.isfinite(v))
    ext = np.empty_like(x)                                    # each sample's along-track extent
    if t > 1:
        d = np.abs(np.diff(x, axis=0))
        ext[1:-1] = 0.5 * (d[1:] + d[:-1])
        ext[0], ext[-1] = d[0], d[-1]
    else:
        ext[:] = spacing_m
    rel = (x - start_m) / spacing_m - 0.5
    k_max = int(np.floor(np.nanmax(rel))) + 1 if t else 0
    k_out = max(k_max, 0) if n_profiles is None else int(n_profiles)
    reach = int(math.ceil((0.5 * spacing_m + 4.0 * sigma_m) / spacing_m))
    base = np.rint(rel).astype(np.int64)
    col = np.broadcast_to(np.arange(h), (t, h))
    num = np.zeros(k_out * h)
    den = np.zeros(k_out * h)
    tot = np.zeros(k_out * h)
    for j in range(-reach, reach + 1):
        k = base + j
        inside = (k >= 0) & (k < k_out)
        if not inside.any():
            continue
        centre = start_m + (k + 0.5) * spacing_m
        w = footprint_weight(x - centre, spacing_m, sigma_m) * ext
        idx = (k * h + col)[inside]
        ww = w[inside]
        tot += np.bincount(idx, ww, minlength=k_out * h)
        wv = np.where(ok, w, 0.0)[inside]
        den += np.bincount(idx, wv, minlength=k_out * h)
        num += np.bincount(idx, wv * np.where(ok, v, 0.0)[inside], minlength=k_out * h)
    mean = np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)
    cov = np.divide(den, tot, out=np.zeros(den.shape), where=tot > 0)
    return mean.reshape(k_out, h), np.clip(cov, 0.0, 1.0).reshape(k_out, h)


def noise_std_db(dbz: np.ndarray, table: tuple[tuple[float, float], ...] = NOISE_STD_TABLE) -> np.ndarray:
    """Std (dB) of the CPR reflectivity estimate at ``dbz``: linear in dBZ between the table's points,
    constant beyond them."""
    xs, ys = zip(*table)
    return np.interp(np.asarray(dbz, dtype=np.float64), xs, ys)


def add_noise(dbz: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``dbz + std(dbz) * N(0, 1)`` (NaN stays NaN), the standard normal truncated at +-3."""
    d = np.asarray(dbz, dtype=np.float64)
    n = np.clip(rng.standard_normal(d.shape), -3.0, 3.0)
    return d + noise_std_db(d) * n


def detect(dbz: np.ndarray, mds_dbz: float = -28.0) -> np.ndarray:
    """The sensitivity cut: dBZ where ``dbz >= mds_dbz``, NaN (no echo) elsewhere."""
    d = np.asarray(dbz, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(d >= mds_dbz, d, np.nan)


# --------------------------------------------------------------------------- the whole operator


@dataclass
class CprView:
    """A curtain as the CPR would see it (K profiles).

    Attributes:
        dbz_bins: (K, B) dBZ on CPR bins (NaN = no echo or no data), bin 0 the lowest.
        bin_centres: (K, B) m above ground of those bins.
        dbz_grid: (K, H) the bins regridded onto the input rows (linear Z; NaN = no echo or unobserved).
        observed: (K, H) rows covered by bins with data.
        coverage: (K, H) fraction of each profile's footprint with radar data.
        x_centre: (K,) along-track position of each profile's centre, m.
        aux: the ``aux`` fields averaged along track, each (K, H) or (K,).
    """

    dbz_bins: np.ndarray
    bin_centres: np.ndarray
    dbz_grid: np.ndarray
    observed: np.ndarray
    coverage: np.ndarray
    x_centre: np.ndarray
    aux: dict[str, np.ndarray]


def cpr_view(dbz: np.ndarray, row_edges: np.ndarray, x: np.ndarray, *, rng: np.random.Generator,
             valid: np.ndarray | None = None, aux: dict[str, np.ndarray] | None = None,
             n_profiles: int | None = None, start_m: float = 0.0, pulse_length_m: float = 480.0,
             range_sampling_m: float = 240.0, profile_spacing_m: float = 1100.0, ifov_m: float = 1451.0,
             mds_dbz: float = -28.0, noise: bool = True, ka_to_w_conversion: bool = True,
             min_coverage: float = 0.5, reference_row: int = 0) -> CprView:
    """Steps 1-5 of the module docstring on a curtain ``dbz`` (T, H) dBZ (NaN = no echo) on rows with
    edges ``row_edges`` (H+1,) m above ground, at along-track positions ``x`` (T, H).

    ``valid`` (T, H) marks samples with data (default all): invalid samples (radar gaps, rows below
    the first gate) carry no weight.  A profile-row whose footprint is covered less than
    ``min_coverage`` is "no data" (NaN, not observed).  ``aux`` fields (T, H) or (T,) (e.g. ERA-5
    t, q, u, v; the surface temperature) are averaged along track with the same footprint (a 1-D
    field with the positions of ``reference_row``).  ``rng`` draws the bin phase and the noise.
    """
    d = np.asarray(dbz, dtype=np.float64)
    t, h = d.shape
    ok = np.ones(d.shape, bool) if valid is None else np.asarray(valid, bool)
    if ka_to_w_conversion:
        d = ka_to_w(d)
    sigma = ifov_sigma(ifov_m)
    z_at, cov = along_track_average(dbz_to_linear(d), x, spacing_m=profile_spacing_m, sigma_m=sigma,
                                    valid=ok, n_profiles=n_profiles, start_m=start_m)
    k = z_at.shape[0]
    seen = cov >= min_coverage
    edges = np.asarray(row_edges, dtype=np.float64)
    n_bins = int(math.ceil(edges[-1] / range_sampling_m)) + 2
    phase = rng.uniform(-0.5, 0.5, k) * range_sampling_m                 # ground within its bin
    centres = phase[:, None] + range_sampling_m * np.arange(n_bins)[None, :]
    z_bins = range_weighting(np.where(seen, z_at, np.nan), edges, centres, valid=seen,
                             pulse_length_m=pulse_length_m)
    dbz_bins = linear_to_dbz(z_bins, floor_dbz=-200.0)
    if noise:
        dbz_bins = add_noise(dbz_bins, rng)
    dbz_bins = detect(dbz_bins, mds_dbz)
    has = np.isfinite(z_bins)
    bin_edges = np.concatenate([centres - 0.5 * range_sampling_m,
                                centres[:, -1:] + 0.5 * range_sampling_m], axis=1)
    bin_edges = np.maximum(bin_edges, 0.0)                                   # rows start at the ground
    grid, observed = regrid_dbz(dbz_bins, bin_edges, edges, valid=has)
    out_aux: dict[str, np.ndarray] = {}
    for name, a in (aux or {}).items():
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 1:
            m, _ = along_track_average(a[:, None], x[:, reference_row:reference_row + 1],
                                       spacing_m=profile_spacing_m, sigma_m=sigma, n_profiles=k,
                                       start_m=start_m)
            out_aux[name] = m[:, 0]
        else:
            out_aux[name], _ = along_track_average(a, x, spacing_m=profile_spacing_m, sigma_m=sigma,
                                                   n_profiles=k, start_m=start_m)
    return CprView(dbz_bins=dbz_bins.astype(np.float32), bin_centres=centres, dbz_grid=grid,
                   observed=observed & seen, coverage=cov, aux=out_aux,
                   x_centre=start_m + (np.arange(k) + 0.5) * profile_spacing_m)


# --------------------------------------------------------------------------- helpers


def _seconds(times: np.ndarray) -> np.ndarray:
    a = np.asarray(times)
    if np.issubdtype(a.dtype, np.datetime64):
        return a.astype("datetime64[ns]").astype(np.int64) / 1e9
    return a.astype(np.float64)


def _fill_nearest(v: np.ndarray) -> np.ndarray:
    """NaNs of each column replaced by the nearest finite value in time (all-NaN columns -> NaN)."""
    out = v.copy()
    idx = np.arange(v.shape[0])
    for j in range(v.shape[1]):
        ok = np.isfinite(v[:, j])
        if ok.all() or not ok.any():
            continue
        src = idx[ok]
        pos = np.clip(np.searchsorted(src, idx), 1, src.size - 1) if src.size > 1 else np.zeros_like(idx)
        if src.size > 1:
            pos = np.where(np.abs(idx - src[pos - 1]) <= np.abs(src[pos] - idx), pos - 1, pos)
        out[:, j] = v[src[pos], j]
    return out
