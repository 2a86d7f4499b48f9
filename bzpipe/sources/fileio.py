"""Shared pieces of the file readers: safe opening, variable look-up, time decoding, units.

Every failure is turned into a :class:`~bzpipe.errors.InputFileError`
subclass naming the file: a truncated or foreign file gives
:class:`CorruptFileError` (never a raw HDF5 / netCDF traceback), a missing
variable :class:`MissingVariableError` listing the names looked for, odd units
:class:`UnitsError`.

Thread safety: the netCDF-C and HDF5 libraries are not thread-safe, and netCDF4-python
releases the GIL while they run, so two threads of one process (Dask worker threads of a
build, say) reading netCDF files at once can crash the process.  xarray's own lock covers
only opening and array reads, not the metadata reads in between.  Every netCDF/HDF5 read of
bzpipe therefore goes through :func:`open_netcdf` or :func:`netcdf_probe`, which hold
:data:`NETCDF_LOCK` for the whole open-read-close; it is xarray's process-wide
``NETCDF4_PYTHON_LOCK``, the lock xarray's netCDF4 backend and the synthetic-file writers
take too, so there is one lock for all netCDF/HDF5 access in the process.  (HDF4 files have
their own lock, :data:`bzpipe.sources.cloudsat.hdfeos.HDF4_LOCK`.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends.netCDF4_ import NETCDF4_PYTHON_LOCK

from bzpipe.errors import CorruptFileError, MissingVariableError, UnitsError

#: the one process-wide lock of netCDF-C / HDF5 access (see the module docstring); not re-entrant
NETCDF_LOCK = NETCDF4_PYTHON_LOCK

_MAGIC = {b"CDF\x01": "netcdf3", b"CDF\x02": "netcdf3", b"CDF\x05": "netcdf3",
          b"\x89HDF": "netcdf4", b"GRIB": "grib"}


def sniff_format(path: str | Path) -> str:
    """``"netcdf3"``, ``"netcdf4"`` (HDF5) or ``"grib"`` from the first bytes; CorruptFileError otherwise."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(1024)
    except IsADirectoryError:
        raise CorruptFileError(p, "is a directory, not a file") from None
    if not head:
        raise CorruptFileError(p, "file is empty")
    kind = _MAGIC.get(head[:4])
    if kind is None and b"GRIB" in head:  # GRIB files may start with a short header
        kind = "grib"
    if kind is None:
        raise CorruptFileError(p, f"not a netCDF or GRIB file (starts with {head[:8]!r})")
    return kind


def open_netcdf(path: str | Path, *, mask_and_scale: bool = True) -> xr.Dataset:
    """Open a netCDF-3/4 file fully into memory with times left undecoded.

    Raises FileNotFoundError for a missing file and CorruptFileError for a
    truncated, damaged or non-netCDF one (the whole file is read here, so a
    file cut short fails now and not later).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    kind = sniff_format(p)
    if kind == "grib":
        raise CorruptFileError(p, "is a GRIB file, expected netCDF")
    if kind == "netcdf3":
        _check_netcdf3_size(p)
    try:
        # lock=False: xarray takes no lock of its own, NETCDF_LOCK (the same lock) covers it all
        with NETCDF_LOCK, xr.open_dataset(p, engine="netcdf4", decode_times=False, decode_timedelta=False,
                                          mask_and_scale=mask_and_scale, cache=False, lock=False) as ds:
            return ds.load()
    except (OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise CorruptFileError(p, f"cannot read netCDF ({type(e).__name__}: {e})") from e


@contextmanager
def netcdf_probe(path: str | Path, **kwargs: object) -> Iterator[xr.Dataset]:
    """A netCDF file opened lazily (``decode_times=False``) for a look at its variables and
    dimensions, holding :data:`NETCDF_LOCK` until the block ends; nothing read in the block may
    outlive it, and no other netCDF read may happen inside it (the lock is not re-entrant)."""
    with NETCDF_LOCK, xr.open_dataset(path, decode_times=False, lock=False, **kwargs) as ds:  # type: ignore[arg-type]
        yield ds


def _check_netcdf3_size(p: Path) -> None:
    """netCDF-3 readers happily return garbage past the end of a truncated file; scipy's reader
    reads every variable eagerly and fails on a short file."""
    from scipy.io import netcdf_file

    try:
        with netcdf_file(p, mmap=False) as nc:
            nc.variables  # noqa: B018  (data were read when the file was opened)
    except Exception as e:  # scipy raises ValueError / TypeError / OSError for damaged files
        raise CorruptFileError(p, f"truncated or damaged netCDF-3 file ({type(e).__name__}: {e})") from e


def find_name(ds: xr.Dataset, names: Sequence[str], path: str | Path, what: str, *,
              standard_names: Iterable[str] = (), required: bool = True) -> str | None:
    """The first of ``names`` in ``ds`` (exact, then case-insensitive), else a variable whose
    ``standard_name`` is one of ``standard_names``; MissingVariableError if required."""
    for n in names:
        if n in ds.variables:
            return n
    lower = {str(k).lower(): str(k) for k in ds.variables}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    std = set(standard_names)
    if std:
        for k, v in ds.variables.items():
            if v.attrs.get("standard_name") in std:
                return str(k)
    if required:
        looked = list(names) + [f"standard_name={s}" for s in standard_names]
        raise MissingVariableError(path, f"no {what} variable; looked for {', '.join(looked)}; "
                                         f"file has {', '.join(map(str, ds.variables)) or 'no variables'}")
    return None


# --------------------------------------------------------------------- time

_SINCE = re.compile(
    r"^\s*(?P<unit>[a-zA-Z]+)\s+since\s+(?P<date>[+-]?\d{1,4}-\d{1,2}-\d{1,2})"
    r"(?:[T\s]+(?P<time>\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d*)?)?))?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]?\d{1,2}(?::?\d{2})?)?\s*$")
_UNIT_NS = {"s": 10**9, "sec": 10**9, "secs": 10**9, "second": 10**9, "seconds": 10**9,
            "min": 60 * 10**9, "mins": 60 * 10**9, "minute": 60 * 10**9, "minutes": 60 * 10**9,
            "h": 3600 * 10**9, "hr": 3600 * 10**9, "hrs": 3600 * 10**9, "hour": 3600 * 10**9,
            "hours": 3600 * 10**9, "d": 86400 * 10**9, "day": 86400 * 10**9, "days": 86400 * 10**9,
            "ms": 10**6, "milliseconds": 10**6, "millisecond": 10**6}


def parse_time_units(units: str, path: str | Path, name: str = "time") -> tuple[int, np.datetime64]:
    """``"<unit> since <date> [time] [tz]"`` -> (nanoseconds per unit, epoch as datetime64[ns] UTC).

    Handles ARM's ``"seconds since 2019-01-01 00:00:00 0:00"`` and CF offsets
    such as ``"+00:00"``.
    """
    m = _SINCE.match(units or "")
    if not m or m.group("unit").lower() not in _UNIT_NS:
        raise UnitsError(path, f"{name}: cannot interpret time units {units!r}")
    y, mo, d = (int(x) for x in m.group("date").split("-"))
    hh = mm = 0
    ss = 0.0
    if m.group("time"):
        parts = m.group("time").split(":")
        hh, mm = int(parts[0]), int(parts[1])
        ss = float(parts[2]) if len(parts) > 2 else 0.0
    epoch = (np.datetime64(f"{y:04d}-{mo:02d}-{d:02d}T00:00:00", "ns")
             + np.timedelta64(hh * 3600 + mm * 60, "s") + np.timedelta64(int(round(ss * 1e9)), "ns"))
    tz = m.group("tz")
    if tz and tz not in ("Z", "UTC", "GMT"):
        sign = -1 if tz.startswith("-") else 1
        digits = tz.lstrip("+-")
        th, _, tm = digits.partition(":")
        if not tm and len(th) > 2:
            th, tm = th[:-2], th[-2:]
        offset_min = sign * (int(th) * 60 + int(tm or 0))
        epoch = epoch - np.timedelta64(offset_min, "m")
    return _UNIT_NS[m.group("unit").lower()], epoch


def decode_times(values: np.ndarray, units: str, path: str | Path, name: str = "time") -> np.ndarray:
    """Numeric offsets + CF/ARM units -> datetime64[ns] (NaN -> NaT)."""
    ns, epoch = parse_time_units(units, path, name)
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    ok = np.isfinite(v)
    out[ok] = epoch + np.round(v[ok] * ns).astype(np.int64).astype("timedelta64[ns]")
    return out


# -------------------------------------------------------------------- units


def normalize_units(units: object) -> str:
    """Lower-case, spaces collapsed, ``**`` and ``^`` removed: ``"m s**-1"`` -> ``"m s-1"``."""
    u = str(units or "").strip().lower().replace("**", "").replace("^", "")
    return re.sub(r"\s+", " ", u)


def convert(values: np.ndarray, units: object, table: dict[str, tuple[float, float]], path: str | Path,
            name: str, *, default: str | None = None) -> np.ndarray:
    """``values * scale + offset`` for the (normalized) ``units`` in ``table``; UnitsError otherwise.
    Missing units mean ``default`` when given."""
    u = normalize_units(units)
    if not u and default is not None:
        u = default
    if u not in table:
        raise UnitsError(path, f"{name}: unexpected units {units!r} (expected one of {sorted(table)})")
    scale, offset = table[u]
    return np.asarray(values, dtype=np.float64) * scale + offset
