"""ARM ground-site data: cloud radar (KaZR / MMCR) and surface meteorology.

:mod:`bzpipe.sources.arm.reader` turns ARM netCDF files into the schema
Datasets (:mod:`bzpipe.schema`).  Downloading from ARM Live lives in its own
module beside it.
"""

from bzpipe.sources.arm.reader import (
    DEFAULT_SNR_THRESHOLD_DB,
    REFLECTIVITY_NAMES,
    arm_times,
    open_kazr_many,
    qc_masks,
    read_kazr,
    read_met,
)

__all__ = ["DEFAULT_SNR_THRESHOLD_DB", "REFLECTIVITY_NAMES", "arm_times", "open_kazr_many", "qc_masks",
           "read_kazr", "read_met"]
