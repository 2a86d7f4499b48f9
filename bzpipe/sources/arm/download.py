"""Download ARM files (KaZR, surface met) from the ARM Live Data Webservice.

The service has two endpoints (https://adc.arm.gov/armlive/), both plain HTTP GETs
whose query carries the user name and access token joined by ``:``:

* ``GET /armlive/data/query?user=<name>:<token>&ds=<datastream>&start=...&end=...&wt=json``
  -> ``{"status": "success", "files": [<file name>, ...]}``
* ``GET /armlive/data/saveData?user=<name>:<token>&file=<file name>`` -> the file's bytes, or
  the text "This data file is not available ..." for a file that is not on the service's disks

:func:`list_arm_files` asks the query endpoint which files exist; :func:`download_arm_file`
fetches one listed file with one ``saveData`` request, streamed to disk, with the configured
base URL (a mirror, a proxy, a test double) and timeout.  These are the requests
``act.discovery.download_arm_data`` makes; bzpipe makes them itself so that every HTTP status,
a stalled connection or a transfer cut short becomes a precise error, instead of patching
act's module internals (act prints and skips a failed ``saveData``).

The token travels in the URL (the service's design): no URL built here is ever
logged or put into an exception message.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import requests

from bzpipe.credentials import ArmCredentials, redact, register_secrets
from bzpipe.errors import AuthenticationError, DownloadError

log = logging.getLogger(__name__)

ARM_LIVE_URL = "https://adc.arm.gov"
_HEADERS = {"user-agent": "bzpipe (ARM Live Data Webservice client)"}
#: what saveData answers (status 200, text) for a listed file it cannot deliver
_NOT_AVAILABLE = b"This data file is not available"
_CHUNK = 1 << 20

#: ``<site><class><facility>.<level>.<YYYYMMDD>.<HHMMSS>.<ext>``, e.g. nsametC1.b1.20190101.000000.cdf
ARM_FILE_RE = re.compile(r"^(?P<ds>[a-z]{3}[A-Za-z0-9_]*?[A-Z]\d+\.[a-z]\d)"
                         r"\.(?P<date>\d{8})\.(?P<time>\d{6})\.(?P<ext>[A-Za-z0-9.]+)$")


class ArmFileUnavailableError(DownloadError):
    """ARM Live answered that a listed file is not on its disks (must be ordered); not retried."""

    retryable = False


@dataclass(frozen=True)
class ArmFileName:
    datastream: str
    day: date
    hhmmss: str


def parse_arm_name(name: str) -> ArmFileName:
    """Datastream, day and start time of an ARM file name."""
    m = ARM_FILE_RE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not an ARM file name (<datastream>.<YYYYMMDD>.<HHMMSS>.<ext>)")
    return ArmFileName(m["ds"], datetime.strptime(m["date"], "%Y%m%d").date(), m["time"])


# --------------------------------------------------------------------------- errors


def _http_error(code: int, what: str, creds: ArmCredentials) -> DownloadError:
    if code in (401, 403):
        return AuthenticationError(
            f"ARM Live rejected the credentials of user {creds.username!r} (HTTP {code}) during {what}: "
            "check ARM_USERNAME / ARM_TOKEN (the token is on https://adc.arm.gov/armlive/)")
    return DownloadError(f"ARM Live {what}: HTTP {code}")


def _network_error(e: requests.RequestException, what: str, timeout_s: float) -> DownloadError:
    from urllib3.exceptions import ReadTimeoutError

    # a stall in the middle of the body reaches requests as ConnectionError(ReadTimeoutError)
    stalled = bool(e.args) and isinstance(e.args[0], ReadTimeoutError)
    if isinstance(e, requests.Timeout) or stalled:
        return DownloadError(f"ARM Live {what}: no answer within {timeout_s:g} s (timed out)")
    return DownloadError(f"ARM Live {what}: {type(e).__name__}: {redact(str(e))}")


# --------------------------------------------------------------------------- listing


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def list_arm_files(creds: ArmCredentials, datastream: str, start: date, end: date, *,
                   base_url: str = ARM_LIVE_URL, timeout_s: float = 120.0) -> list[str]:
    """Names of the files of ``datastream`` whose day lies in ``[start, end]`` (sorted).

    Raises :class:`AuthenticationError` (rejected credentials), :class:`DownloadError`
    (HTTP / network failure, unexpected answer).
    """
    register_secrets(creds.secrets)
    what = f"query for {datastream} {start}..{end}"
    t0 = datetime.combine(start, time(0))
    t1 = datetime.combine(end, time(0)) + timedelta(hours=23, minutes=59, seconds=59)
    # user name and token joined by ':' in the query string, as the service documents
    url = (f"{base_url.rstrip('/')}/armlive/data/query?user={creds.username}:{creds.token}"
           f"&ds={datastream}&start={_iso(t0)}&end={_iso(t1)}&wt=json")
    try:
        r = requests.get(url, headers=_HEADERS, timeout=timeout_s)
    except requests.RequestException as e:
        raise _network_error(e, what, timeout_s) from None
    if r.status_code >= 400:
        raise _http_error(r.status_code, what, creds) from None
    body = r.text.lstrip()
    if body[:14].lower() == "<!doctype html" or body[:5].lower() == "<html":
        # what the service sends for an unknown user (act checks for the same)
        raise AuthenticationError(f"ARM Live rejected user {creds.username!r} during {what}: "
                                  "check ARM_USERNAME / ARM_TOKEN")
    try:
        answer = json.loads(body)
        status, files = answer.get("status"), answer.get("files") or []
    except (ValueError, AttributeError):
        raise DownloadError(f"ARM Live {what}: the answer is not the expected JSON") from None
    if status != "success":
        raise DownloadError(f"ARM Live {what}: status {status!r}")
    names = []
    for name in files:
        try:
            p = parse_arm_name(str(name))
        except ValueError:
            log.warning("ARM Live %s: ignoring unexpected file name %r", what, name)
            continue
        if p.datastream == datastream and start <= p.day <= end:
            names.append(str(name))
    log.info("ARM Live: %d file(s) of %s between %s and %s", len(names), datastream, start, end)
    return sorted(set(names))


# --------------------------------------------------------------------------- download


def download_arm_file(creds: ArmCredentials, name: str, dest_dir: str | Path, *,
                      base_url: str = ARM_LIVE_URL, timeout_s: float = 120.0) -> Path:
    """Fetch one listed ARM file into ``dest_dir`` with one ``saveData`` request; return its path.

    The file may be partial if this raises; callers download into a temporary
    folder and only keep the file after verifying it.  Raises
    :class:`AuthenticationError` (rejected credentials), :class:`ArmFileUnavailableError`
    (the service cannot deliver the file; not retried) or :class:`DownloadError`
    (HTTP / network failure, timeout, transfer cut short, empty answer).
    """
    register_secrets(creds.secrets)
    parse_arm_name(name)  # a file name, never a path or a query
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / name
    what = f"download of {name}"
    # the URL act-atmos builds, and the service documents: user name and token joined by ':'
    url = f"{base_url.rstrip('/')}/armlive/data/saveData?user={creds.username}:{creds.token}&file={name}"
    size = 0
    head = b""
    try:
        with requests.get(url, headers=_HEADERS, timeout=timeout_s, stream=True) as r:
            if r.status_code >= 400:
                raise _http_error(r.status_code, what, creds)
            announced = r.headers.get("Content-Length")
            with open(target, "wb") as out:
                for chunk in r.iter_content(_CHUNK):
                    if size < 256:
                        head += chunk[:256]
                    out.write(chunk)
                    size += len(chunk)
            if announced is not None and announced.isdigit() and size < int(announced):
                raise DownloadError(f"ARM Live {what}: transfer cut short after {size} bytes "
                                    f"({int(announced) - size} more were announced)")
    except requests.exceptions.ChunkedEncodingError:
        # urllib3 raises this when the connection closes before the announced length
        raise DownloadError(f"ARM Live {what}: transfer cut short after "
                            f"{target.stat().st_size if target.exists() else 0} bytes") from None
    except requests.RequestException as e:
        raise _network_error(e, what, timeout_s) from None
    if head.lstrip().startswith(_NOT_AVAILABLE):
        target.unlink(missing_ok=True)
        raise ArmFileUnavailableError(
            f"ARM Live: {name} is not available for download (not on the service's disks; "
            "order it through ARM Data Discovery)")
    if head.lstrip()[:14].lower() == b"<!doctype html" or head.lstrip()[:5].lower() == b"<html":
        target.unlink(missing_ok=True)
        raise AuthenticationError(f"ARM Live rejected user {creds.username!r} during {what}: "
                                  "check ARM_USERNAME / ARM_TOKEN")
    if size == 0:
        raise DownloadError(f"ARM Live {what}: received an empty file")
    log.info("ARM Live: downloaded %s (%d bytes)", name, size)
    return target
