"""The patches of a dataset build: which colocated data they come from, read and normalized.

A :class:`PatchSet` names a run of samples of one split (their sites and first columns, and the
colocated site-days they lie in, :class:`bzpipe.dataset.plan.DaySpan`); :func:`read_patches` reads
their raw values from the colocated stores, :func:`normalize` turns them into the model input ``x``
(the ``normalization`` attribute of the dataset says how).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from bzpipe.config import resolve_site
from bzpipe.schema import CHANNELS, ERA5_VARIABLES, dbz_to_norm
from bzpipe.store import Store
from bzpipe.thermo import HumidityRepresentation, humidity_feature

if TYPE_CHECKING:
    from bzpipe.dataset.plan import BuildPlan, DaySpan


@dataclass(frozen=True)
class PatchSet:
    """Samples to read: per sample its site and first global column; the site-days they lie in."""

    days: dict[str, list[DaySpan]]
    sites: list[str]
    cols: list[int]
    width: int
    n_heights: int
    dz_m: float = 0.0       #: row spacing, m (row centres at (i + 1/2) dz above ground)

    @classmethod
    def of(cls, plan: BuildPlan, split: str, start: int, stop: int) -> PatchSet:
        """Samples ``[start, stop)`` of ``split`` in ``plan``."""
        smp = plan.samples[split]
        sites = list(smp["site"][start:stop])
        return cls(days={s: plan.days[s] for s in set(sites)}, sites=sites, cols=list(smp["col"][start:stop]),
                   width=plan.width, n_heights=plan.n_heights, dz_m=plan.dz_m)

    def __len__(self) -> int:
        return len(self.cols)


def read_patches(store: Store, patches: PatchSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw patch data from the colocated stores.

    Returns ``refl`` float32 ``(n, row, col)`` dBZ (NaN: no echo or not
    measured), ``era`` float32 ``(n, 4, row, col)`` (t, q, u, v in ERA-5
    units) and ``measured`` bool ``(n, row)`` (row has radar gates).
    Each colocated day is read once, over the range its samples need.
    """
    n, width, n_heights = len(patches), patches.width, patches.n_heights
    refl = np.full((n, n_heights, width), np.nan, np.float32)
    era = np.full((n, len(ERA5_VARIABLES), n_heights, width), np.nan, np.float32)
    measured = np.zeros((n, n_heights), bool)
    pieces: dict[str, list[tuple[int, int, int, int]]] = {}  # key -> (sample, local0, local1, out0)
    for i, (site, c) in enumerate(zip(patches.sites, patches.cols, strict=True)):
        for key, c0, m, _low in patches.days[site]:
            a, b = max(c, c0), min(c + width, c0 + m)
            if b > a:
                pieces.setdefault(key, []).append((i, a - c0, b - c0, a - c))
    opts = store.storage_options or None
    for key, plist in pieces.items():
        lo = min(p[1] for p in plist)
        hi = max(p[2] for p in plist)
        with xr.open_zarr(store.uri(key), consolidated=True, chunks=None, storage_options=opts) as ds:
            part = ds[["reflectivity", *ERA5_VARIABLES, "n_gates"]].isel(time=slice(lo, hi)).load()
        r = part["reflectivity"].transpose("time", "height").values          # (T, R)
        e = np.stack([part[v].transpose("time", "height").values for v in ERA5_VARIABLES])  # (4, T, R)
        g = part["n_gates"].values > 0
        for i, l0, l1, o in plist:
            refl[i, :, o:o + l1 - l0] = r[l0 - lo:l1 - lo].T
            era[i, :, :, o:o + l1 - l0] = np.swapaxes(e[:, l0 - lo:l1 - lo], 1, 2)
            measured[i] |= g
    return refl, era, measured


def model_era5_fields(era: np.ndarray, patches: PatchSet, humidity: HumidityRepresentation) -> np.ndarray:
    """ERA-5 ``(n, 4, row, col)`` (t, q, u, v) as the network sees them before standardization.

    ``humidity="relative"`` replaces q by the relative humidity (:func:`bzpipe.thermo.humidity_feature`,
    at the standard pressure of each row's height above mean sea level: site elevation + row centre);
    ``"specific"`` returns ``era`` unchanged (q, as King et al. feed it).
    """
    if humidity == "specific":
        return era
    if not patches.dz_m > 0:
        raise ValueError("relative humidity needs the row spacing (PatchSet.dz_m) for the pressure")
    out = era.copy()
    rows = (np.arange(era.shape[2], dtype=np.float64) + 0.5) * patches.dz_m
    elev = np.array([resolve_site(s).elevation_m for s in patches.sites], dtype=np.float64)
    z_msl = (elev[:, None] + rows[None, :])[:, :, None]                         # (n, row, 1)
    iq, it = ERA5_VARIABLES.index("q"), ERA5_VARIABLES.index("t")
    out[:, iq] = humidity_feature(era[:, it], era[:, iq], z_msl, humidity).astype(np.float32)
    return out


def normalize(refl: np.ndarray, era: np.ndarray, measured: np.ndarray,
              norm: dict[str, dict[str, Any]]) -> np.ndarray:
    """``x`` float32 ``(n, channel, row, col)`` as documented in the ``normalization`` attribute.

    Reflectivity: :func:`bzpipe.schema.dbz_to_norm`; rows without radar gates
    take the value of the nearest measured row.  ERA-5: ``(value - mean) / std`` of the fields
    :func:`model_era5_fields` gives (``era`` already converted).
    """
    n, rows, width = refl.shape
    x = np.empty((n, len(CHANNELS), rows, width), np.float32)
    r = dbz_to_norm(refl)
    for i in range(n):
        m = np.flatnonzero(measured[i])
        if m.size and m.size < rows:
            nearest = m[np.argmin(np.abs(np.arange(rows)[:, None] - m[None, :]), axis=1)]
            r[i] = r[i][nearest]
    x[:, 0] = r
    for k, v in enumerate(ERA5_VARIABLES):
        x[:, CHANNELS.index(v)] = (era[:, k] - norm[v]["mean"]) / norm[v]["std"]
    return x
