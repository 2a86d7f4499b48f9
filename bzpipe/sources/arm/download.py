"""Download ARM files (KaZR, surface met) from the ARM Live Data Webservice with ``act.discovery``.

The service has two endpoints (https://adc.arm.gov/armlive/):

* ``GET /armlive/data/query?user=<name>:<token>&ds=<datastream>&start=...&end=...&wt=json``
  -> ``{"status": "success", "files": [<file name>, ...]}``
* ``GET /armlive/data/saveData?user=<name>:<token>&file=<file name>`` -> the file's bytes

:func:`list_arm_files` asks the query endpoint which files exist (act has no
list-only call); :func:`download_arm_file` fetches one file with
``act.discovery.download_arm_data`` into a local folder.

act builds its URLs on a fixed host and calls ``urlopen`` without a timeout,
and it swallows HTTP errors of ``saveData`` (printing them).  So that a user can
point bzpipe at another base URL (a mirror, a proxy, a test double) and so that
a stalled connection fails instead of hanging for ever, bzpipe wraps act's
module-level ``urlopen`` and ``requests`` once, with functions that do nothing
unless a download of bzpipe's is in progress in the same thread/context: then
they move the URL onto the configured base, apply the timeout and remember the
HTTP status of failed calls, so that bzpipe can raise a precise error.

The token travels in the URL (the service's design): no URL built here is ever
logged or put into an exception message.
"""

from __future__ import annotations

import contextvars
import http.client
import json
import logging
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from bzpipe.credentials import ArmCredentials, redact, register_secrets
from bzpipe.errors import AuthenticationError, DownloadError

log = logging.getLogger(__name__)

ARM_LIVE_URL = "https://adc.arm.gov"
_ACT_BASE = "https://adc.arm.gov"
_HEADERS = {"user-agent": "bzpipe (act-atmos ARM Live client)"}

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


# --------------------------------------------------------------------------- act transport


@dataclass
class _Transport:
    base_url: str
    timeout_s: float
    http_errors: list[tuple[int, str]] = field(default_factory=list)


_active: contextvars.ContextVar[_Transport | None] = contextvars.ContextVar("bzpipe_arm_transport",
                                                                            default=None)
_install_lock = threading.Lock()


def _rebase(url: str, base: str) -> str:
    if url.startswith(_ACT_BASE):
        return base.rstrip("/") + url[len(_ACT_BASE):]
    return url


def _wrap_urlopen(orig: Any) -> Any:
    def urlopen(req: Any, *args: Any, **kwargs: Any) -> Any:
        t = _active.get()
        if t is None:
            return orig(req, *args, **kwargs)
        if isinstance(req, urllib.request.Request):
            req.full_url = _rebase(req.full_url, t.base_url)
            path = urlsplit(req.full_url).path
        else:
            req = _rebase(str(req), t.base_url)
            path = urlsplit(req).path
        kwargs["timeout"] = t.timeout_s
        try:
            return orig(req, *args[:1], **kwargs)
        except urllib.error.HTTPError as e:
            t.http_errors.append((e.code, path))
            raise

    urlopen._bzpipe = True  # type: ignore[attr-defined]
    return urlopen


class _RequestsShim:
    """Stands in for the ``requests`` module inside act's ARM module (it only calls ``get``)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        t = _active.get()
        if t is None:
            return self._real.get(url, *args, **kwargs)
        url = _rebase(url, t.base_url)
        kwargs.setdefault("timeout", t.timeout_s)
        if "/citationservice/" not in url:
            return self._real.get(url, *args, **kwargs)
        # The citation (DOI) lookup act makes after a download must not fail a download that worked.
        try:
            r = self._real.get(url, *args, **kwargs)
        except self._real.RequestException:
            r = None
        if r is None or r.status_code != 200:
            empty = requests.Response()
            empty.status_code, empty._content = 204, b""
            return empty
        return r


def _act_arm_module() -> Any:
    """``act.discovery.arm`` with bzpipe's transport hooks installed (once per process)."""
    import act.discovery.arm as arm

    with _install_lock:
        if not getattr(arm.urlopen, "_bzpipe", False):
            arm.urlopen = _wrap_urlopen(arm.urlopen)
        if not isinstance(arm.requests, _RequestsShim):
            arm.requests = _RequestsShim(arm.requests)
    return arm


# --------------------------------------------------------------------------- errors


def _http_error(code: int, what: str, creds: ArmCredentials) -> DownloadError:
    if code in (401, 403):
        return AuthenticationError(
            f"ARM Live rejected the credentials of user {creds.username!r} (HTTP {code}) during {what}: "
            "check ARM_USERNAME / ARM_TOKEN (the token is on https://adc.arm.gov/armlive/)")
    return DownloadError(f"ARM Live {what}: HTTP {code}")


def _network_error(e: BaseException, what: str, timeout_s: float) -> DownloadError:
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, TimeoutError) or isinstance(e, requests.Timeout):
        return DownloadError(f"ARM Live {what}: no answer within {timeout_s:g} s (timed out)")
    return DownloadError(f"ARM Live {what}: {type(reason).__name__}: {redact(str(reason))}")


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
    # the same URL act builds (user name and token joined by ':' in the query string)
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
    """Fetch one ARM file into ``dest_dir`` with ``act.discovery.download_arm_data``; return its path.

    The file may be partial if this raises; callers download into a temporary
    folder and only keep the file after verifying it.
    """
    register_secrets(creds.secrets)
    parsed = parse_arm_name(name)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / name
    arm = _act_arm_module()
    transport = _Transport(base_url=base_url, timeout_s=timeout_s)
    token = _active.set(transport)
    what = f"download of {name}"
    try:
        day = parsed.day.isoformat()
        # ``time`` is a substring filter on the listed names: the full name selects exactly this file
        got = arm.download_arm_data(creds.username, creds.token, parsed.datastream, day, day,
                                    time=name, output=str(dest_dir))
    except urllib.error.HTTPError as e:  # the query act makes first
        raise _http_error(e.code, what, creds) from None
    except ConnectionRefusedError:  # act: the service answered with an HTML page (unknown user)
        raise AuthenticationError(f"ARM Live rejected user {creds.username!r} during {what}: "
                                  "check ARM_USERNAME / ARM_TOKEN") from None
    except http.client.IncompleteRead as e:
        raise DownloadError(f"ARM Live {what}: transfer cut short after {len(e.partial)} bytes "
                            f"({e.expected} more were announced)") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _network_error(e, what, timeout_s) from None
    except (ValueError, KeyError, TypeError) as e:
        raise DownloadError(f"ARM Live {what}: unexpected answer ({type(e).__name__})") from None
    finally:
        _active.reset(token)
    if str(target) not in {str(g) for g in got or []}:
        # act skips a file whose saveData failed (HTTP error or "not available") and goes on
        if transport.http_errors:
            code, _path = transport.http_errors[-1]
            raise _http_error(code, what, creds)
        if target.exists():
            raise ArmFileUnavailableError(
                f"ARM Live: {name} is not available for download (not on the service's disks; "
                "order it through ARM Data Discovery)")
        raise DownloadError(f"ARM Live {what}: the service no longer lists this file")
    size = target.stat().st_size if target.exists() else 0
    if size == 0:
        raise DownloadError(f"ARM Live {what}: received an empty file")
    log.info("ARM Live: downloaded %s (%d bytes)", name, size)
    return target
