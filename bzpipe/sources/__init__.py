"""Input data: readers for ARM (KaZR, met), ERA-5 and CloudSat files, and the
offline sample-data generator (:mod:`bzpipe.sources.synthetic`) that writes
files in the same real formats.

Subpackages: ``arm``, ``era5``, ``cloudsat``, ``synthetic``.  Shared reading
helpers (safe opening, time decoding, units) are in :mod:`bzpipe.sources.fileio`.
"""

# Load order matters: the eccodes wheel (used by cfgrib) and the pyproj wheel
# (pulled in by xarray's backend discovery via metpy, and by act-atmos) bundle
# clashing shared libraries.  If eccodes is loaded before pyproj the interpreter
# crashes on exit (SIGSEGV / "double free"), turning a passing run into exit
# code 134/139.  Loading pyproj first avoids it.
try:  # pragma: no cover - depends on the environment
    import pyproj  # noqa: F401
except ImportError:  # pragma: no cover
    pass
