"""CloudSat CPR granules (HDF-EOS2 / HDF4, read with pyhdf).

:func:`read_granule` gives the schema Dataset (:mod:`bzpipe.schema`, dims
``(profile, bin)``, bin 0 at the top); :func:`granule_info` parses a granule
file name without opening it; :func:`check_release` rejects other releases; :func:`read_ecmwf_aux` reads
the ECMWF-AUX companion of a granule and :func:`check_companion` checks that it belongs to it.
pyhdf needs a local file: for S3 objects use ``Store.local_path(key)`` and pass
the URI as ``source=``.
"""

from bzpipe.sources.cloudsat.ecmwf_aux import CompanionMismatchError, check_companion, read_ecmwf_aux
from bzpipe.sources.cloudsat.names import GranuleInfo, format_granule_name, granule_info
from bzpipe.sources.cloudsat.reader import CLOUD_MASK_FILL, check_release, decode, read_granule

__all__ = ["CLOUD_MASK_FILL", "CompanionMismatchError", "GranuleInfo", "check_companion", "check_release",
           "decode", "format_granule_name", "granule_info", "read_ecmwf_aux", "read_granule"]
