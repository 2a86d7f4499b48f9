"""The offline sample-data generator: the pipeline's embedded default source.

It writes files in the REAL formats (ARM KaZR / met netCDF, CDS ERA-5 netCDF
in the current or legacy layout, CloudSat 2B-GEOPROF HDF-EOS2) so that the
same readers serve real and synthetic data.  Every file is a deterministic
function of ``(seed, site, absolute time)``: KaZR days, met days and ERA-5
months of one site agree wherever they overlap, and the same seed gives
byte-identical files.

Modules: :mod:`.noise` (counter-based random numbers), :mod:`.atmosphere`
(the hidden true state), :mod:`.scene` (reflectivity curtains), writers
:mod:`.arm_files`, :mod:`.era5_files`, :mod:`.cloudsat` (geometry and CPR
view; HDF-EOS2 writing in :mod:`.cloudsat_hdf`).
"""

from bzpipe.sources.synthetic.arm_files import (
    kazr_day_arrays,
    kazr_file_name,
    kazr_heights,
    met_day_arrays,
    met_file_name,
    minimum_detectable_dbz,
    write_kazr_day,
    write_met_day,
)
from bzpipe.sources.synthetic.atmosphere import AtmosphereState, state_at
from bzpipe.sources.synthetic.cloudsat import generate_cloudsat_granule, geoprof_arrays
from bzpipe.sources.synthetic.era5_files import era5_file_name, era5_grid, era5_month_arrays, write_era5_month
from bzpipe.sources.synthetic.scene import along_track_curtain, reflectivity_curtain

__all__ = [
    "AtmosphereState", "along_track_curtain", "era5_file_name", "era5_grid", "era5_month_arrays",
    "generate_cloudsat_granule", "geoprof_arrays", "kazr_day_arrays", "kazr_file_name", "kazr_heights",
    "met_day_arrays", "met_file_name", "minimum_detectable_dbz", "reflectivity_curtain", "state_at",
    "write_era5_month", "write_kazr_day", "write_met_day",
]
