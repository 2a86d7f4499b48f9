"""Open any supported input file with the right reader, chosen from its content."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from bzpipe.errors import CorruptFileError, InputFileError

_HDF4_MAGIC = b"\x0e\x03\x13\x01"


def open_any(path: str | Path) -> xr.Dataset:
    """Read a KaZR / MMCR / met netCDF, an ERA-5 netCDF or GRIB, an IFS column, or a CloudSat granule.

    The reader is chosen from the file's magic bytes and, for netCDF, its
    variables; a file none of them accepts raises :class:`InputFileError`.
    """
    from bzpipe.sources.arm import read_kazr, read_met
    from bzpipe.sources.cloudsat import read_granule
    from bzpipe.sources.era5 import read_era5_single_level, read_ifs_column
    from bzpipe.sources.fileio import netcdf_probe, sniff_format

    p = Path(path)
    try:
        head = p.read_bytes()[:4] if p.stat().st_size < 4 else p.open("rb").read(4)
    except OSError as e:
        raise InputFileError(p, f"cannot open ({e.strerror})") from e
    if head == _HDF4_MAGIC:
        from bzpipe.sources.cloudsat.ecmwf_aux import PRODUCT, read_ecmwf_aux
        from bzpipe.sources.cloudsat.hdfeos import SwathFile

        with SwathFile(p) as sw:                               # an ECMWF-AUX swath has its own reader
            aux = sw.swath_name == PRODUCT
        return read_ecmwf_aux(p) if aux else read_granule(p, require_reflectivity=False)
    if sniff_format(p) == "grib":
        return _read_era5_present(p)
    try:
        with netcdf_probe(p) as raw:
            names = set(raw.variables)
    except (OSError, ValueError) as e:
        raise CorruptFileError(p, f"cannot be opened as netCDF ({e})") from e
    lower = {n.lower() for n in names}
    if any(n.startswith("reflectivity") for n in lower):
        return read_kazr(p)
    if "temp_mean" in lower:
        return read_met(p)
    if {"t", "u", "v"} & lower and ({"pressure_level", "level", "isobaricinhpa"} & lower):
        return _read_era5_present(p)
    if "t2m" in lower:
        return read_era5_single_level(p)
    if "height" in lower and "temperature" in lower:
        return read_ifs_column(p)
    raise InputFileError(p, f"no bzpipe reader recognises this file (variables: {sorted(names)[:12]})")


def _read_era5_present(path: Path) -> xr.Dataset:
    """ERA-5 pressure-level file with whichever of t, q, u, v, z it holds."""
    from bzpipe.errors import MissingVariableError
    from bzpipe.sources.era5 import read_era5

    everything = ("t", "q", "u", "v", "z")
    try:
        return read_era5(path, variables=everything)          # the usual case: one read
    except MissingVariableError:
        pass
    present = []
    for v in everything:
        try:
            read_era5(path, variables=(v,))
        except MissingVariableError:
            continue
        present.append(v)
    if not present:
        raise MissingVariableError(path, "none of the ERA-5 variables t, q, u, v, z is in the file")
    return read_era5(path, variables=tuple(present))
