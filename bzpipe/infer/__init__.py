"""Fill the blind zone of CloudSat-CPR granules with a trained model (batch and reprocessing).

Modules, from the bottom up:

* :mod:`~bzpipe.infer.geometry`: bin edges, surface bin, blind-zone bins, the model grid;
* :mod:`~bzpipe.infer.regrid`: conservative linear-Z layer averaging between height grids;
* :mod:`~bzpipe.infer.windows`: along-track windows and cosine blending of overlaps;
* :mod:`~bzpipe.infer.era5_track`: ERA-5 colocated along the track, and the ERA-5 boxes along it;
* :mod:`~bzpipe.infer.state`: the atmospheric state per profile (ECMWF-AUX, ERA-5, none) and the
  training domain (``out_of_domain``);
* :mod:`~bzpipe.infer.companion`: a granule's ECMWF-AUX companion and ERA-5 track boxes in the store;
* :mod:`~bzpipe.infer.curtain`: a granule onto the model grid and back to CPR bins;
* :mod:`~bzpipe.infer.predict`: windowed, batched MC-dropout inference; per-process model cache;
* :mod:`~bzpipe.infer.fill`: one granule in memory -> the output Dataset;
* :mod:`~bzpipe.infer.cf`: its CF-1.10 metadata and the netCDF-4 export (``bzpipe export``);
* :mod:`~bzpipe.infer.output`: Zarr writing (complete only once recorded) and the curtain PNG;
* :mod:`~bzpipe.infer.granule`: one stored granule -> output, idempotent, quarantining bad input;
* :mod:`~bzpipe.infer.batch`: Dask batches, landing-area scanning and emit bookkeeping.

Importing this package is cheap (numpy only); torch-dependent modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from bzpipe.infer.geometry import ModelGrid, blind_zone_bins, grid_settings, surface_bin, surface_height
from bzpipe.infer.regrid import layer_average, regrid_dbz
from bzpipe.infer.windows import Blender, taper, window_starts

_LAZY = {
    "fill_granule": "bzpipe.infer.fill", "OUTPUT_VARIABLES": "bzpipe.infer.fill",
    "predict_curtain": "bzpipe.infer.predict", "cached_model": "bzpipe.infer.predict",
    "process_granule": "bzpipe.infer.granule", "GranuleResult": "bzpipe.infer.granule",
    "fill_and_write": "bzpipe.infer.granule", "stage_granule": "bzpipe.infer.staging",
    "run_batch": "bzpipe.infer.batch",
    "write_output": "bzpipe.infer.output", "open_output": "bzpipe.infer.output",
    "curtain_png": "bzpipe.infer.output", "colocate_track": "bzpipe.infer.era5_track",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bzpipe.infer' has no attribute {name!r}")


__all__ = ["Blender", "ModelGrid", "blind_zone_bins", "grid_settings", "layer_average", "regrid_dbz",
           "surface_bin", "surface_height", "taper", "window_starts", *_LAZY]
