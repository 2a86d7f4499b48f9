"""Statistics over Monte Carlo dropout passes, per pass in dBZ as King et al. (2024) do.

The authors (``bp_test_all.py`` / ``bp_drop_eval.py``; ``docs/paper.md`` section
1.7) treat every pass on its own before averaging:

1. within each pass, a normalized output below -0.5 is "no echo";
2. each pass is converted to dBZ, no echo counting as -60 dBZ;
3. the mean and the spread are taken over the passes, in dBZ.

So passes that see no echo pull the mean toward -60 dBZ but cannot erase echo:
25 clear passes and 25 at -30 dBZ give -45 dBZ (echo), where averaging the
normalized outputs (no echo = -1, i.e. -90 dBZ on the linear scale) would give
-60 dBZ (no echo).  A pixel is echo in the mean when at least one pass has echo
(a mean above -60 dBZ), exactly as in the paper.  Quantiles are taken over the
per-pass dBZ values too.

:func:`aggregate_passes` returns these in dBZ (``*_dbz``) and, for the
callers that work in normalized units, the same statistics mapped back with the
normalization's linear slope (:data:`DBZ_PER_NORM` = 60 dBZ per unit): a mean
of exactly -60 dBZ (every pass clear) becomes the no-echo value -1, so
:func:`bzpipe.schema.norm_to_dbz` of ``mean`` gives the dBZ mean back (NaN =
no echo); ``std`` is the dBZ spread / 60, so ``std * 60`` is the spread in dBZ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bzpipe.schema import DBZ_MIN, DBZ_PER_NORM, NO_ECHO, NORM_HI, NORM_LO


def quantiles_along0(samples: Tensor, qs: Sequence[float]) -> Tensor:
    """Linear-interpolation quantiles (numpy's default) along dim 0: Tensor[Q, ...].

    ``torch.quantile`` refuses inputs above 16 M elements; this sorts once.
    """
    n = samples.shape[0]
    if len(qs) == 0:
        return samples.new_empty((0, *samples.shape[1:]))
    srt = samples.sort(dim=0).values
    out = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside [0, 1]")
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(srt[lo] + (srt[hi] - srt[lo]) * frac)
    return torch.stack(out)


def pass_dbz(samples: Tensor) -> Tensor:
    """Per-pass dBZ of normalized outputs: below -0.5 (no echo) -> -60 dBZ, clipped to [-60, 30]."""
    x = samples.float().clamp(NORM_LO, NORM_HI)
    return DBZ_MIN + (x - NORM_LO) * DBZ_PER_NORM


def dbz_to_norm_stat(dbz: Tensor, echo: Tensor | None = None) -> Tensor:
    """A dBZ statistic back in normalized units; -1 (no echo) where ``echo`` is False (default: at -60)."""
    norm = NORM_LO + (dbz - DBZ_MIN) / DBZ_PER_NORM
    none = dbz <= DBZ_MIN if echo is None else ~echo
    return torch.where(none, torch.full_like(norm, NO_ECHO), norm)


def aggregate_passes(samples: Tensor, quantiles: Sequence[float] = ()) -> dict[str, Tensor]:
    """Statistics of N stacked passes ``samples`` Tensor[N, ...] (normalized model outputs).

    Returns float32 tensors of shape ``samples.shape[1:]`` (quantiles: ``[Q, ...]``):

    * ``mean_dbz``, ``std_dbz`` (population std over passes), ``quantiles_dbz``: per-pass dBZ
      statistics (no echo = -60 dBZ);
    * ``echo_fraction``: share of the passes with echo;
    * ``mean``, ``std``, ``quantiles``: the same in normalized units (see the module docstring).
    """
    if samples.ndim < 1 or samples.shape[0] < 1:
        raise ValueError("need at least one pass")
    dbz = pass_dbz(samples)                                  # (N, ...)
    echo = samples.float() >= NORM_LO                        # per pass: echo (normalized >= -0.5)
    mean_dbz = dbz.mean(0)
    std_dbz = dbz.std(0, unbiased=False)
    q_dbz = quantiles_along0(dbz, quantiles)
    any_echo = echo.any(0) & (mean_dbz > DBZ_MIN)
    return {"mean_dbz": mean_dbz, "std_dbz": std_dbz, "quantiles_dbz": q_dbz,
            "echo_fraction": echo.float().mean(0),
            "mean": dbz_to_norm_stat(mean_dbz, any_echo),
            "std": std_dbz / DBZ_PER_NORM,
            "quantiles": dbz_to_norm_stat(q_dbz)}
