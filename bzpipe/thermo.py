"""Moist thermodynamics of the ERA-5 inputs: saturation, standard pressure, relative and specific humidity.

The blind-zone processes the model has to infer (snow growing in an
ice-supersaturated boundary layer, snow sublimating in dry subcloud air, low
mixed-phase layers) depend on the air's saturation, not on its specific
humidity: at -25 degC a change of 1 K changes the saturation vapour pressure
over ice by about 9 %, as much as the whole supersaturation signal.  King et
al. (2024) standardize ``q`` linearly and leave the network to find
``q / q_sat(T, p)``; the dataset build can instead hand it the relative
humidity (``build.era5_humidity``, :data:`HUMIDITY_REPRESENTATIONS`), computed
here from the ERA-5 fields themselves, nothing else:

* saturation vapour pressure over ice below 0 degC and over water above, with
  the IFS constants (Tetens form; IFS Cy47r3 documentation Part IV, Sect. 12.6.1:
  ``e_s = 611.21 exp(a3 (T - 273.16) / (T - a4))``, water a3 = 17.502, a4 = 32.19 K,
  ice a3 = 22.587, a4 = -0.7 K), the convention ERA-5's own relative humidity uses;
* pressure from the ICAO standard atmosphere at the pixel's height above mean
  sea level (ICAO Doc 7488; ``p = 1013.25 (1 - 0.0065 z / 288.15) ** 5.25588`` hPa).
  The real surface pressure differs from it by about 1 % (sd), which changes
  the relative humidity by the same 1 %, well below ERA-5's own humidity errors;
* ``e = q p / (0.622 + 0.378 q)`` and ``RH = e / e_s``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

T0 = 273.16  #: K, triple point (the IFS's reference for the saturation formulas)
EPS = 0.622  #: R_d / R_v

#: How the dataset presents ERA-5 humidity to the network: ``"specific"`` (q, as King et al.; bzpipe
#: standardizes every ERA-5 channel where they scale it linearly onto a fixed range)
#: or ``"relative"`` (relative humidity from q, t and the standard pressure, then standardized).
HumidityRepresentation = Literal["specific", "relative"]
HUMIDITY_REPRESENTATIONS: tuple[str, ...] = ("specific", "relative")
#: the ``transform`` recorded in the ``normalization`` attribute for ``q`` when relative humidity is used
RELATIVE_HUMIDITY_TRANSFORM = "relative_humidity_ice_below_0C"


T_ICE = 250.16  #: K, below which the IFS mixed phase is all ice


def saturation_vapour_pressure_water(t_k: np.ndarray) -> np.ndarray:
    """HPa over liquid water (IFS constants, see module docstring)."""
    t_k = np.asarray(t_k, dtype=np.float64)
    return 6.1121 * np.exp(17.502 * (t_k - T0) / (t_k - 32.19))


def saturation_vapour_pressure_ice(t_k: np.ndarray) -> np.ndarray:
    """HPa over ice (IFS constants, see module docstring)."""
    t_k = np.asarray(t_k, dtype=np.float64)
    return 6.1121 * np.exp(22.587 * (t_k - T0) / (t_k + 0.7))


def saturation_vapour_pressure(t_k: np.ndarray) -> np.ndarray:
    """hPa; over ice below 273.16 K, over liquid water above."""
    t_k = np.asarray(t_k, dtype=np.float64)
    return np.where(t_k >= T0, saturation_vapour_pressure_water(t_k), saturation_vapour_pressure_ice(t_k))


def saturation_vapour_pressure_mixed(t_k: np.ndarray) -> np.ndarray:
    """hPa; the IFS mixed phase ERA-5's own relative humidity uses: water above 0 degC, ice below
    -23 degC, a quadratic blend between."""
    t_k = np.asarray(t_k, dtype=np.float64)
    alpha = np.clip((t_k - T_ICE) / (T0 - T_ICE), 0.0, 1.0) ** 2
    return alpha * saturation_vapour_pressure_water(t_k) + (1.0 - alpha) * saturation_vapour_pressure_ice(t_k)


def standard_pressure(z_msl_m: np.ndarray) -> np.ndarray:
    """HPa at height ``z_msl_m`` (m above mean sea level) in the ICAO standard atmosphere (troposphere)."""
    z = np.minimum(np.asarray(z_msl_m, dtype=np.float64), 11000.0)
    return 1013.25 * (1.0 - 0.0065 * z / 288.15) ** 5.25588


def specific_humidity(rh: np.ndarray, t_k: np.ndarray, p_hpa: np.ndarray) -> np.ndarray:
    """Kg kg-1 from relative humidity ``rh`` (fraction, reference as in :func:`saturation_vapour_pressure`),
    ``t`` K and pressure hPa: the inverse of :func:`relative_humidity`."""
    e = rh * saturation_vapour_pressure(t_k)
    return EPS * e / (p_hpa - (1.0 - EPS) * e)


def relative_humidity(t_k: np.ndarray, q: np.ndarray, p_hpa: np.ndarray) -> np.ndarray:
    """Relative humidity (fraction; over ice below 0 degC, over water above) from ``t`` K, ``q`` kg kg-1
    and pressure hPa.  NaN where any input is NaN."""
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, None)
    e = q * np.asarray(p_hpa, dtype=np.float64) / (EPS + (1.0 - EPS) * q)
    return e / saturation_vapour_pressure(t_k)


def humidity_feature(t_k: np.ndarray, q: np.ndarray, z_msl_m: np.ndarray,
                     representation: HumidityRepresentation) -> np.ndarray:
    """The humidity field the network sees before standardization (same shape as ``q``).

    ``"specific"``: ``q`` itself; ``"relative"``: :func:`relative_humidity` at the standard
    pressure of ``z_msl_m`` (broadcast against ``q``).
    """
    if representation == "specific":
        return np.asarray(q)
    if representation == "relative":
        return relative_humidity(t_k, q, standard_pressure(z_msl_m))
    raise ValueError(f"humidity representation must be one of {HUMIDITY_REPRESENTATIONS}, "
                     f"not {representation!r}")


def representation_of(entry: dict) -> HumidityRepresentation:
    """The representation a dataset's ``normalization["q"]`` entry records (older datasets: specific)."""
    return "relative" if entry.get("transform") == RELATIVE_HUMIDITY_TRANSFORM else "specific"
