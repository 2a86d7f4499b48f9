"""Pixel-wise scores in dBZ on the blind zone: MAE, RMSE, bias, Dice.

Conventions shared by every metric in :mod:`bzpipe.metrics`
-----------------------------------------------------------
* Inputs are reflectivity in **dBZ**, shape ``(..., row, col)``; NaN means
  "no echo" (as :func:`bzpipe.schema.norm_to_dbz` returns).
* ``valid`` (bool, broadcastable to the inputs) is the single evaluation mask
  built once per evaluation (blind zone minus, optionally, high-spread pixels)
  and passed unchanged to every metric for every method; False pixels are
  ignored exactly as if they were absent.
* How NaN (no echo) enters each metric, following King et al. (2024), whose
  evaluation clamps normalized values below -0.5 to -0.5 before converting to
  dBZ, i.e. counts no echo as -60 dBZ:

  - MAE / RMSE / bias: no echo counts as ``no_echo_dbz`` (-60 dBZ).  With
    ``pixels="all"`` (the paper's choice, default) every valid pixel counts,
    so a clear-sky pixel predicted clear adds 0 error; ``pixels="echo"``
    restricts to pixels where truth or prediction has echo (> -60 dBZ).
  - Dice: echo mask = finite and > ``echo_threshold_dbz`` (-60 dBZ).
  - :mod:`~bzpipe.metrics.distributions` (EMD): no echo is -60 dBZ, in the
    lowest histogram bin.  Lowest-echo height: no echo is simply not echo.
  - :mod:`~bzpipe.metrics.spectra` (PSD): no echo is -60 dBZ.
  - :mod:`~bzpipe.metrics.contingency`: no echo is never above a threshold.
* Reductions run over ``axis`` (default the last two: one value per patch);
  a reduction over zero counted pixels gives NaN, never an exception or a
  warning.  0/0 ratios (Dice with no echo anywhere) are NaN as well.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

NO_ECHO_DBZ = -60.0
ECHO_THRESHOLD_DBZ = -60.0

Axis = int | tuple[int, ...] | None


def fill_no_echo(dbz: np.ndarray, no_echo_dbz: float = NO_ECHO_DBZ) -> np.ndarray:
    """DBZ with NaN (no echo) and anything below ``no_echo_dbz`` set to ``no_echo_dbz`` (float64)."""
    dbz = np.asarray(dbz, dtype=np.float64)
    return np.where(np.isnan(dbz) | (dbz < no_echo_dbz), no_echo_dbz, dbz)


def has_echo(dbz: np.ndarray, threshold_dbz: float = ECHO_THRESHOLD_DBZ) -> np.ndarray:
    """True where there is echo: finite and strictly above ``threshold_dbz``."""
    dbz = np.asarray(dbz, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(dbz) & (dbz > threshold_dbz)


def broadcast_valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """``valid`` as a bool array of ``shape`` (all True when None)."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(np.asarray(valid, dtype=bool), shape)


def masked_mean(values: np.ndarray, weight: np.ndarray, axis: Axis = (-2, -1)) -> np.ndarray | float:
    """Mean of ``values`` where ``weight`` is True, over ``axis``; NaN where nothing counts."""
    w = np.broadcast_to(np.asarray(weight, dtype=bool), np.shape(values))
    num = np.sum(np.where(w, values, 0.0), axis=axis)
    den = np.sum(w, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out if np.ndim(out) else float(out)


def _pair(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None, pixels: str,
          echo_threshold_dbz: float, no_echo_dbz: float) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    shape = np.broadcast_shapes(pred.shape, truth.shape)
    w = broadcast_valid(valid, shape)
    if pixels == "echo":
        w = w & (has_echo(pred, echo_threshold_dbz) | has_echo(truth, echo_threshold_dbz))
    elif pixels != "all":
        raise ValueError(f"pixels must be 'all' or 'echo', got {pixels!r}")
    diff = fill_no_echo(pred, no_echo_dbz) - fill_no_echo(truth, no_echo_dbz)
    return np.broadcast_to(diff, shape), w


def mae(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, *,
        pixels: Literal["all", "echo"] = "all", echo_threshold_dbz: float = ECHO_THRESHOLD_DBZ,
        no_echo_dbz: float = NO_ECHO_DBZ, axis: Axis = (-2, -1)) -> np.ndarray | float:
    """Mean absolute error, dBZ (no echo counted as ``no_echo_dbz``)."""
    diff, w = _pair(pred, truth, valid, pixels, echo_threshold_dbz, no_echo_dbz)
    return masked_mean(np.abs(diff), w, axis)


def rmse(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, *,
         pixels: Literal["all", "echo"] = "all", echo_threshold_dbz: float = ECHO_THRESHOLD_DBZ,
         no_echo_dbz: float = NO_ECHO_DBZ, axis: Axis = (-2, -1)) -> np.ndarray | float:
    """Root-mean-square error, dBZ (no echo counted as ``no_echo_dbz``)."""
    diff, w = _pair(pred, truth, valid, pixels, echo_threshold_dbz, no_echo_dbz)
    return np.sqrt(masked_mean(diff**2, w, axis))


def bias(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, *,
         pixels: Literal["all", "echo"] = "all", echo_threshold_dbz: float = ECHO_THRESHOLD_DBZ,
         no_echo_dbz: float = NO_ECHO_DBZ, axis: Axis = (-2, -1)) -> np.ndarray | float:
    """Mean error prediction - truth, dBZ (positive: too much reflectivity)."""
    diff, w = _pair(pred, truth, valid, pixels, echo_threshold_dbz, no_echo_dbz)
    return masked_mean(diff, w, axis)


def dice(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, *,
         echo_threshold_dbz: float = ECHO_THRESHOLD_DBZ, axis: Axis = (-2, -1)) -> np.ndarray | float:
    """Dice coefficient 2|P & T| / (|P| + |T|) of the echo masks (> threshold dBZ).

    NaN where neither mask has any echo among the valid pixels (0/0).
    """
    p = has_echo(pred, echo_threshold_dbz)
    t = has_echo(truth, echo_threshold_dbz)
    shape = np.broadcast_shapes(p.shape, t.shape)
    w = broadcast_valid(valid, shape)
    p, t = p & w, t & w
    inter = np.sum(p & t, axis=axis)
    total = np.sum(p, axis=axis) + np.sum(t, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, 2.0 * inter / np.where(total > 0, total, 1), np.nan)
    return out if np.ndim(out) else float(out)
