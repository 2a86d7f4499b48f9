"""Build the training dataset: colocate, split, cut patches, normalize, write Zarr; read it back.

Stages (each callable on its own; :func:`run_build` runs them all on a
dask.distributed client, and the Prefect flow ``build-dataset`` calls it with its tasks):

1. :func:`find_inputs` lists the raw files of each site and day in the store
   (``raw/kazr/<site>/``, ``raw/met/<site>/``, ``raw/era5/<site>/era5_<site>_<YYYYMM>.nc``).
2. :func:`colocate_day` (one dask task per site-day, :mod:`bzpipe.dataset.inputs`)
   puts radar, ERA-5 and the surface temperature on the grid
   (:mod:`bzpipe.colocate`) and writes ``work/colocated/<site>/<YYYY-MM-DD>.zarr``.
3. :func:`plan_dataset` (:mod:`bzpipe.dataset.plan`): cold filter,
   decorrelation time, leak-free split (:mod:`bzpipe.split`), patch placement.
4. :func:`write_dataset` (:mod:`bzpipe.dataset.write`): ERA-5 statistics on the
   training split (:mod:`bzpipe.dataset.normalization`), store initialized with the final
   shapes, region writes of patches (:mod:`bzpipe.dataset.patches`) as dask tasks with a
   resumable progress file, manifest entry only at the end; a complete version is replaced
   by building the new one aside and swapping it in.

:func:`run_build`, :func:`build_dataset` and :func:`check_existing` (:mod:`bzpipe.dataset.build`)
run the stages and decide whether there is anything to do.

:func:`open_dataset` (:mod:`bzpipe.dataset.reader`) is how everything reads a dataset back: it
refuses an incomplete one and decodes the root attributes.  Output layout: "Zarr dataset" in
:mod:`bzpipe.schema`.

The names below are imported on first use, so that ``bzpipe.dataset.reader`` (what training and
inference need) does not pull in the build's Dask and colocation stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # what type checkers see; at run time __getattr__ imports them
    from bzpipe.dataset.build import (
        BuildOutcome,
        BuildSteps,
        build_dataset,
        build_recipe,
        check_existing,
        load_plan,
        run_build,
        save_plan,
    )
    from bzpipe.dataset.inputs import (
        DayInputs,
        colocate_all,
        colocate_day,
        find_inputs,
        input_checksums,
        recipe_config,
        tree_sha256,
        write_colocated,
    )
    from bzpipe.dataset.normalization import era5_normalization
    from bzpipe.dataset.patches import PatchSet, normalize, read_patches
    from bzpipe.dataset.plan import BuildPlan, DaySpan, plan_dataset, read_series
    from bzpipe.dataset.reader import DatasetZarr, IncompleteDatasetError, open_dataset
    from bzpipe.dataset.write import EmptySplitError, Region, check_splits, write_dataset

_EXPORTS = {
    "DayInputs": "inputs", "colocate_all": "inputs", "colocate_day": "inputs", "find_inputs": "inputs",
    "input_checksums": "inputs", "recipe_config": "inputs", "tree_sha256": "inputs",
    "write_colocated": "inputs",
    "BuildPlan": "plan", "DaySpan": "plan", "plan_dataset": "plan", "read_series": "plan",
    "BuildOutcome": "build", "BuildSteps": "build", "build_dataset": "build", "build_recipe": "build",
    "check_existing": "build", "load_plan": "build", "run_build": "build", "save_plan": "build",
    "era5_normalization": "normalization", "PatchSet": "patches", "normalize": "patches",
    "read_patches": "patches",
    "EmptySplitError": "write", "Region": "write", "check_splits": "write", "write_dataset": "write",
    "DatasetZarr": "reader", "IncompleteDatasetError": "reader", "open_dataset": "reader",
}

__all__ = ["BuildOutcome", "BuildPlan", "BuildSteps", "DatasetZarr", "DayInputs", "DaySpan",
           "EmptySplitError", "IncompleteDatasetError", "PatchSet", "Region", "build_dataset",
           "build_recipe", "check_existing", "check_splits", "colocate_all", "colocate_day",
           "era5_normalization", "find_inputs", "input_checksums", "load_plan", "normalize",
           "open_dataset", "plan_dataset", "read_patches", "read_series", "recipe_config", "run_build",
           "save_plan", "tree_sha256", "write_colocated", "write_dataset"]


def __getattr__(name: str) -> Any:
    """The public names of the stage modules, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
