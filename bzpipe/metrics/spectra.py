"""Vertical power spectral density of reflectivity in the blind zone.

As in King et al. (2024): the rows are truncated to the largest power of two
(bottom rows kept, counted from the surface), each profile (column) is Fourier
transformed along height, no echo counted as -60 dBZ.  The power of a column is
the periodogram ``|F_k|^2 / n`` in dBZ^2; columns are averaged, giving one
spectrum per patch; average over patches with :func:`mean_psd` and show in dB
(``10 log10``) with :func:`to_db`.  A column containing an invalid pixel (e.g.
excluded for high MC-dropout spread) is left out of the average for every
method, so all methods are compared on the same profiles.
"""

from __future__ import annotations

import numpy as np

from bzpipe.metrics.pointwise import NO_ECHO_DBZ, broadcast_valid, fill_no_echo


def vertical_psd(dbz: np.ndarray, dz_m: float, valid: np.ndarray | None = None, *,
                 no_echo_dbz: float = NO_ECHO_DBZ) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch vertical PSD of dBZ ``(..., row, col)``.

    Returns ``(freq, power)``: ``freq`` ``(nf,)`` in cycles per km (0 .. Nyquist),
    ``power`` ``(..., nf)`` in dBZ^2 (NaN for a patch with no fully valid column).
    """
    if dz_m <= 0:
        raise ValueError(f"dz_m must be positive, got {dz_m}")
    v = fill_no_echo(dbz, no_echo_dbz)
    w = broadcast_valid(valid, v.shape)
    n = 1 << int(np.floor(np.log2(v.shape[-2])))
    v, w = v[..., :n, :], w[..., :n, :]
    spec = np.abs(np.fft.rfft(v, axis=-2)) ** 2 / n  # (..., nf, col)
    full = w.all(axis=-2)  # (..., col)
    k = full.sum(axis=-1)  # (...,)
    total = np.sum(np.where(full[..., None, :], spec, 0.0), axis=-1)  # (..., nf)
    with np.errstate(invalid="ignore", divide="ignore"):
        power = np.where(k[..., None] > 0, total / np.where(k > 0, k, 1)[..., None], np.nan)
    freq = np.fft.rfftfreq(n, d=dz_m / 1000.0)
    return freq, power


def mean_psd(power: np.ndarray) -> np.ndarray:
    """Average per-patch spectra ``(n, nf)`` over patches, ignoring NaN patches -> ``(nf,)``."""
    p = np.asarray(power, dtype=np.float64).reshape(-1, np.shape(power)[-1])
    ok = np.isfinite(p).all(axis=-1)
    return p[ok].mean(axis=0) if ok.any() else np.full(p.shape[-1], np.nan)


def to_db(power: np.ndarray) -> np.ndarray:
    """10 log10(power); zero or negative power -> NaN."""
    p = np.asarray(power, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, 10.0 * np.log10(np.where(p > 0, p, 1.0)), np.nan)
