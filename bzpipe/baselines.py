"""Non-learned blind-zone fills: REP, MAR, OpenCV Telea and Navier-Stokes.

All functions work on **normalized reflectivity** (see :mod:`bzpipe.schema`:
-60..30 dBZ -> -0.5..1, no echo = -1) laid out as ``(..., row, col)`` with
``row`` 0 the surface, so the blind zone is ``rows [0, blind_rows)`` and the
first observed row is ``blind_rows``.  Leading dimensions (samples) are looped
over.  Each function returns a new float32 array of the same shape: rows at and
above ``blind_rows`` are the input unchanged, the blind-zone rows are filled.

Why normalized units (as King et al. 2024 and Geiss & Hardin 2021): averaging
needs a number for "no echo"; in normalized units it is -1, a value below the
weakest echo (-0.5 = -60 dBZ), so a window that is mostly clear averages to
"clear".  After filling, values below ``NORM_LO`` (-0.5, i.e. -60 dBZ) are
snapped to ``NO_ECHO`` (-1), the paper's rule, so each method produces the
same two-state (echo / no echo) field as the truth.

Methods:
    REP  :func:`repeat_fill` copies the first row above the blind zone down.
    MAR  :func:`marching_average_fill` sets each edge pixel of the still-masked
         region to the mean of the valid pixels in a 17 x 17 window (mirror
         padding at the image border), sweeping inwards until all is filled.
    TELEA / NS  :func:`opencv_fill` with ``cv2.INPAINT_TELEA`` / ``INPAINT_NS``.
         Scaling: the normalized range [-1, 1] is mapped linearly onto the
         8-bit grey range [0, 255] (``g = (v + 1) * 127.5``), handed to
         ``cv2.inpaint`` as a float32 image (no quantization), and mapped
         back.  The 8-bit range matters: OpenCV's Telea works in absolute grey
         levels (its float path adds errors of about +-1 level), so on values
         in [-1, 1] it would be off by a whole unit (60 dBZ); on [0, 255] the
         same +-1 level is 2/255 normalized = 0.47 dBZ.  With
         ``as_uint8=True``, or if the installed OpenCV rejects float input,
         ``g`` is rounded to uint8 (quantization step 0.47 dBZ).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

from bzpipe.schema import NO_ECHO, NORM_HI, NORM_LO

#: Method names in the order reports list them.
BASELINES: tuple[str, ...] = ("REP", "MAR", "TELEA", "NS")


def _check(x: np.ndarray, blind_rows: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"expected an array (..., row, col), got shape {x.shape}")
    if not 0 < blind_rows < x.shape[-2]:
        raise ValueError(f"blind_rows={blind_rows} must be in [1, {x.shape[-2] - 1}] for {x.shape[-2]} rows")
    return x


def snap_no_echo(norm: np.ndarray) -> np.ndarray:
    """Normalized values below -0.5 (-60 dBZ) -> -1 (no echo); others clipped to at most 1."""
    norm = np.asarray(norm, dtype=np.float32)
    return np.where(norm < NORM_LO, NO_ECHO, np.minimum(norm, NORM_HI)).astype(np.float32)


def _per_image(x: np.ndarray, fill: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    flat = x.reshape((-1,) + x.shape[-2:])
    out = np.empty_like(flat)
    for i in range(flat.shape[0]):
        out[i] = fill(flat[i])
    return out.reshape(x.shape)


def repeat_fill(x: np.ndarray, blind_rows: int) -> np.ndarray:
    """REP: every blind-zone row := row ``blind_rows`` (the first observed row above it).

    ``x``: normalized reflectivity ``(..., row, col)``; returns the filled copy.
    """
    x = _check(x, blind_rows)
    out = x.copy()
    out[..., :blind_rows, :] = x[..., blind_rows:blind_rows + 1, :]
    return out


def marching_average_image(image: np.ndarray, mask: np.ndarray, window: int = 17) -> np.ndarray:
    """Onion-peel fill of one 2-D image where ``mask`` is True (unknown).

    Each sweep takes the *edge* of the unknown region (unknown pixels with at
    least one known 4-neighbour; neighbours outside the image are mirrored) and
    sets each edge pixel to the mean of the known pixels in the ``window`` x
    ``window`` box around it (mirror padding, i.e. ``np.pad(mode="reflect")``).
    Pixels filled in a sweep become known for the next sweep only.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    img = np.asarray(image, dtype=np.float64).copy()
    unknown = np.asarray(mask, dtype=bool).copy()
    if unknown.all():
        raise ValueError("marching average needs at least one known pixel")
    cross = ndimage.generate_binary_structure(2, 1)
    while unknown.any():
        known = ~unknown
        # edge: unknown pixels touching a known one (4-connectivity, mirrored border)
        edge = unknown & ndimage.binary_dilation(known, structure=cross, border_value=0)
        if not edge.any():  # cannot happen for a non-empty known set, but never loop forever
            raise RuntimeError("marching average made no progress")
        w = known.astype(np.float64)
        num = ndimage.uniform_filter(img * w, size=window, mode="mirror")
        den = ndimage.uniform_filter(w, size=window, mode="mirror")
        img[edge] = num[edge] / den[edge]
        unknown &= ~edge
    return img.astype(np.float32)


def marching_average_fill(x: np.ndarray, blind_rows: int, window: int = 17) -> np.ndarray:
    """MAR: marching average into the blind zone (one row per sweep, top down).

    ``x``: normalized reflectivity ``(..., row, col)``; returns the filled copy
    with values below -0.5 snapped to no echo (-1).
    """
    x = _check(x, blind_rows)
    mask = np.zeros(x.shape[-2:], dtype=bool)
    mask[:blind_rows] = True
    filled = _per_image(x, lambda im: marching_average_image(im, mask, window))
    out = x.copy()
    out[..., :blind_rows, :] = snap_no_echo(filled[..., :blind_rows, :])
    return out


def _to_grey(v: np.ndarray) -> np.ndarray:
    """Normalized [-1, 1] -> grey levels [0, 255] (float32)."""
    return ((np.clip(v, -1.0, 1.0) + 1.0) * 127.5).astype(np.float32)


def _from_grey(g: np.ndarray) -> np.ndarray:
    return (g.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def opencv_fill(x: np.ndarray, blind_rows: int, method: str = "telea", radius: float = 5.0,
                as_uint8: bool = False) -> np.ndarray:
    """Fill the blind zone with ``cv2.inpaint`` (``method`` "telea" or "ns").

    ``x``: normalized reflectivity ``(..., row, col)``.  ``radius``: the
    inpainting neighbourhood in pixels.  See the module docstring for the
    scaling; the result is snapped to no echo below -0.5.
    """
    x = _check(x, blind_rows)
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}.get(method.lower())
    if flag is None:
        raise ValueError(f"unknown OpenCV inpainting method {method!r}; use 'telea' or 'ns'")
    mask = np.zeros(x.shape[-2:], dtype=np.uint8)
    mask[:blind_rows] = 255

    def fill(im: np.ndarray) -> np.ndarray:
        grey = np.ascontiguousarray(_to_grey(im))
        if not as_uint8:
            try:
                return _from_grey(cv2.inpaint(grey, mask, radius, flag))
            except cv2.error:
                pass  # this OpenCV build only inpaints 8-bit images
        return _from_grey(cv2.inpaint(np.rint(grey).astype(np.uint8), mask, radius, flag))

    filled = _per_image(x, fill)
    out = x.copy()
    out[..., :blind_rows, :] = snap_no_echo(filled[..., :blind_rows, :])
    return out


def telea_fill(x: np.ndarray, blind_rows: int, radius: float = 5.0) -> np.ndarray:
    """OpenCV Telea (fast marching) inpainting of the blind zone."""
    return opencv_fill(x, blind_rows, "telea", radius)


def navier_stokes_fill(x: np.ndarray, blind_rows: int, radius: float = 5.0) -> np.ndarray:
    """OpenCV Navier-Stokes inpainting of the blind zone."""
    return opencv_fill(x, blind_rows, "ns", radius)


def run_baselines(x: np.ndarray, blind_rows: int, methods: tuple[str, ...] = BASELINES,
                  mar_window: int = 17, cv_radius: float = 5.0) -> dict[str, np.ndarray]:
    """Every requested baseline on the same input; ``{name: filled (..., row, col)}``."""
    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "REP": lambda a: repeat_fill(a, blind_rows),
        "MAR": lambda a: marching_average_fill(a, blind_rows, mar_window),
        "TELEA": lambda a: telea_fill(a, blind_rows, cv_radius),
        "NS": lambda a: navier_stokes_fill(a, blind_rows, cv_radius),
    }
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(table)}")
    return {m: table[m](x) for m in methods}
