"""The atmospheric state along a CloudSat track, where it comes from, and the training domain.

A 5-channel model needs ERA-5-like temperature, specific humidity and u / v wind on its rows at
every profile.  Sources, tried in the order of ``infer.atmosphere_sources``:

``ecmwf_aux``
    the granule's ECMWF-AUX companion (:func:`bzpipe.sources.cloudsat.read_ecmwf_aux`): the ECMWF
    analysis on the fixed ``EC_height`` bins of every profile, interpolated linearly in height above
    the profile's ground onto the model rows (held constant below the lowest level with data).
``era5``
    ERA-5 pressure levels covering the profile (:func:`bzpipe.infer.era5_track.colocate_many`): the
    stored site boxes, and the boxes along the track fetched for the granule.

A profile that no source covers has no state: ``atmosphere_source`` 0.  It is never given the
training mean; :mod:`bzpipe.infer.fill` leaves it unfilled (or fills it with a configured
radar-only model).

The training domain (:func:`training_domain`): the cold threshold the training samples passed
(``build.cold_threshold_c``: surface air colder than it) and the latitudes of the training sites
(widened by ``infer.domain_latitude_margin_deg``).  :func:`domain_flags` marks the profiles
outside it; the surface air temperature of a profile is its state's temperature in the lowest
model row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.config import resolve_site
from bzpipe.forward.dataset import config_values
from bzpipe.infer.era5_track import colocate_many
from bzpipe.infer.regrid import apply_index, interp_index
from bzpipe.schema import ERA5_VARIABLES

log = logging.getLogger(__name__)

SOURCE_NONE, SOURCE_ECMWF_AUX, SOURCE_ERA5 = 0, 1, 2
SOURCE_CODES = {"ecmwf_aux": SOURCE_ECMWF_AUX, "era5": SOURCE_ERA5}
SOURCE_MEANINGS = "none ecmwf_aux era5"
#: ECMWF-AUX variable of each model channel
AUX_VARIABLES = {"t": "temperature", "q": "specific_humidity", "u": "u", "v": "v"}
WARM, OUTSIDE_LATITUDES = 1, 2
DOMAIN_MEANINGS = ("in_training_domain warmer_than_training_cold_threshold outside_training_latitude_band "
                   "warmer_and_outside_training_latitude_band")


@dataclass
class TrackState:
    """t, q, u, v (P, H) in K, kg kg-1, m s-1 on the model rows (NaN where no source), and
    ``source`` (P,) int8 (:data:`SOURCE_MEANINGS`)."""

    fields: dict[str, np.ndarray]
    source: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        return self.source != SOURCE_NONE


def ecmwf_aux_on_rows(aux: xr.Dataset, ground_m: np.ndarray, heights_agl: np.ndarray
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The ECMWF-AUX state on the model rows: ``({t, q, u, v: (P, H)}, covered (P,))``.

    Level heights above ground are ``EC_height - ground``; each variable is interpolated linearly
    to the row centres ``heights_agl``, held constant below the lowest level with data (under the
    ground the product has fill or extrapolated values) and above the highest.  A profile is
    covered when every variable has data at the levels that bracket every row.
    """
    ech = np.asarray(aux["ec_height"].values, np.float64)                       # (K,) m MSL, top first
    g = np.asarray(ground_m, np.float64)
    order = np.argsort(ech)                                                      # increasing height
    agl = ech[order][None, :] - g[:, None]                                       # (P, K)
    ok_h = np.isfinite(agl).all(axis=1)
    agl = np.where(np.isfinite(agl), agl, 0.0)
    k, t = interp_index(np.asarray(heights_agl, np.float64), np.maximum.accumulate(agl, axis=1))
    out: dict[str, np.ndarray] = {}
    covered = ok_h & np.isfinite(g)
    for name, var in AUX_VARIABLES.items():
        vals = np.asarray(aux[var].values, np.float64)[:, order]                # (P, K) increasing
        vals = _hold_below(vals)
        bracket = np.take_along_axis(vals, k, 1), np.take_along_axis(vals, k + 1, 1)
        covered &= np.isfinite(bracket[0]).all(axis=1) & np.isfinite(bracket[1]).all(axis=1)
        out[name] = apply_index(k, t, vals).astype(np.float32)
    for name in out:
        out[name][~covered] = np.nan
    return out, covered


def track_state(ds: xr.Dataset, ground_m: np.ndarray, valid: np.ndarray, heights_agl: np.ndarray,
                sources: Sequence[str], *, aux: xr.Dataset | None = None,
                era5: Sequence[xr.Dataset] | None = None) -> TrackState:
    """The state of every valid profile from the first source (in ``sources`` order) that covers it."""
    p, h = ds.sizes["profile"], len(heights_agl)
    fields = {v: np.full((p, h), np.nan, np.float32) for v in ERA5_VARIABLES}
    source = np.zeros(p, np.int8)
    need = np.asarray(valid, bool).copy()
    for name in sources:
        if not need.any():
            break
        if name == "ecmwf_aux" and aux is not None:
            got, cov = ecmwf_aux_on_rows(aux, ground_m, heights_agl)
            take = need & cov
            for v in ERA5_VARIABLES:
                fields[v][take] = got[v][take]
        elif name == "era5" and era5:
            idx = np.flatnonzero(need)
            got, cov_sub = colocate_many(list(era5), ds["time"].values[idx], ds["latitude"].values[idx],
                                         ds["longitude"].values[idx], np.asarray(ground_m)[idx], heights_agl,
                                         ERA5_VARIABLES)
            cov_sub &= np.isfinite(np.stack([got[v] for v in ERA5_VARIABLES])).all(axis=(0, 2))
            take = np.zeros(p, bool)
            take[idx[cov_sub]] = True
            for v in ERA5_VARIABLES:
                fields[v][idx[cov_sub]] = got[v][cov_sub]
        else:
            continue
        source[take] = SOURCE_CODES[name]
        need &= ~take
    return TrackState(fields=fields, source=source)


def context_fill(fields: dict[str, np.ndarray], covered: np.ndarray) -> dict[str, np.ndarray]:
    """Profiles without a state take the state of the nearest covered profile along the track.

    Only as *context* for a neighbouring profile's prediction inside the same window: a profile
    filled this way is never filled itself (:mod:`bzpipe.infer.fill`).  Unchanged if none is covered.
    """
    cov = np.asarray(covered, bool)
    if cov.all() or not cov.any():
        return fields
    src = np.flatnonzero(cov)
    idx = np.arange(cov.size)
    pos = np.clip(np.searchsorted(src, idx), 1, max(src.size - 1, 1)) if src.size > 1 else np.zeros_like(idx)
    if src.size > 1:
        pos = np.where(np.abs(idx - src[pos - 1]) <= np.abs(src[pos] - idx), pos - 1, pos)
    near = src[pos]
    return {k: np.where(cov[:, None], a, a[near]) for k, a in fields.items()}


# --------------------------------------------------------------------------- the training domain


@dataclass(frozen=True)
class TrainingDomain:
    """Where the model was trained: the cold threshold (degC, None = no filter) and latitude band."""

    cold_threshold_c: float | None
    lat_min: float | None
    lat_max: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"cold_threshold_c": self.cold_threshold_c, "latitude_band": [self.lat_min, self.lat_max]}


def training_domain(margin_deg: float, *metas: dict[str, Any]) -> TrainingDomain:
    """The :class:`TrainingDomain` from a checkpoint's ``build`` record (or the training dataset's
    build config); unknown parts are None (and not checked)."""
    build: dict[str, Any] = {}
    for m in metas:
        for cand in (m.get("build"), config_values(m.get("config"))):
            if isinstance(cand, dict) and ("cold_threshold_c" in cand or "sites" in cand):
                build = cand
                break
        if build:
            break
    cold = build.get("cold_threshold_c")
    lats = []
    for s in build.get("sites") or []:
        try:
            lats.append(resolve_site(s).latitude)
        except Exception:  # noqa: BLE001 - a site that no longer resolves leaves the band unknown
            lats = []
            break
    if not build:
        log.warning("the model's metadata does not record its training domain: no out_of_domain flags")
    return TrainingDomain(cold_threshold_c=None if cold is None else float(cold),
                          lat_min=min(lats) - margin_deg if lats else None,
                          lat_max=max(lats) + margin_deg if lats else None)


def domain_flags(domain: TrainingDomain, surface_t_k: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """(P,) int8: 1 warmer than the cold threshold, 2 outside the latitude band, 3 both, 0 inside
    (:data:`DOMAIN_MEANINGS`).  An unknown temperature (NaN) does not count as warm."""
    t_c = np.asarray(surface_t_k, np.float64) - 273.15
    lat = np.asarray(latitude, np.float64)
    flag = np.zeros(lat.shape, np.int8)
    if domain.cold_threshold_c is not None:
        with np.errstate(invalid="ignore"):
            flag |= np.where(t_c >= domain.cold_threshold_c, WARM, 0).astype(np.int8)
    if domain.lat_min is not None and domain.lat_max is not None:
        flag |= np.where((lat < domain.lat_min) | (lat > domain.lat_max), OUTSIDE_LATITUDES,
                         0).astype(np.int8)
    return flag


# --------------------------------------------------------------------------- helpers


def _hold_below(vals: np.ndarray) -> np.ndarray:
    """Per row (levels increasing): NaNs below the lowest finite level take its value."""
    ok = np.isfinite(vals)
    first = np.argmax(ok, axis=1)
    lowest = np.take_along_axis(vals, first[:, None], 1)
    below = np.arange(vals.shape[1])[None, :] < first[:, None]
    return np.where(below & ok.any(axis=1)[:, None], lowest, vals)

