"""TAI93 time (CloudSat ``TAI_start``) <-> UTC.

TAI93 counts SI seconds since 1993-01-01 00:00:00 UTC, leap seconds included,
so TAI93 - (UTC - 1993-01-01) is the number of leap seconds inserted since
(10 from 2017 on; e.g. a real R05 granule has UTC_start 17:58:51.74 and
TAI_start 820605541.74 = 2019-01-02 17:59:01.74 without the 10 leap seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

TAI93_EPOCH = datetime(1993, 1, 1, tzinfo=UTC)
#: UTC instants (from 1993 on) at which TAI - UTC grew by one second.
LEAP_SECONDS_SINCE_1993 = tuple(datetime(*d, tzinfo=UTC) for d in (
    (1993, 7, 1), (1994, 7, 1), (1996, 1, 1), (1997, 7, 1), (1999, 1, 1), (2006, 1, 1),
    (2009, 1, 1), (2012, 7, 1), (2015, 7, 1), (2017, 1, 1)))


def utc_to_tai93(t: datetime) -> float:
    """UTC datetime (naive = UTC) -> TAI93 seconds."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    leaps = sum(1 for leap in LEAP_SECONDS_SINCE_1993 if t >= leap)
    return (t - TAI93_EPOCH).total_seconds() + leaps


def tai93_to_utc(tai93: float) -> datetime:
    """TAI93 seconds -> timezone-aware UTC datetime (inverse of :func:`utc_to_tai93`)."""
    t = TAI93_EPOCH + timedelta(seconds=tai93)
    for leap in LEAP_SECONDS_SINCE_1993:
        if t - timedelta(seconds=1) >= leap:
            t -= timedelta(seconds=1)
    return t
