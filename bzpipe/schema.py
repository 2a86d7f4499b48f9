"""The data contract between stages: names, dimensions, units and normalization.

Readers (``bzpipe.sources``) return Datasets in these shapes, colocation and
the dataset build consume them, and training / evaluation / inference read the
Zarr dataset laid out as below.

Radar curtain (ground radar, from ``bzpipe.sources.arm``)
    dims ``(time, height)``; ``time`` datetime64[ns] UTC, ``height`` m above
    ground level (float64, increasing). Variable ``reflectivity`` (float32,
    dBZ; NaN where no echo was detected or the gate is missing). attrs: ``site``,
    ``datastream``, ``source_file``, ``latitude``, ``longitude``, ``altitude``
    (m above MSL).

ERA-5 on pressure levels (``bzpipe.sources.era5``)
    dims ``(time, pressure_level, latitude, longitude)`` (``pressure_level``
    in hPa, decreasing; ``latitude`` decreasing as in ERA-5); variables
    ``t`` K, ``q`` kg kg-1, ``u`` m s-1, ``v`` m s-1, ``z`` m2 s-2 (geopotential).
    A model-level column (IFS) comes as dims ``(time, level)`` with a
    ``height`` variable (m above ground) instead of ``z``.

CloudSat granule (``bzpipe.sources.cloudsat``)
    dims ``(profile, bin)``; ``bin`` 0 is the top of the profile (as in the
    product). Variables ``reflectivity`` dBZ (NaN fill), ``height`` m above MSL,
    ``cloud_mask`` (int8, 0-40), ``latitude``, ``longitude``, ``time``
    (datetime64 per profile), ``dem_elevation`` m, ``land_sea_flag``.
    attrs ``granule_id``, ``orbit``, ``release``, ``product``, ``source_file``.

Zarr dataset (``datasets/<version>.zarr``, groups ``train``, ``val``, ``test``)
    variable ``x`` float32 ``(sample, channel, row, col)``; ``row`` 0 is the
    lowest height bin (surface), ``col`` is time.  ``channel`` coordinate holds
    :data:`CHANNELS`; values are normalized (see below) and NOT masked: the blind
    zone is masked at training / evaluation time by :mod:`bzpipe.masking`.
    Per-sample coordinates ``site`` (str), ``time_start`` (datetime64),
    ``season`` (DJF, MAM, JJA, SON). Coordinate ``height`` (row centres, m AGL).
    Root attrs: ``normalization`` (JSON, :func:`default_normalization` plus the
    ERA-5 ``mean``/``std`` from the training split), ``blind_zone_rows``,
    ``channels``, ``config``, ``provenance``.

Tensors
    ``(batch, channel, row, col)``, row 0 = surface, as in the Zarr dataset.
"""

from __future__ import annotations

import numpy as np

#: Input channels of the 5-channel model ("3+_5"); the 1-channel model ("3+_1") uses the first.
CHANNELS: tuple[str, ...] = ("reflectivity", "t", "q", "u", "v")
ERA5_VARIABLES: tuple[str, ...] = ("t", "q", "u", "v")

DBZ_MIN = -60.0
DBZ_MAX = 30.0
NORM_LO = -0.5
NORM_HI = 1.0
NO_ECHO = -1.0
#: normalized values below this (midway between no echo and the weakest echo, -60 dBZ) are no echo
NO_ECHO_MIDPOINT = (NO_ECHO + NORM_LO) / 2
#: dBZ per normalized unit in the echo range (90 dBZ over 1.5 units): an MC spread of the
#: normalized output times this is a spread in dB
DBZ_PER_NORM = (DBZ_MAX - DBZ_MIN) / (NORM_HI - NORM_LO)

G0 = 9.80665  # m s-2, standard gravity (ERA-5 geopotential -> geopotential height)


def dbz_to_norm(dbz: np.ndarray) -> np.ndarray:
    """DBZ in [-60, 30] -> [-0.5, 1]; NaN (no echo) and values below -60 dBZ -> -1."""
    dbz = np.asarray(dbz, dtype=np.float32)
    clipped = np.clip(dbz, DBZ_MIN, DBZ_MAX)
    out = NORM_LO + (clipped - DBZ_MIN) * ((NORM_HI - NORM_LO) / (DBZ_MAX - DBZ_MIN))
    return np.where(np.isnan(dbz) | (dbz < DBZ_MIN), NO_ECHO, out).astype(np.float32)


def norm_to_dbz(norm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dbz_to_norm`; values below the no-echo midpoint -> NaN."""
    norm = np.asarray(norm, dtype=np.float32)
    dbz = DBZ_MIN + (np.clip(norm, NORM_LO, NORM_HI) - NORM_LO) * ((DBZ_MAX - DBZ_MIN) / (NORM_HI - NORM_LO))
    return np.where(norm < NO_ECHO_MIDPOINT, np.nan, dbz).astype(np.float32)


def default_normalization() -> dict[str, dict[str, float]]:
    return {"reflectivity": {"dbz_min": DBZ_MIN, "dbz_max": DBZ_MAX, "lo": NORM_LO,
                             "hi": NORM_HI, "no_echo": NO_ECHO}}
