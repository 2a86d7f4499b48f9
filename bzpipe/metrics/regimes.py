"""Where a fill wins and loses: test patches classed by the echo the truth holds just above and
just inside the blind zone, and every method's MAE per class.

The classes are those of the README's situation table:

========================  ======================================  =====================================
key                       echo in the lowest visible row          echo in the lowest blind-zone rows
========================  ======================================  =====================================
``echo_through``          yes                                     yes   (echo down to the surface)
``echo_above_only``       yes                                     no    (virga-like: it stops on the way)
``echo_below_only``       no                                      yes   (shallow cloud or snowfall)
``neither``               no                                      no    (clear near the blind zone)
========================  ======================================  =====================================

"Echo" in a row means echo (above ``echo_threshold_dbz``) in more than ``min_fraction`` of its
counted pixels; the blind-zone side looks at the lowest ``low_rows`` rows.  The class is decided on
the truth, so it is the same for every method, and it is a diagnostic of the evaluation only: no
model sees it.  REP copies the lowest visible row down, so it is nearly exact in ``echo_through``
and ``neither`` patches and cannot be right in the other two; a learned fill earns its place in
those and pays for it in the first two when it moves echo that was there.
"""

from __future__ import annotations

import numpy as np

from bzpipe.metrics import pointwise as pw

#: the classes, in report order
REGIMES: tuple[str, ...] = ("echo_through", "echo_above_only", "echo_below_only", "neither")
#: what each class means, for tables and figures
REGIME_LABELS: dict[str, str] = {
    "echo_through": "echo above and below (down to the surface)",
    "echo_above_only": "echo above, none below (virga-like)",
    "echo_below_only": "no echo above, echo below (shallow)",
    "neither": "no echo above or below",
}
#: defaults: echo in more than 30 % of the lowest visible row and of the lowest four blind-zone rows
MIN_FRACTION = 0.3
LOW_ROWS = 4


def classify_patches(truth: np.ndarray, row_above: np.ndarray, valid: np.ndarray, *,
                     echo_threshold_dbz: float = pw.ECHO_THRESHOLD_DBZ, min_fraction: float = MIN_FRACTION,
                     low_rows: int = LOW_ROWS) -> np.ndarray:
    """The class of every patch, an index into :data:`REGIMES`, shape ``(n,)`` int8.

    ``truth``: dBZ ``(n, rows, col)`` blind zone, row 0 = surface, NaN = no echo; ``row_above``:
    dBZ ``(n, col)`` of the lowest visible row; ``valid``: bool ``(n, rows, col)``, the
    evaluation mask (its lowest rows count below; a column counts above where any of its
    blind-zone pixels counts).
    """
    truth = np.asarray(truth, dtype=np.float64)
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), truth.shape)
    if truth.ndim != 3 or np.shape(row_above) != (truth.shape[0], truth.shape[2]):
        raise ValueError(f"truth (n, rows, col) and row_above (n, col) do not match: {truth.shape}, "
                         f"{np.shape(row_above)}")
    if low_rows < 1:
        raise ValueError(f"low_rows must be >= 1, got {low_rows}")
    k = min(low_rows, truth.shape[1])
    # share of the counted pixels with echo (NaN where none count, which is not "more than")
    below = pw.masked_mean(pw.has_echo(truth[:, :k], echo_threshold_dbz), valid[:, :k]) > min_fraction
    above = pw.masked_mean(pw.has_echo(row_above, echo_threshold_dbz), valid.any(axis=1),
                           axis=-1) > min_fraction
    return np.select([above & below, above & ~below, ~above & below],
                     [0, 1, 2], default=3).astype(np.int8)
