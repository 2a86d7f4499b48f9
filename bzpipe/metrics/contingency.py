"""Event detection and 2 x 2 contingency-table scores (King et al. 2024, Sect. 4).

Events, one per patch (thresholds are parameters, defaults as in the paper):

(a) blind-zone cloud presence: at least ``min_fraction`` (5 %) of the valid
    blind-zone pixels have echo (> -60 dBZ);
(b) shallow snowfall: the strongest echo in the row just above the blind zone is
    below ``precip_threshold_dbz`` (-20 dBZ) while the strongest echo in the
    lowest (surface) row reaches it (>= -20 dBZ): snow the satellite misses;
(c) virga: the reverse: >= -20 dBZ just above the blind zone, < -20 dBZ at the
    surface (precipitation that evaporates before reaching the ground).

Event functions return float arrays: 1.0 (event), 0.0 (no event) or NaN
(undefined: no valid pixel to decide on).  No echo (NaN dBZ) never exceeds a
threshold.  :func:`contingency_table` counts only the pairs where both the
forecast and the observation are defined.

Scores (Wilks 2011; Roebber 2009 for the performance diagram), with H hits,
M misses, F false alarms, C correct negatives::

    POD = H / (H + M)           FAR = F / (H + F)       SR = 1 - FAR = H / (H + F)
    CSI = H / (H + M + F)       bias = (H + F) / (H + M)
    HSS = 2 (H C - F M) / ((H + M)(M + C) + (H + F)(F + C))

Every ratio whose denominator is 0 is NaN (never an exception).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bzpipe.metrics.pointwise import ECHO_THRESHOLD_DBZ, Axis, broadcast_valid, has_echo, masked_mean

PRECIP_THRESHOLD_DBZ = -20.0
CLOUD_FRACTION = 0.05


def cloud_presence(dbz: np.ndarray, valid: np.ndarray | None = None, *,
                   echo_threshold_dbz: float = ECHO_THRESHOLD_DBZ, min_fraction: float = CLOUD_FRACTION,
                   axis: Axis = (-2, -1)) -> np.ndarray:
    """Event (a): fraction of valid pixels with echo >= ``min_fraction``; dBZ ``(..., row, col)``."""
    echo = has_echo(dbz, echo_threshold_dbz)
    frac = np.asarray(masked_mean(echo.astype(np.float64), broadcast_valid(valid, echo.shape), axis))
    return np.where(np.isnan(frac), np.nan, (frac >= min_fraction).astype(np.float64))


def _row_max(row: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Max dBZ over the last axis among valid echo pixels (-inf if none) and whether any pixel was valid."""
    row = np.asarray(row, dtype=np.float64)
    w = broadcast_valid(valid, row.shape)
    vals = np.where(w & np.isfinite(row), row, -np.inf)
    return vals.max(axis=-1), w.any(axis=-1)


def shallow_snowfall(lowest_row: np.ndarray, row_above: np.ndarray, *,
                     valid_lowest: np.ndarray | None = None, valid_above: np.ndarray | None = None,
                     precip_threshold_dbz: float = PRECIP_THRESHOLD_DBZ) -> np.ndarray:
    """Event (b): max(``row_above``) < thr and max(``lowest_row``) >= thr.

    ``lowest_row``: dBZ ``(..., col)`` of the surface row (the method's fill);
    ``row_above``: dBZ ``(..., col)`` of the first row above the blind zone
    (observed, the same for every method).
    """
    low, low_ok = _row_max(lowest_row, valid_lowest)
    up, up_ok = _row_max(row_above, valid_above)
    event = (up < precip_threshold_dbz) & (low >= precip_threshold_dbz)
    return np.where(low_ok & up_ok, event.astype(np.float64), np.nan)


def virga(lowest_row: np.ndarray, row_above: np.ndarray, *,
          valid_lowest: np.ndarray | None = None, valid_above: np.ndarray | None = None,
          precip_threshold_dbz: float = PRECIP_THRESHOLD_DBZ) -> np.ndarray:
    """Event (c): max(``row_above``) >= thr and max(``lowest_row``) < thr (shapes as in shallow_snowfall)."""
    low, low_ok = _row_max(lowest_row, valid_lowest)
    up, up_ok = _row_max(row_above, valid_above)
    event = (up >= precip_threshold_dbz) & (low < precip_threshold_dbz)
    return np.where(low_ok & up_ok, event.astype(np.float64), np.nan)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _vratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def scores_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorized scores of tables given as ``(..., 4)`` arrays [H, M, F, C] (e.g. bootstrap replicates)."""
    c = np.asarray(counts, dtype=np.float64)
    h, m, f, cn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    return {"POD": _vratio(h, h + m), "FAR": _vratio(f, h + f), "SR": _vratio(h, h + f),
            "CSI": _vratio(h, h + m + f),
            "HSS": _vratio(2 * (h * cn - f * m), (h + m) * (m + cn) + (h + f) * (f + cn)),
            "bias": _vratio(h + f, h + m)}


@dataclass(frozen=True)
class ContingencyTable:
    """Counts of a 2 x 2 table of yes/no forecasts against yes/no observations."""

    hits: int
    misses: int
    false_alarms: int
    correct_negatives: int

    @property
    def n(self) -> int:
        return self.hits + self.misses + self.false_alarms + self.correct_negatives

    def __add__(self, other: ContingencyTable) -> ContingencyTable:
        return ContingencyTable(self.hits + other.hits, self.misses + other.misses,
                                self.false_alarms + other.false_alarms,
                                self.correct_negatives + other.correct_negatives)

    def pod(self) -> float:
        """Probability of detection H / (H + M)."""
        return _ratio(self.hits, self.hits + self.misses)

    def far(self) -> float:
        """False-alarm ratio F / (H + F)."""
        return _ratio(self.false_alarms, self.hits + self.false_alarms)

    def success_ratio(self) -> float:
        """1 - FAR = H / (H + F)."""
        return _ratio(self.hits, self.hits + self.false_alarms)

    def csi(self) -> float:
        """Critical success index (threat score) H / (H + M + F)."""
        return _ratio(self.hits, self.hits + self.misses + self.false_alarms)

    def frequency_bias(self) -> float:
        """(H + F) / (H + M): forecast events per observed event."""
        return _ratio(self.hits + self.false_alarms, self.hits + self.misses)

    def hss(self) -> float:
        """Heidke skill score; 1 perfect, 0 no better than chance."""
        h, m, f, c = self.hits, self.misses, self.false_alarms, self.correct_negatives
        return _ratio(2 * (h * c - f * m), (h + m) * (m + c) + (h + f) * (f + c))

    def scores(self) -> dict[str, float]:
        return {"POD": self.pod(), "FAR": self.far(), "SR": self.success_ratio(), "CSI": self.csi(),
                "HSS": self.hss(), "bias": self.frequency_bias()}

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), **self.scores()}


def contingency_table(forecast: np.ndarray, observed: np.ndarray) -> ContingencyTable:
    """Count hits etc. of event arrays (1/0/NaN, or bool); NaN pairs are left out."""
    f = np.asarray(forecast, dtype=np.float64).ravel()
    o = np.asarray(observed, dtype=np.float64).ravel()
    if f.shape != o.shape:
        raise ValueError(f"forecast and observed differ in size: {f.shape} vs {o.shape}")
    ok = np.isfinite(f) & np.isfinite(o)
    fy, oy = f[ok] > 0.5, o[ok] > 0.5
    return ContingencyTable(hits=int(np.sum(fy & oy)), misses=int(np.sum(~fy & oy)),
                            false_alarms=int(np.sum(fy & ~oy)), correct_negatives=int(np.sum(~fy & ~oy)))


def table_counts(forecast: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Per-sample one-hot counts ``(n, 4)`` [H, M, F, C] (zeros where undefined), for bootstrapping."""
    f = np.asarray(forecast, dtype=np.float64).ravel()
    o = np.asarray(observed, dtype=np.float64).ravel()
    ok = np.isfinite(f) & np.isfinite(o)
    fy, oy = (f > 0.5) & ok, (o > 0.5) & ok
    return np.stack([fy & oy, ~fy & oy & ok, fy & ~oy & ok, ~fy & ~oy & ok], axis=1).astype(np.int64)


def table_from_counts(counts: np.ndarray) -> ContingencyTable:
    """Sum per-sample counts ``(n, 4)`` into a table."""
    h, m, f, c = (int(v) for v in np.asarray(counts).reshape(-1, 4).sum(axis=0))
    return ContingencyTable(h, m, f, c)


def csi_from_pod_sr(pod: np.ndarray, sr: np.ndarray) -> np.ndarray:
    """CSI as a function of POD and SR, for the contours of a performance diagram (Roebber 2009)."""
    pod = np.asarray(pod, dtype=np.float64)
    sr = np.asarray(sr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / (1.0 / sr + 1.0 / pod - 1.0)
