"""CloudSat granule file names: parse and format, without opening the file.

The CloudSat Data Processing Center names its files (R04 and R05 conventions)::

    YYYYDDDHHMMSS_NNNNN_CS_<PRODUCT>_<SUBSET>_<ITER>_<RELEASE>_<EPOCH>[_<FIX>].hdf
    2019002175851_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf   (R05)
    2015200212411_49074_CS_2B-GEOPROF_GRANULE_P_R04_E06.hdf        (R04)

``YYYYDDDHHMMSS`` is the UTC year, day of year and time of the first profile,
``NNNNN`` the granule number (= orbit number), ``SUBSET`` is ``GRANULE`` for a
full orbit, ``ITER`` the processing iteration (``P``, ``P1``, ...), ``FIX`` the
R05-only fix number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath

from bzpipe.errors import InputFileError

_NAME_RE = re.compile(
    r"^(?P<start>\d{13})_(?P<orbit>\d{5,6})_CS_"
    r"(?P<product>[0-9A-Z][0-9A-Za-z-]*)_(?P<subset>[0-9A-Za-z-]+)_"
    r"(?P<iteration>P\d*)_(?P<release>R\d{2})_(?P<epoch>E\d{2})(?:_(?P<fix>F\d{2}))?"
    r"\.hdf$"
)


@dataclass(frozen=True)
class GranuleInfo:
    """What a CloudSat granule file name says.

    ``start`` is the UTC time of the first profile (timezone-aware, whole seconds);
    ``granule_id`` is ``YYYYDDDHHMMSS_NNNNN`` (unique per orbit, shared by all products).
    """

    name: str
    granule_id: str
    start: datetime
    orbit: int
    product: str
    subset: str
    iteration: str
    release: str
    epoch: str
    fix: str | None

    @property
    def version(self) -> str:
        """``P1_R05`` style product version, as in the ``product_version`` swath attribute."""
        return f"{self.iteration}_{self.release}"


def granule_info(path_or_name: str | PurePath) -> GranuleInfo:
    """Parse a CloudSat granule file name (a bare name, a path or an ``s3://`` URI).

    Raises :class:`~bzpipe.errors.InputFileError` naming the file when the name
    does not follow the CloudSat convention.
    """
    text = str(path_or_name)
    name = text.rstrip("/").rsplit("/", 1)[-1]
    m = _NAME_RE.match(name)
    if m is None:
        raise InputFileError(text, "not a CloudSat granule file name "
                                   "(expected YYYYDDDHHMMSS_NNNNN_CS_<PRODUCT>_GRANULE_P1_R05_E08_F03.hdf)")
    try:
        start = datetime.strptime(m["start"], "%Y%j%H%M%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InputFileError(text, f"bad start time {m['start']!r} in the file name: {exc}") from None
    return GranuleInfo(name=name, granule_id=f"{m['start']}_{m['orbit']}", start=start,
                       orbit=int(m["orbit"]), product=m["product"], subset=m["subset"],
                       iteration=m["iteration"], release=m["release"], epoch=m["epoch"], fix=m["fix"])


def format_granule_name(start: datetime, granule_number: int, product: str = "2B-GEOPROF", *,
                        release: str = "R05", epoch: str = "E08", fix: str | None = "F03",
                        iteration: str = "P1", subset: str = "GRANULE") -> str:
    """The CloudSat file name of a granule (inverse of :func:`granule_info`).

    ``start`` is the UTC time of the first profile (naive datetimes are taken as
    UTC; fractional seconds are dropped); ``fix=None`` gives an R04-style name.
    """
    if start.tzinfo is not None:
        start = start.astimezone(UTC)
    if not 0 <= granule_number <= 999_999:
        raise ValueError(f"granule number {granule_number} out of range")
    name = (f"{start:%Y%j%H%M%S}_{granule_number:05d}_CS_{product}_{subset}_"
            f"{iteration}_{release}_{epoch}{'_' + fix if fix else ''}.hdf")
    granule_info(name)  # validate what we made
    return name
