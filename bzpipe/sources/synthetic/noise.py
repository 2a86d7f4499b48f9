"""Counter-based random numbers: the same (key, index) always gives the same number.

The synthetic atmosphere must be a deterministic function of ``(seed, site,
absolute time)``: a KaZR day, a met day and an ERA-5 month written separately
have to agree wherever they overlap.  A sequential generator cannot give that
(its output depends on where it started), so every random number here is a
hash of its key and an integer index (splitmix64, vectorized in numpy).

:func:`smooth_noise` turns the hashed values on a regular lattice of absolute
time (``index = floor(t / lattice_s)``) into a smooth (C2, cubic B-spline)
process of unit variance.
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)


def make_key(*parts: int | str) -> np.uint64:
    """A 64-bit key from integers and strings (strings hashed with CRC-32, stable across runs)."""
    k = np.zeros(1, dtype=np.uint64)
    for p in parts:
        v = zlib.crc32(p.encode()) if isinstance(p, str) else int(p)
        k = _mix(k ^ np.array([v & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return np.uint64(k[0])


def hash_uniform(key: np.uint64, index: np.ndarray, stream: int = 0) -> np.ndarray:
    """Uniform numbers in [0, 1) for integer ``index`` (any shape, int64) under ``key``."""
    idx = np.asarray(index, dtype=np.int64).view(np.uint64)
    k = _mix(np.array([key ^ np.uint64(stream)], dtype=np.uint64))[0]
    z = _mix(idx ^ k)
    return (z >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def hash_normal(key: np.uint64, index: np.ndarray, stream: int = 0) -> np.ndarray:
    """Standard normal numbers for integer ``index`` under ``key`` (Box-Muller)."""
    u1 = hash_uniform(key, index, 2 * stream + 1)
    u2 = hash_uniform(key, index, 2 * stream + 2)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def smooth_noise(key: np.uint64, t_s: np.ndarray, lattice_s: float) -> np.ndarray:
    """Smooth, unit-variance random process at times ``t_s`` (s since 1970, any shape).

    Normal values sit on lattice nodes ``k * lattice_s`` of absolute time and are
    blended with cubic B-spline weights (renormalized so the variance is 1
    everywhere); the correlation time is about ``lattice_s``.
    """
    x = np.asarray(t_s, dtype=np.float64) / lattice_s
    i = np.floor(x)
    f = x - i
    i = i.astype(np.int64)
    f2, f3 = f * f, f * f * f
    w = (((1 - f) ** 3) / 6, (3 * f3 - 6 * f2 + 4) / 6, (-3 * f3 + 3 * f2 + 3 * f + 1) / 6, f3 / 6)
    acc = np.zeros_like(x)
    norm = np.zeros_like(x)
    for j, wj in enumerate(w):
        acc += wj * hash_normal(key, i + (j - 1))
        norm += wj * wj
    return acc / np.sqrt(norm)


def gridded_noise(key: np.uint64, t0_s: float, t1_s: float, step_s: float, lattice_s: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`smooth_noise` tabulated on an absolute grid ``k * step_s`` covering [t0, t1].

    Returns ``(grid_t, values)``; interpolate with ``np.interp`` to evaluate it
    cheaply at many times.  The grid is aligned to absolute time, so values do
    not depend on the requested interval.
    """
    k0 = int(np.floor(t0_s / step_s)) - 1
    k1 = int(np.ceil(t1_s / step_s)) + 1
    grid = np.arange(k0, k1 + 1, dtype=np.float64) * step_s
    return grid, smooth_noise(key, grid, lattice_s)


def fractal_noise(key: np.uint64, t_s: np.ndarray, outer_s: float, inner_s: float,
                  hurst: float = 1.0 / 3.0) -> np.ndarray:
    """Unit-variance fractal process: a sum of :func:`smooth_noise` octaves.

    Octave ``j`` has lattice ``outer_s / 2**j`` (down to ``inner_s``) and amplitude
    ``(lattice / outer_s) ** hurst``; each octave holds its variance near
    frequencies ~ 1 / lattice, so between the two scales the power spectrum falls
    as ``k^-(2 hurst + 1)`` (``hurst = 1/3``: the ``k^-5/3`` of turbulence-like
    cloud fields, Gerber et al. 2001) and the structure function grows as
    ``lag^(2 hurst)``.  Deterministic in ``(key, t)`` like every process here.
    """
    if not 0 < inner_s <= outer_s:
        raise ValueError(f"need 0 < inner_s <= outer_s, got {inner_s}, {outer_s}")
    n_oct = int(np.floor(np.log2(outer_s / inner_s) + 1e-9)) + 1
    acc = np.zeros(np.shape(t_s), dtype=np.float64)
    var = 0.0
    for j in range(n_oct):
        lattice = outer_s / 2.0 ** j
        amp = (lattice / outer_s) ** hurst
        acc += amp * smooth_noise(make_key(int(key), j), t_s, lattice)
        var += amp * amp
    return acc / np.sqrt(var)


def gridded_fractal(key: np.uint64, t0_s: float, t1_s: float, step_s: float, outer_s: float,
                    inner_s: float, hurst: float = 1.0 / 3.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fractal_noise` tabulated on the absolute grid ``k * step_s`` covering [t0, t1]."""
    k0 = int(np.floor(t0_s / step_s)) - 1
    k1 = int(np.ceil(t1_s / step_s)) + 1
    grid = np.arange(k0, k1 + 1, dtype=np.float64) * step_s
    return grid, fractal_noise(key, grid, outer_s, inner_s, hurst)
