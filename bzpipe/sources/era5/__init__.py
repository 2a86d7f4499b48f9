"""ERA-5 reanalysis (and IFS model columns).

:mod:`bzpipe.sources.era5.reader` turns CDS netCDF (current and legacy
layouts), GRIB and IFS column files into the schema Datasets
(:mod:`bzpipe.schema`).  Downloading from the CDS lives in its own module
beside it.
"""

from bzpipe.sources.era5.reader import (
    PRESSURE_LEVEL_VARIABLES,
    read_era5,
    read_era5_single_level,
    read_ifs_column,
)

__all__ = ["PRESSURE_LEVEL_VARIABLES", "read_era5", "read_era5_single_level", "read_ifs_column"]
