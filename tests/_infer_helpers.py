"""Test inputs for the CloudSat inference tests: a tiny stored checkpoint and small real-format granules.

The model is a real (untrained) UNet3+ with filters (4, 8, 8, 8, 8), saved through
``bzpipe.checkpoint.save_checkpoint`` like a trained one; its metadata carries the
grid and patch width the inference reads.  Granules are written with the synthetic
HDF-EOS2 writer (``bzpipe.sources.synthetic.cloudsat_hdf.write_geoprof_granule``), so
they go through the real reader.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

BIN_M = 240.0
NBIN = 125
TOP_CENTRE_M = 24960.0   # bin 104 is centred on 0 m MSL, as over the ocean in real granules


def save_tiny_model(store_root: str | Path, run_name: str = "tiny", *, channels: int = 1, n_heights: int = 32,
                    top_m: float = 5000.0, width: int = 64, seed: int = 0, dropout: float = 0.2,
                    normalization: dict | None = None, cpr_resolution: bool = True,
                    cold_threshold_c: float | None = -2.0) -> str:
    """Save an untrained tiny UNet3+ as ``models/<run_name>/checkpoint-best.pt``; return its model id.

    Its ``build`` record says it was trained on a CPR-resolution dataset (``cpr_resolution``; False:
    KaZR resolution) at NSA and OLI with the given cold threshold.
    """
    import torch

    from bzpipe.checkpoint import load_model, mark_finished, save_checkpoint
    from bzpipe.config import TrainConfig, config_record
    from bzpipe.model.unet3plus import UNet3Plus, UNet3PlusConfig
    from bzpipe.schema import CHANNELS, default_normalization
    from bzpipe.store import Store
    from bzpipe.store.layout import checkpoint_key

    # output bias 0 (about -20 dBZ): the untrained model predicts echo, so its MC passes differ
    mc = UNet3PlusConfig(in_channels=channels + 1, filters=(4, 8, 8, 8, 8), dropout=dropout, output_bias=0.0)
    torch.manual_seed(seed)
    model = UNet3Plus(mc)
    norm = normalization or default_normalization()
    meta = {"model": mc.to_dict(), "channels": list(CHANNELS[:channels]),
            "channel_set": "3+_1" if channels == 1 else "3+_5", "blind_zone_rows": 8, "ramp_max_rows": 0,
            "normalization": norm, "grid": {"n_heights": n_heights, "top_m": top_m},
            "patch": {"width": width},
            "build": {"forward_operator": {"enabled": cpr_resolution}, "cold_threshold_c": cold_threshold_c,
                      "sites": ["nsa", "oli"]},
            "config": config_record(TrainConfig(store_root=str(store_root), run_name=run_name,
                                                filters=(4, 8, 8, 8, 8), channels=meta_channels(channels)))}
    store = Store(store_root)
    for which in ("last", "best"):   # a finished one-epoch run: its last epoch is its best
        save_checkpoint(store, checkpoint_key(run_name, which),
                        {"model": model.state_dict(), "epoch": 1, "val_loss": 0.1}, meta)
    mark_finished(store, run_name, stopped="test")
    return load_model(store, run_name, "last")[1]["model_id"]


def meta_channels(channels: int) -> str:
    return "3+_1" if channels == 1 else "3+_5"


def granule_arrays(n: int = 300, *, land_from: int | None = None, dem_land_m: float = 300.0,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of a small granule (bin 0 = top, 240 m bins, bin 104 at 0 m MSL).

    Profiles before ``land_from`` are ocean (DEM 0); from it on, land at ``dem_land_m``.
    Echo: a cloud of 0 dBZ between 2 and 4 km above ground, a 10 dBZ layer in the
    lowest 1 km (in the blind zone), noise of -32 dBZ with cloud mask 0 elsewhere.
    """
    rng = np.random.default_rng(seed)
    heights = TOP_CENTRE_M - BIN_M * np.arange(NBIN)
    height = np.broadcast_to(heights, (n, NBIN)).astype(np.float64).copy()
    land = np.zeros(n, bool)
    if land_from is not None:
        land[land_from:] = True
    dem = np.where(land, dem_land_m, 0.0)
    agl = height - dem[:, None]
    cloud = (agl >= 2000) & (agl < 4000)
    low = (agl >= 0) & (agl < 1000)
    refl = np.full((n, NBIN), -32.0) + rng.normal(0, 0.5, (n, NBIN))
    refl[cloud] = 0.0
    refl[low] = 10.0
    mask = np.where(cloud | low, 40, 0).astype(np.int8)
    return {"reflectivity_dbz": refl, "height_m": height, "cloud_mask": mask,
            "latitude": 70.0 + 0.01 * np.arange(n), "longitude": np.full(n, -156.6),
            "profile_time_s": 0.16 * np.arange(n), "dem_elevation_m": dem,
            "land_sea_flag": np.where(land, 1, 2).astype(np.uint8)}


def write_granule(folder: str | Path, *, n: int = 300, start: datetime = datetime(2019, 1, 2, 12, 0, 0),
                  number: int = 67000, release: str = "R05", version: str | None = "F03",
                  arrays: dict[str, np.ndarray] | None = None, **kw: object) -> Path:
    """Write a small 2B-GEOPROF granule (real HDF-EOS2 layout) into ``folder``; return its path."""
    from bzpipe.sources.synthetic.cloudsat_hdf import write_geoprof_granule

    a = arrays if arrays is not None else granule_arrays(n, **kw)  # type: ignore[arg-type]
    return write_geoprof_granule(Path(folder), start=start.replace(tzinfo=UTC), granule_number=number,
                                 release=release, version=version, **a)
