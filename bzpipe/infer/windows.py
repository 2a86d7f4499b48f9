"""Along-track windows with overlap, and blending of per-window predictions.

A granule curtain of ``n`` profiles is cut into windows of the model's patch
width ``W`` that start every ``W - overlap`` profiles; the last window is aligned
with the end of the track.  Overlapping predictions are blended with cosine
(Hann) ramps over the overlap, which sum to one where two windows meet, so a
field that every window predicts identically is reproduced exactly.
"""

from __future__ import annotations

import numpy as np


def window_starts(n: int, width: int, overlap: int) -> np.ndarray:
    """Start column of each window, (K,) int; windows cover ``[0, n)``.

    If ``n <= width`` there is one window starting at 0 (the caller pads the curtain).
    """
    if width < 1 or n < 1:
        raise ValueError(f"need n >= 1 and width >= 1, got n={n}, width={width}")
    if not 0 <= overlap < width:
        raise ValueError(f"overlap must be in [0, width), got {overlap} for width {width}")
    if n <= width:
        return np.array([0], dtype=np.int64)
    stride = width - overlap
    starts = list(range(0, n - width, stride))
    starts.append(n - width)
    return np.unique(np.asarray(starts, dtype=np.int64))


def taper(width: int, left: int, right: int) -> np.ndarray:
    """Blend weights of one window, (width,): cosine ramps ``left`` columns up from the
    start and ``right`` columns down to the end, 1 elsewhere.

    ``0.5 - 0.5*cos(pi*(i+0.5)/m)`` for ``i < m``: a rising and a falling ramp of the
    same length that overlap exactly add up to 1.
    """
    w = np.ones(width, dtype=np.float64)
    if left > 0:
        i = np.arange(left)
        w[:left] = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / left)
    if right > 0:
        i = np.arange(right)
        w[width - right:] *= (0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / right))[::-1]
    return w


def window_weights(starts: np.ndarray, width: int, n: int) -> np.ndarray:
    """Blend weights of every window, (K, width), ramps sized by the actual overlaps."""
    k = len(starts)
    out = np.empty((k, width))
    for i, s in enumerate(starts):
        left = int(starts[i - 1] + width - s) if i > 0 else 0
        right = int(s + width - starts[i + 1]) if i + 1 < k else 0
        out[i] = taper(width, max(left, 0), max(right, 0))
    return out


class Blender:
    """Accumulates weighted window predictions of fields shaped (..., width) into (..., n).

    Besides weighted means it keeps the weighted second moment of an MC-dropout
    mean/std pair, so the blended std is that of the blended mixture:
    ``sqrt(sum w (std^2 + mean^2) / sum w - mean_blend^2)``.
    """

    def __init__(self, n: int, width: int, starts: np.ndarray) -> None:
        self.n, self.width = n, width
        self.starts = np.asarray(starts, dtype=np.int64)
        self.weights = window_weights(self.starts, width, max(n, width))
        self._sum: dict[str, np.ndarray] = {}
        self._wsum = np.zeros(max(n, width))
        self._second: np.ndarray | None = None

    def add(self, index: int, fields: dict[str, np.ndarray], std_of: str | None = None,
            std: np.ndarray | None = None) -> None:
        """Add window ``index``'s fields, each (..., width); ``std`` belongs to field ``std_of``."""
        s = int(self.starts[index])
        w = self.weights[index]
        sl = slice(s, s + self.width)
        for name, a in fields.items():
            a = np.asarray(a, dtype=np.float64)
            if name not in self._sum:
                self._sum[name] = np.zeros(a.shape[:-1] + (max(self.n, self.width),))
            self._sum[name][..., sl] += a * w
        if std is not None and std_of is not None:
            m = np.asarray(fields[std_of], dtype=np.float64)
            sec = (np.asarray(std, dtype=np.float64) ** 2 + m ** 2) * w
            if self._second is None:
                self._second = np.zeros(sec.shape[:-1] + (max(self.n, self.width),))
            self._second[..., sl] += sec
        self._wsum[sl] += w

    def covered(self) -> np.ndarray:
        """(n,) bool: columns that received at least one window."""
        return self._wsum[: self.n] > 0

    def result(self, std_of: str | None = None, allow_gaps: bool = False) -> dict[str, np.ndarray]:
        """Blended fields (..., n); with ``std_of``, also ``"std"`` of that field.

        Columns no window covered raise ``RuntimeError``, or are NaN with ``allow_gaps``.
        """
        if not allow_gaps and not self.covered().all():
            raise RuntimeError("some columns are covered by no window")
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {k: (v / self._wsum)[..., : self.n] for k, v in self._sum.items()}
            if std_of is not None and self._second is not None:
                m = out[std_of]
                var = (self._second / self._wsum)[..., : self.n] - m ** 2
                out["std"] = np.sqrt(np.clip(var, 0.0, None))
        return out
