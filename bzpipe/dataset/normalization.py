"""The dataset's ``normalization`` attribute: the reflectivity mapping and ERA-5 mean / std per channel.

The ERA-5 statistics are taken over every pixel of the TRAINING patches only, one Dask task per
region of samples (:class:`bzpipe.dataset.patches.PatchSet`), and combined with Chan's parallel
algorithm, so they do not depend on how the samples are split into regions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from bzpipe.cluster import current_client
from bzpipe.dataset.patches import PatchSet, model_era5_fields, read_patches
from bzpipe.schema import ERA5_VARIABLES, default_normalization
from bzpipe.store import Store
from bzpipe.thermo import RELATIVE_HUMIDITY_TRANSFORM, HumidityRepresentation

if TYPE_CHECKING:
    from bzpipe.dataset.plan import BuildPlan

log = logging.getLogger("bzpipe.dataset")

ERA5_UNITS = {"t": "K", "q": "kg kg-1", "u": "m s-1", "v": "m s-1"}

#: (count, mean, sum of squared deviations) of one variable
Moments = tuple[int, float, float]


def regions(n: int, size: int) -> list[tuple[int, int, int]]:
    """``(index, start, stop)`` of the regions of ``size`` samples that cover ``n`` samples."""
    return [(i, a, min(a + size, n)) for i, a in enumerate(range(0, n, size))]


def region_moments(store_root: str, patches: PatchSet,
                   humidity: HumidityRepresentation = "specific") -> dict[str, Moments]:
    """(count, mean, M2) of each ERA-5 model field (:func:`~bzpipe.dataset.patches.model_era5_fields`)
    over the pixels of these samples."""
    _, era, _ = read_patches(Store(store_root), patches)
    era = model_era5_fields(era, patches, humidity)
    out = {}
    for k, v in enumerate(ERA5_VARIABLES):
        a = era[:, k].astype(np.float64).ravel()
        a = a[np.isfinite(a)]
        mean = float(a.mean()) if a.size else 0.0
        out[v] = (int(a.size), mean, float(np.sum((a - mean) ** 2)))
    return out


def combine(m1: Moments, m2: Moments) -> Moments:
    """The moments of two sets of values together (Chan et al.)."""
    n1, a1, q1 = m1
    n2, a2, q2 = m2
    n = n1 + n2
    if n == 0:
        return (0, 0.0, 0.0)
    d = a2 - a1
    return (n, a1 + d * n2 / n, q1 + q2 + d * d * n1 * n2 / n)


def era5_normalization(store_root: str, plan: BuildPlan, region_samples: int,
                       humidity: HumidityRepresentation = "specific") -> dict[str, dict[str, Any]]:
    """The ``normalization`` attribute: reflectivity mapping + ERA-5 mean / std of the TRAINING split
    (of q as relative humidity when ``humidity="relative"``, recorded as the entry's ``transform``)."""
    n_train = plan.n_samples("train")
    if not n_train:
        raise ValueError("the training split is empty: no ERA-5 statistics (and nothing to train on); "
                         "check the cold filter, the split fractions and the input period")
    parts_in = [PatchSet.of(plan, "train", a, b) for _, a, b in regions(n_train, region_samples)]
    client = current_client()
    if client is None:
        parts = [region_moments(store_root, p, humidity) for p in parts_in]
    else:
        parts = client.gather(client.map(region_moments, [store_root] * len(parts_in), parts_in,
                                         [humidity] * len(parts_in), pure=False))
    norm: dict[str, dict[str, Any]] = default_normalization()
    norm["reflectivity"].update({
        "method": "dbz_to_norm",
        "formula": "lo + (clip(dBZ, dbz_min, dbz_max) - dbz_min) * (hi - lo) / (dbz_max - dbz_min); "
                   "no echo or dBZ < dbz_min -> no_echo",
        "averaging": "linear Z (not dBZ) over the gates and profiles of each grid cell",
        "unmeasured_rows": "rows without radar gates take the value of the nearest measured row "
                           "(per-sample coordinate lowest_measured_row)"})
    for v in ERA5_VARIABLES:
        tot: Moments = (0, 0.0, 0.0)
        for p in parts:
            tot = combine(tot, tuple(p[v]))  # type: ignore[arg-type]
        n, mean, m2 = tot
        std = float(np.sqrt(m2 / n)) if n else 1.0
        if not std > 0:
            log.warning("ERA-5 %s is constant over the training split; std set to 1", v)
            std = 1.0
        norm[v] = {"mean": float(mean), "std": std, "units": ERA5_UNITS[v], "method": "standardize",
                   "formula": "(value - mean) / std", "computed_on": "train", "n_pixels": int(n)}
    if humidity == "relative":
        norm["q"].update({"units": "1", "transform": RELATIVE_HUMIDITY_TRANSFORM, "comment": (
            "channel q holds the relative humidity (over ice below 0 degC, over water above) computed from "
            "ERA-5 q and t at the ICAO standard pressure of the row's height above mean sea level "
            "(bzpipe.thermo), then standardized")})
    return norm


#: reflectivity mapping fields that must agree for two datasets' reflectivity channels to be the same numbers
_REFLECTIVITY_KEYS = ("dbz_min", "dbz_max", "lo", "hi", "no_echo")


def renormalization(source: dict[str, Any], target: dict[str, Any], channels: list[str] | tuple[str, ...],
                    where: str = "") -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel ``(scale, offset)`` that maps values normalized with ``source`` to ``target``:
    ``x_target = x_source * scale + offset`` (exact for standardized channels), or None when the
    two agree on every channel (nothing to do).

    A model trained on one dataset sees another dataset's patches (another winter, a rebuilt
    version) in its own normalization this way.  Raises :class:`~bzpipe.errors.DatasetMismatchError`
    naming the channel where the mapping cannot be linear: a different reflectivity mapping, method,
    transform (e.g. specific against relative humidity) or units, or a channel missing from either.
    """
    from bzpipe.errors import DatasetMismatchError

    scale, offset = np.ones(len(channels)), np.zeros(len(channels))
    for k, c in enumerate(channels):
        src, dst = source.get(c), target.get(c)
        if src is None or dst is None:
            raise DatasetMismatchError(f"{where}: channel {c!r} has no normalization in the "
                                       f"{'dataset' if src is None else 'model'}")
        if src == dst:
            continue
        if c == "reflectivity":
            diff = [key for key in _REFLECTIVITY_KEYS
                    if not np.isclose(src.get(key, np.nan), dst.get(key, np.nan))]
            if diff:
                raise DatasetMismatchError(f"{where}: the reflectivity mapping differs from the model's in "
                                           f"{', '.join(diff)}")
            continue
        for key in ("method", "transform", "units"):
            if src.get(key) != dst.get(key):
                raise DatasetMismatchError(f"{where}: channel {c!r} has {key} {src.get(key)!r}, the model "
                                           f"{dst.get(key)!r}: no linear map between them")
        if src.get("method", "standardize") != "standardize" or not {"mean", "std"} <= set(src) & set(dst):
            raise DatasetMismatchError(f"{where}: channel {c!r}: normalization {src.get('method')!r} is not "
                                       "a standardization with a mean and a std")
        scale[k] = float(src["std"]) / float(dst["std"])
        offset[k] = (float(src["mean"]) - float(dst["mean"])) / float(dst["std"])
    if np.allclose(scale, 1.0, rtol=0, atol=1e-12) and np.allclose(offset, 0.0, rtol=0, atol=1e-12):
        return None
    return scale, offset
