"""The CloudSat blind zone per profile: clutter never reaches a row the model sees, nor the filled value.

The issue's case: the clutter-flagged bins at +20 dBZ, everything else clear.  With the old fixed
``ceil(1200 / 78.125) = 16`` hidden rows, the top flagged bin (1128-1368 m) fed rows 16-17 (20 and
17.1 dBZ) to the model as observations, and the filled bin averaged them in (16.1 dBZ after an
all-clear prediction).  Now every row that overlaps a flagged bin is hidden and a filled bin is the
prediction alone: with a model that predicts "clear", nothing of the +20 dBZ is left anywhere.
Checked on a hand-made profile (the issue's numbers), the real R05 2B-CLDCLASS geometry and the
synthetic 2B-GEOPROF granule (with ``SurfaceHeightBin``).
"""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from bzpipe.config import InferConfig, SyntheticConfig
from bzpipe.infer.curtain import clutter_depth, to_model_grid
from bzpipe.infer.fill import fill_granule
from bzpipe.infer.geometry import ModelGrid
from bzpipe.schema import default_normalization

REAL_GRANULE = "cloudsat/2019002175851_67551_CS_2B-CLDCLASS_GRANULE_P1_R05_E08_F03.hdf"
GRID = ModelGrid(128, 10000.0)                                   # 78.125 m rows, as in the paper


class ClearModel(nn.Module):
    """Predicts "no echo" everywhere and keeps every input it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.full_like(x[:, :1], -1.0) + 0.0 * self.p


META = {"channels": ["reflectivity"], "channel_set": "3+_1", "normalization": default_normalization(),
        "grid": {"n_heights": GRID.n_heights, "top_m": GRID.top_m}, "patch": {"width": 64},
        "build": {"forward_operator": {"enabled": True}, "cold_threshold_c": None, "sites": ["nsa", "oli"]}}


def clutter_case(ds: xr.Dataset, cfg: InferConfig) -> tuple[xr.Dataset, ClearModel, np.ndarray]:
    """+20 dBZ in exactly the flagged bins, clear elsewhere; filled by the all-clear model (wherever the
    profile is: the training domain is not what is tested here)."""
    cfg = cfg.model_copy(update={"fill_out_of_domain": True})
    curtain = to_model_grid(ds, GRID, clutter_depth(ds, cfg.blind_zone_m, cfg.blind_zone_ocean_m),
                            dbz=np.zeros((ds.sizes["profile"], ds.sizes["bin"])), surface_from=cfg.surface_from)
    refl = np.where(curtain.blind_bins, 20.0, np.nan).astype(np.float32)
    model = ClearModel()
    out = fill_granule(ds, model, META, cfg, reflectivity=refl, model_id="clear")
    return out, model, curtain.blind_bins


def assert_no_trace(out: xr.Dataset, model: ClearModel, blind: np.ndarray) -> None:
    valid = out["profile_valid"].values.astype(bool)
    assert valid.any() and (out["blind_zone_flag"].values == blind).all()
    # 1. the model never saw the clutter: every pixel it was shown (mask 0) is "no echo" (-1)
    assert model.seen
    for x in model.seen:
        shown = x[:, -1] == 0
        assert shown.any() and (x[:, 0][shown] == -1.0).all()
    # 2. the hidden rows cover every flagged bin: the observed +20 dBZ ends below them
    hidden = out["hidden_rows"].values
    obs = out["grid_observed"].values
    above = np.arange(GRID.n_heights)[None, :] >= hidden[:, None]
    assert np.isnan(obs[above]).all()
    # 3. nothing of it in the output: flagged bins are the (clear) prediction, all rows above are clear
    filled = out["filled_flag"].values.astype(bool)
    assert (filled == (blind & valid[:, None])).all()
    assert np.isnan(out["reflectivity_filled"].values[blind]).all()
    assert np.isnan(out["mc_mean"].values[valid]).all()
    assert np.isnan(out["reflectivity_filled"].values[~blind]).all()


def test_the_issue_case_by_hand():
    """Ocean profile, ground at 0 m, bin centres ..., 1008, 1248, 1488 m: bins 99-104 are flagged
    (bottom edge below 1200 m), the top one spanning 1128-1368 m."""
    n, nbin = 70, 125
    height = np.broadcast_to(1248.0 + 240.0 * (99 - np.arange(nbin)), (n, nbin)).astype(np.float32)
    ds = xr.Dataset({"height": (("profile", "bin"), height), "dem_elevation": ("profile", np.zeros(n)),
                     "land_sea_flag": ("profile", np.full(n, 2, np.uint8)),
                     "latitude": ("profile", np.full(n, 71.0)), "longitude": ("profile", np.full(n, -156.0)),
                     "time": ("profile", np.datetime64("2019-01-02T12:00") + np.arange(n) * np.timedelta64(160, "ms"))},
                    coords={"profile": np.arange(n), "bin": np.arange(nbin)})
    cfg = InferConfig(mc_passes=2, window_overlap=16, surface_from="dem")
    out, model, blind = clutter_case(ds, cfg)
    assert set(np.flatnonzero(blind[0])) == set(range(99, 105))
    # the observed curtain: rows 14..19 of [20, 20, 20, 17.1, nan, nan] (row 17, 1328.1-1406.25 m, has
    # 1368 - 1328.125 = 39.875 m of the bin: 10 log10(100 * 39.875 / 78.125) = 17.079 dBZ)
    np.testing.assert_allclose(out["grid_observed"].values[0, 14:18], [20, 20, 20, 17.0791], atol=1e-3)
    assert np.isnan(out["grid_observed"].values[0, 18:20]).all()
    # the old fixed 16 rows would have shown rows 16-17; now all 18 rows up to 1406 m are hidden
    assert GRID.blind_rows(1200.0) == 16 and (out["hidden_rows"].values == 18).all()
    assert_no_trace(out, model, blind)


def test_no_trace_above_the_mask_on_the_real_cldclass_geometry(shared_data, caplog):
    from bzpipe.sources.cloudsat import read_granule

    ds = read_granule(shared_data / REAL_GRANULE, require_reflectivity=False)
    dem, lsf = ds["dem_elevation"].values, ds["land_sea_flag"].values
    ok = np.isfinite(ds["height"].values).all(1)
    starts = [i for i in range(0, ds.sizes["profile"] - 3000, 500)        # mountains, plains and ocean
              if ok[i:i + 3000].all() and (lsf[i:i + 3000] == 2).any() and (dem[i:i + 3000] > 800).any()]
    sel = ds.isel(profile=slice(starts[0], starts[0] + 3000))
    cfg = InferConfig(mc_passes=2, window_overlap=16, blind_zone_ocean_m=960.0)
    with caplog.at_level(logging.WARNING, logger="bzpipe.infer.curtain"):
        out, model, blind = clutter_case(sel, cfg)
    assert "has no SurfaceHeightBin: the surface bin comes from the DEM" in caplog.text
    assert REAL_GRANULE.split("/")[1] in caplog.text
    valid = out["profile_valid"].values.astype(bool)
    assert (out["surface_source"].values[valid] == 2).all()
    hidden = out["hidden_rows"].values[valid]
    ocean = sel["land_sea_flag"].values[valid] == 2
    assert ocean.any() and (~ocean).any()
    assert hidden[~ocean].min() >= 16 and hidden[ocean].min() >= 13        # at least ceil(depth / 78.125 m)
    assert hidden[~ocean].max() > 16                                        # deeper than the old 16 rows
    np.testing.assert_array_equal(out["clutter_depth"].values[valid], np.where(ocean, 960.0, 1200.0))
    n_flag = blind[valid].sum(1)
    assert n_flag[ocean].max() < n_flag[~ocean].min() + 1                    # a shallower blind zone at sea
    assert_no_trace(out, model, blind)


def test_no_trace_above_the_mask_on_the_synthetic_granule_with_surface_height_bin(tmp_path, caplog):
    from bzpipe.sources.cloudsat import read_granule
    from bzpipe.sources.synthetic import generate_cloudsat_granule
    from bzpipe.sources.synthetic.cloudsat import geoprof_arrays

    path = generate_cloudsat_granule(tmp_path, datetime(2019, 1, 2, 12), 400, 3, SyntheticConfig(), site="nsa",
                                     ecmwf_aux=False)
    ds = read_granule(path)
    arr = geoprof_arrays(datetime(2019, 1, 2, 12), 400, 3, "nsa")
    np.testing.assert_array_equal(ds["surface_height_bin"].values, arr["surface_height_bin"])   # 1-based on disk
    cfg = InferConfig(mc_passes=2, window_overlap=16)
    with caplog.at_level(logging.WARNING, logger="bzpipe.infer.curtain"):
        out, model, blind = clutter_case(ds, cfg)
    assert "SurfaceHeightBin" not in caplog.text
    assert (out["surface_source"].values == 1).all()
    np.testing.assert_array_equal(out["surface_bin"].values, arr["surface_height_bin"])
    assert_no_trace(out, model, blind)


def test_surface_height_bin_places_the_ground_within_its_bin():
    from bzpipe.infer.geometry import bin_edges, ground_in_bin

    h = np.array([[720.0, 480.0, 240.0, 0.0, -240.0]] * 3)
    e = bin_edges(h)
    g = ground_in_bin(h, np.array([3, 2, -1]), np.array([50.0, 500.0, 10.0]))
    assert g[0] == 50.0                                   # the DEM inside the bin
    assert g[1] == e[1, 2]                                # a DEM above the bin is clamped to its top (360 m)
    assert np.isnan(g[2])                                 # no surface bin
    assert ground_in_bin(h[:1], np.array([3]))[0] == 0.0  # no DEM: the bin centre


@pytest.mark.parametrize("depth_ocean", [None, 720.0])
def test_clutter_depth_over_land_and_ocean(depth_ocean):
    ds = xr.Dataset({"land_sea_flag": ("profile", np.array([1, 2, 3, 2], np.uint8))})
    d = clutter_depth(ds, 1200.0, depth_ocean)
    np.testing.assert_array_equal(d, [1200.0, depth_ocean or 1200.0, 1200.0, depth_ocean or 1200.0])


def test_a_geoprof_granule_without_surface_height_bin_falls_back_to_the_dem(tmp_path, caplog):
    from _infer_helpers import write_granule

    from bzpipe.sources.cloudsat import read_granule

    path = write_granule(tmp_path, n=40, land_from=20)            # the writer adds no SurfaceHeightBin
    ds = read_granule(path)
    assert "surface_height_bin" not in ds
    with caplog.at_level(logging.WARNING, logger="bzpipe.infer.curtain"):
        c = to_model_grid(ds, GRID, 1200.0)
    assert f"{path} has no SurfaceHeightBin: the surface bin comes from the DEM" in caplog.text
    assert (c.surface_source == 2).all()
    np.testing.assert_array_equal(c.ground_m, np.r_[np.zeros(20), np.full(20, 300.0)])
    with caplog.at_level(logging.WARNING, logger="bzpipe.infer.curtain"):
        caplog.clear()
        to_model_grid(ds, GRID, 1200.0, surface_from="dem")      # asked for the DEM: no warning
    assert "SurfaceHeightBin" not in caplog.text
