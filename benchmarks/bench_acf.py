"""Benchmark: the split's autocorrelation per stretch of data against one FFT over the whole span.

    python benchmarks/bench_acf.py            # ~1 min on 2 cores

The build finds the split's gap where the autocorrelations of the echo and ERA-5 series fall to 0.1
(:func:`bzpipe.split.decorrelation_lag`, lags up to ``split.max_lag_s`` = 10 days, 8-s steps).
:func:`bzpipe.split.autocorrelation` sums the lagged products over the stretches of data that gaps
longer than the largest lag separate, one FFT each; before, one FFT ran over the whole span, summers
included.  Both on the same series, alternating, the median of 3 rounds each, for the demo's shape
(one cold season of 6-h days) and for three cold seasons of 2-h days (``months: [11, 12, 1, 2, 3]``);
prints the seconds per series, the ratio and the largest difference between the two results.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402

STEP_S, MAX_LAG_S, PER_DAY = 8.0, 864000.0, 10800


def whole_span(x: np.ndarray, max_lag: int) -> np.ndarray:
    """The previous :func:`bzpipe.split.autocorrelation`: one FFT over the whole span."""
    ok = np.isfinite(x)
    xc = np.where(ok, x - x[ok].mean(), 0.0)
    var = float(np.mean(xc[ok] ** 2))
    nfft = 1 << int(np.ceil(np.log2(2 * x.size)))
    fx, fm = np.fft.rfft(xc, nfft), np.fft.rfft(ok.astype(np.float64), nfft)
    num = np.fft.irfft(fx * np.conj(fx), nfft)[: max_lag + 1]
    cnt = np.rint(np.fft.irfft(fm * np.conj(fm), nfft)[: max_lag + 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        acf = np.where(cnt > 0, num / np.maximum(cnt, 1) / var, np.nan)
    acf[0] = 1.0
    return acf


def series(first: str, last: str, hours: float, seed: int = 0) -> np.ndarray:
    """8-s series of smoothed noise, ``hours`` of data at the start of every cold-season day."""
    rng = np.random.default_rng(seed)
    days = np.arange(first, last, dtype="datetime64[D]")
    month = days.astype("datetime64[M]").astype(int) % 12 + 1
    x = np.full(days.size * PER_DAY, np.nan)
    n = int(hours * 3600 / STEP_S)
    for i in np.flatnonzero(np.isin(month, (11, 12, 1, 2, 3))):
        x[i * PER_DAY:i * PER_DAY + n] = np.convolve(rng.normal(size=n + 49), np.ones(50) / 50, "valid")
    return x


def main() -> int:
    from bzpipe.split import autocorrelation

    print("machine:", machine_info(), flush=True)
    lag = int(MAX_LAG_S // STEP_S)
    for name, x in (("one cold season, 6-h days (the demo)", series("2018-11-01", "2019-04-01", 6.0)),
                    ("three cold seasons, 2-h days", series("2018-11-01", "2021-04-01", 2.0))):
        t_old, t_new = [], []
        for _ in range(3):
            t = time.perf_counter()
            a = whole_span(x, lag)
            t_old.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = autocorrelation(x, lag)
            t_new.append(time.perf_counter() - t)
        o, n = float(np.median(t_old)), float(np.median(t_new))
        print(f"{name}: {x.size / 1e6:.1f} M steps; whole span {o:.2f} s, per stretch {n:.2f} s "
              f"({o / n:.1f}x); max |difference| {np.nanmax(np.abs(a - b)):.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
