"""Moist thermodynamics of the ERA-5 inputs (bzpipe.thermo) and the relative-humidity channel."""

from __future__ import annotations

import numpy as np
import pytest

from bzpipe.dataset.patches import PatchSet, model_era5_fields
from bzpipe.thermo import (
    humidity_feature,
    relative_humidity,
    representation_of,
    saturation_vapour_pressure,
    standard_pressure,
)


def test_saturation_vapour_pressure_against_tabulated_values() -> None:
    # Murphy & Koop (2005, QJRMS 131:1539) tables: ice at -20 degC 1.0326 hPa, -40 degC 0.1283 hPa;
    # water at +20 degC 23.39 hPa (the Tetens form of the IFS is within 0.5 % there)
    es = saturation_vapour_pressure(np.array([253.15, 233.15, 293.15]))
    np.testing.assert_allclose(es, [1.0326, 0.1283, 23.39], rtol=5e-3)
    # over ice below the triple point, over water above: continuous at 273.16 K
    assert saturation_vapour_pressure(273.159) == pytest.approx(saturation_vapour_pressure(273.161), rel=1e-3)


def test_standard_pressure_matches_the_icao_table() -> None:
    # ICAO Doc 7488: 1013.25 hPa at 0 m, 898.76 hPa at 1000 m, 540.20 hPa at 5000 m
    np.testing.assert_allclose(standard_pressure(np.array([0.0, 1000.0, 5000.0])), [1013.25, 898.76, 540.20],
                               rtol=2e-4)


def test_relative_humidity_inverts_specific_humidity() -> None:
    t = np.array([250.0, 260.0, 280.0])
    p = np.array([1000.0, 900.0, 850.0])
    rh = np.array([0.7, 1.05, 0.95])
    e = rh * saturation_vapour_pressure(t)
    q = 0.622 * e / (p - 0.378 * e)
    np.testing.assert_allclose(relative_humidity(t, q, p), rh, rtol=1e-10)


def test_humidity_feature_representations() -> None:
    t, q, z = np.array([[255.0]]), np.array([[8e-4]]), np.array([[100.0]])
    assert humidity_feature(t, q, z, "specific") is q
    rh = humidity_feature(t, q, z, "relative")
    assert rh == pytest.approx(relative_humidity(t, q, standard_pressure(z)))
    with pytest.raises(ValueError, match="humidity representation"):
        humidity_feature(t, q, z, "absolute")  # type: ignore[arg-type]
    assert representation_of({"mean": 1.0}) == "specific"                 # datasets built before the option
    assert representation_of({"transform": "relative_humidity_ice_below_0C"}) == "relative"


def test_dataset_fields_convert_only_q_at_each_rows_height_above_sea_level() -> None:
    rng = np.random.default_rng(0)
    era = np.stack([rng.uniform(240, 270, (2, 4, 3)), rng.uniform(2e-4, 2e-3, (2, 4, 3)),
                    rng.normal(0, 5, (2, 4, 3)), rng.normal(0, 5, (2, 4, 3))], axis=1).astype(np.float32)
    patches = PatchSet(days={}, sites=["nsa", "oli"], cols=[0, 0], width=3, n_heights=4, dz_m=100.0)
    assert model_era5_fields(era, patches, "specific") is era
    out = model_era5_fields(era, patches, "relative")
    np.testing.assert_array_equal(out[:, [0, 2, 3]], era[:, [0, 2, 3]])
    from bzpipe.config import resolve_site
    z = resolve_site("oli").elevation_m + 250.0          # sample 1, row 2 centre (2.5 x 100 m)
    want = relative_humidity(era[1, 0, 2, 1], era[1, 1, 2, 1], standard_pressure(z))
    assert out[1, 1, 2, 1] == pytest.approx(want, rel=1e-5)


def test_cloudsat_inputs_use_the_representation_the_dataset_recorded() -> None:
    from types import SimpleNamespace

    from bzpipe.infer.fill import model_inputs
    from bzpipe.infer.state import TrackState
    from bzpipe.schema import default_normalization
    from bzpipe.thermo import RELATIVE_HUMIDITY_TRANSFORM

    p, h = 3, 4
    heights = (np.arange(h) + 0.5) * 100.0
    curtain = SimpleNamespace(dbz=np.full((p, h), -20.0, np.float32), observed=np.ones((p, h), bool),
                              ground_m=np.array([0.0, 500.0, 1500.0]))
    fields = {"t": np.full((p, h), 255.0, np.float32), "q": np.full((p, h), 8e-4, np.float32),
              "u": np.zeros((p, h), np.float32), "v": np.zeros((p, h), np.float32)}
    state = TrackState(fields=fields, source=np.ones(p, np.int8))
    norm = default_normalization()
    for v in ("t", "u", "v"):
        norm[v] = {"mean": 0.0, "std": 1.0}
    norm["q"] = {"mean": 0.0, "std": 1.0}
    x = model_inputs(curtain, 5, state, norm, heights)
    np.testing.assert_allclose(x[2], 8e-4)                                 # specific: q standardized
    norm["q"] = {"mean": 0.5, "std": 0.25, "transform": RELATIVE_HUMIDITY_TRANSFORM}
    x = model_inputs(curtain, 5, state, norm, heights)
    z = curtain.ground_m[None, :] + heights[:, None]                        # (H, P): rows x profiles
    want = (relative_humidity(255.0, 8e-4, standard_pressure(z)) - 0.5) / 0.25
    np.testing.assert_allclose(x[2], want, rtol=1e-5)
    assert x[2, 0, 2] < x[2, 0, 0]       # same q and t, lower pressure over high ground: less vapour pressure
    with pytest.raises(ValueError, match="row heights"):
        model_inputs(curtain, 5, state, norm)
