"""How realistic a reflectivity curtain looks: histogram, horizontal spectrum, echo occurrence.

The same statistics for a generated curtain and for a real KaZR file, so they
can be printed side by side (``benchmarks/bench_synthetic.py --realism``,
``tests/test_synthetic.py``).  Curtains are dBZ ``(time, height)`` with NaN =
no echo, as the readers return them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: histogram bins of the comparison, dBZ
HIST_EDGES = np.arange(-60.0, 31.0, 10.0)


def reflectivity_histogram(dbz: np.ndarray, edges: np.ndarray = HIST_EDGES) -> np.ndarray:
    """Share of the echo pixels (finite dBZ) in each bin of ``edges`` (values outside go to the end bins)."""
    v = np.asarray(dbz, dtype=np.float64)
    v = np.clip(v[np.isfinite(v)], edges[0], edges[-1] - 1e-9)
    counts, _ = np.histogram(v, bins=edges)
    return counts / max(int(counts.sum()), 1)


def horizontal_spectral_slope(dbz: np.ndarray, step_s: float, min_rows: int = 3) -> tuple[float, int]:
    """Log-log slope of the along-time power spectrum of dBZ, averaged over the rows that have echo in
    every time step (Hann window, mean removed, all frequencies but 0).  Returns ``(slope, rows used)``;
    ``(nan, k)`` when fewer than ``min_rows`` rows qualify."""
    v = np.asarray(dbz, dtype=np.float64)
    full = np.isfinite(v).all(axis=0)
    if full.sum() < min_rows or v.shape[0] < 8:
        return float("nan"), int(full.sum())
    x = v[:, full] - v[:, full].mean(axis=0)
    win = np.hanning(x.shape[0])[:, None]
    power = (np.abs(np.fft.rfft(x * win, axis=0)) ** 2).mean(axis=1)
    freq = np.fft.rfftfreq(x.shape[0], step_s)
    ok = (freq > 0) & (power > 0)
    return float(np.polyfit(np.log(freq[ok]), np.log(power[ok]), 1)[0]), int(full.sum())


def curtain_stats(dbz: np.ndarray, heights_m: np.ndarray, step_s: float) -> dict[str, Any]:
    """Echo occurrence (any echo in the column), echo fraction below 1 km, the histogram and the
    horizontal spectral slope of one curtain."""
    v = np.asarray(dbz, dtype=np.float64)
    echo = np.isfinite(v)
    low = np.asarray(heights_m) < 1000.0
    slope, rows = horizontal_spectral_slope(v, step_s)
    finite = v[echo]
    return {"profiles": int(v.shape[0]), "echo_occurrence": float(echo.any(axis=1).mean()),
            "echo_fraction": float(echo.mean()), "echo_fraction_below_1km": float(echo[:, low].mean()),
            "dbz_percentiles": (np.percentile(finite, [1, 50, 99]).round(1).tolist() if finite.size else []),
            "histogram": reflectivity_histogram(v).round(3).tolist(), "hist_edges": HIST_EDGES.tolist(),
            "spectral_slope": slope, "spectral_rows": rows}
