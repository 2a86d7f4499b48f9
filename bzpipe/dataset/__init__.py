"""Build the training dataset: colocate, split, cut patches, normalize, write Zarr.

Stages (each callable on its own; :func:`build_dataset` runs them all on a
dask.distributed client):

1. :func:`find_inputs` lists the raw files of each site and day in the store
   (``raw/kazr/<site>/``, ``raw/met/<site>/``, ``raw/era5/<site>/era5_<site>_<YYYYMM>.nc``).
2. :func:`colocate_day` (one dask task per site-day, :mod:`bzpipe.dataset.inputs`)
   puts radar, ERA-5 and the surface temperature on the grid
   (:mod:`bzpipe.colocate`) and writes ``work/colocated/<site>/<YYYY-MM-DD>.zarr``.
3. :func:`plan_dataset` (:mod:`bzpipe.dataset.plan`): cold filter,
   decorrelation time, leak-free split (:mod:`bzpipe.split`), patch placement.
4. :func:`write_dataset` (:mod:`bzpipe.dataset.write`): ERA-5 statistics on the
   training split, store initialized with the final shapes, region writes as
   dask tasks with a resumable progress file, manifest entry only at the end;
   a complete version is replaced by building the new one aside and swapping it in.

:func:`build_dataset` and :func:`check_existing` (:mod:`bzpipe.dataset.build`)
run the stages and decide whether there is anything to do.

:func:`open_dataset` reads one split of a complete dataset and refuses an
incomplete one.  Output layout: "Zarr dataset" in :mod:`bzpipe.schema`.
"""

from bzpipe.dataset.inputs import (DayInputs, colocate_all, colocate_day, colocated_key, find_inputs,
                                   input_checksums, recipe_config, tree_sha256, work_key,
                                   write_colocated)
from bzpipe.dataset.plan import BuildPlan, plan_dataset, read_series
from bzpipe.dataset.build import build_dataset, build_recipe, check_existing, load_plan, save_plan
from bzpipe.dataset.write import (EmptySplitError, IncompleteDatasetError, check_splits, era5_normalization,
                                  normalize, open_dataset, read_patches, write_dataset)

__all__ = ["BuildPlan", "DayInputs", "EmptySplitError", "IncompleteDatasetError", "build_dataset", "build_recipe",
           "check_existing", "check_splits", "colocate_all", "colocate_day", "colocated_key", "era5_normalization",
           "find_inputs", "input_checksums", "load_plan", "normalize", "open_dataset", "plan_dataset",
           "read_patches", "read_series", "recipe_config", "save_plan", "tree_sha256", "work_key",
           "write_colocated", "write_dataset"]
