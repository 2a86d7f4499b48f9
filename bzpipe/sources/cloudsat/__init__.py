"""CloudSat CPR granules (HDF-EOS2 / HDF4, read with pyhdf).

:func:`read_granule` gives the schema Dataset (:mod:`bzpipe.schema`, dims
``(profile, bin)``, bin 0 at the top); :func:`granule_info` parses a granule
file name without opening it; :func:`check_release` rejects other releases.
pyhdf needs a local file: for S3 objects use ``Store.local_path(key)`` and pass
the URI as ``source=``.
"""

from bzpipe.sources.cloudsat.names import GranuleInfo, format_granule_name, granule_info
from bzpipe.sources.cloudsat.reader import CLOUD_MASK_FILL, check_release, decode, read_granule

__all__ = ["CLOUD_MASK_FILL", "GranuleInfo", "check_release", "decode", "format_granule_name",
           "granule_info", "read_granule"]
