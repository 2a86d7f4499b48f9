"""Download ERA-5 pressure-level months from the Copernicus Climate Data Store with ``cdsapi``.

One request per site and month: ``reanalysis-era5-pressure-levels``, variables
t, q, u, v, z, every hour of the month, the configured pressure levels (down
to 300 hPa at least), a small box around the site, netCDF.  CloudSat inference
also asks for boxes along a granule's track, a few hours of one day each
(:func:`era5_box_request`); both go through :func:`download_request`.

``cdsapi.Client`` hands a new-CDS personal access token to
``ecmwf.datastores`` (``LegacyClient``), which speaks the CDS "retrieve" API:
``POST /retrieve/v1/processes/<dataset>/execution`` (submit), ``GET
/retrieve/v1/jobs/<id>`` (poll), ``GET /retrieve/v1/jobs/<id>/results`` (asset
location and size), then the download itself.  The key travels in the
``PRIVATE-TOKEN`` header, never in a URL.

Retries are left to the caller (the Prefect task): the client is built with
``retry_max=1`` so that a failure surfaces at once as a typed bzpipe error.

A retry does not queue the request again: CDS jobs of ERA-5 months can wait in
the CDS queue for a long time, and a network failure while polling must not
cost that place (nor load the CDS with duplicate jobs).  The caller passes a
:class:`CdsJobBook`; the job id is recorded there as soon as the CDS accepted
the request, and the next attempt for the same request polls that job instead
of submitting a new one.  A job the CDS no longer knows, or one that failed or
was dismissed, is forgotten and the request submitted afresh.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol

import requests

from bzpipe.config import Site
from bzpipe.credentials import CdsCredentials, redact, register_secrets
from bzpipe.errors import AuthenticationError, DownloadError

log = logging.getLogger(__name__)

DATASET = "reanalysis-era5-pressure-levels"
#: bzpipe's short names -> CDS variable names
VARIABLES: dict[str, str] = {
    "t": "temperature",
    "q": "specific_humidity",
    "u": "u_component_of_wind",
    "v": "v_component_of_wind",
    "z": "geopotential",
}
GRID_DEG = 0.25


class CdsRequestRejectedError(DownloadError):
    """The CDS refused the request itself (invalid parameters, unknown dataset); not retried."""

    retryable = False


class CdsJobFailedError(DownloadError):
    """The CDS accepted the request but the job failed on its side."""


class CdsJobBook(Protocol):
    """Where the id of a submitted CDS job is kept between attempts (e.g. a small file in the store)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, record: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


def request_digest(request: dict[str, Any]) -> str:
    """sha256 of the request (canonical JSON): a recorded job is resumed only for the same request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _resume_job(client: Any, book: CdsJobBook, request: dict[str, Any], what: str) -> Any | None:
    """The recorded job's ``Remote`` if it is the same request and still alive at the CDS, else None."""
    from ecmwf.datastores import processing

    rec = book.load()
    if not rec:
        return None
    job = str(rec.get("request_id") or "")
    if rec.get("request_sha256") != request_digest(request) or rec.get("service") != client.url or not job:
        log.info("CDS: the recorded job for %s was for another request or service; submitting anew", what)
        book.clear()
        return None
    try:
        remote = client.get_remote(job)
        status = remote.status
    except requests.HTTPError as e:
        code = e.response.status_code if e.response is not None else 0
        if code == 404:  # expired or deleted at the CDS
            log.info("CDS: job %s for %s is gone at the CDS; submitting anew", job, what)
            book.clear()
            return None
        raise
    except processing.ProcessingFailedError:
        status = "failed"
    if status in ("failed", "rejected", "dismissed", "deleted"):
        log.info("CDS: job %s for %s is %s; submitting anew", job, what, status)
        book.clear()
        return None
    log.info("CDS: resuming job %s for %s (status %s) instead of submitting again", job, what, status)
    return remote


def era5_area(site: Site, box_deg: float) -> list[float]:
    """``[north, west, south, east]`` in degrees: the 0.25° ERA-5 grid points within ``box_deg`` of
    the site, always including the four around it; longitudes in [-180, 180)."""
    lon = ((site.longitude + 180.0) % 360.0) - 180.0

    def bounds(c: float) -> tuple[float, float]:
        lo = min(math.ceil((c - box_deg) / GRID_DEG), math.floor(c / GRID_DEG))
        hi = max(math.floor((c + box_deg) / GRID_DEG), math.ceil(c / GRID_DEG))
        return lo * GRID_DEG, hi * GRID_DEG

    south, north = bounds(site.latitude)
    west, east = bounds(lon)
    return [min(north, 90.0), west, max(south, -90.0), east]


def era5_request(site: Site, year: int, month: int, levels_hpa: list[int], box_deg: float) -> dict[str, Any]:
    """The CDS request for one site-month (every hour of every day of the month)."""
    if min(levels_hpa) > 300:
        raise ValueError("ERA-5 levels must reach up to 300 hPa at least")
    ndays = calendar.monthrange(year, month)[1]
    return {
        "product_type": ["reanalysis"],
        "variable": [VARIABLES[v] for v in ("t", "q", "u", "v", "z")],
        "year": [f"{year:04d}"],
        "month": [f"{month:02d}"],
        "day": [f"{d:02d}" for d in range(1, ndays + 1)],
        "time": [f"{h:02d}:00" for h in range(24)],
        "pressure_level": [str(p) for p in sorted(set(levels_hpa), reverse=True)],
        "data_format": "netcdf",
        "download_format": "unarchived",
        "area": era5_area(site, box_deg),
    }


def era5_box_request(area: list[float], days: list[str], hours: list[int],
                     levels_hpa: list[int]) -> dict[str, Any]:
    """The CDS request for a box along a CloudSat track: ``area`` ``[north, west, south, east]``,
    ``days`` ``YYYY-MM-DD`` (one month), ``hours`` 0-23, every variable and level of
    :func:`era5_request`."""
    if min(levels_hpa) > 300:
        raise ValueError("ERA-5 levels must reach up to 300 hPa at least")
    months = {d[:7] for d in days}
    if len(months) != 1:
        raise ValueError(f"one request covers one month, got days of {sorted(months)}")
    return {
        "product_type": ["reanalysis"],
        "variable": [VARIABLES[v] for v in ("t", "q", "u", "v", "z")],
        "year": [days[0][:4]], "month": [days[0][5:7]],
        "day": sorted({d[8:10] for d in days}),
        "time": [f"{h:02d}:00" for h in sorted(set(hours))],
        "pressure_level": [str(p) for p in sorted(set(levels_hpa), reverse=True)],
        "data_format": "netcdf",
        "download_format": "unarchived",
        "area": [float(a) for a in area],
    }


def _callback(level: int) -> Any:
    def emit(*args: Any, **_kw: Any) -> None:
        if not args:
            return
        try:
            msg = str(args[0]) % args[1:] if len(args) > 1 else str(args[0])
        except (TypeError, ValueError):
            msg = " ".join(str(a) for a in args)
        log.log(level, "CDS: %s", redact(msg))

    return emit


def _server_detail(resp: requests.Response | None) -> str:
    if resp is None:
        return ""
    try:
        j = resp.json()
    except ValueError:
        return redact(resp.text.strip()[:200])
    if not isinstance(j, dict):
        return ""
    parts = [str(j[k]) for k in ("title", "detail") if j.get(k)]
    return redact("; ".join(parts)[:500])


def _translate(e: BaseException, what: str, timeout_s: float) -> DownloadError:
    """A typed bzpipe error (no URL with secrets, no chained traceback) for a client exception."""
    from ecmwf.datastores import processing

    if isinstance(e, requests.HTTPError):
        resp = e.response
        code = resp.status_code if resp is not None else 0
        detail = _server_detail(resp)
        url = resp.request.url if resp is not None and resp.request is not None else ""
        suffix = f": {detail}" if detail else ""
        if code in (401, 403):
            return AuthenticationError(
                f"CDS rejected the API key (HTTP {code}) during {what}{suffix}; check CDSAPI_KEY / "
                "~/.cdsapirc and that the dataset's licence is accepted in your CDS profile")
        if code >= 500 or code in (408, 429):
            return DownloadError(f"CDS {what}: HTTP {code}{suffix}")
        if url and "/results" in str(url):
            return CdsJobFailedError(f"CDS job for {what} failed (HTTP {code}){suffix}")
        return CdsRequestRejectedError(f"CDS rejected the request for {what} (HTTP {code}){suffix}")
    if isinstance(e, processing.ProcessingFailedError):
        return CdsJobFailedError(f"CDS job for {what} failed: {redact(str(e))[:500]}")
    if isinstance(e, processing.DownloadError):
        return DownloadError(f"CDS download for {what} incomplete: {redact(str(e))}")
    if isinstance(e, requests.Timeout):
        return DownloadError(f"CDS {what}: no answer within {timeout_s:g} s (timed out)")
    if isinstance(e, requests.exceptions.ChunkedEncodingError):
        return DownloadError(f"CDS download for {what} cut short (connection closed before the end)")
    if isinstance(e, requests.ConnectionError):
        return DownloadError(f"CDS {what}: cannot connect ({type(e).__name__})")
    if isinstance(e, AssertionError):  # multiurl's size check
        return DownloadError(f"CDS download for {what} incomplete: {redact(str(e))}")
    return DownloadError(f"CDS {what}: {type(e).__name__}: {redact(str(e))[:300]}")


def download_era5_month(creds: CdsCredentials, site: Site, year: int, month: int, levels_hpa: list[int],
                        box_deg: float, target: str | Path, *, timeout_s: float = 120.0,
                        poll_max_s: float = 120.0,
                        job_book: CdsJobBook | None = None) -> tuple[Path, dict[str, Any]]:
    """Retrieve one site-month into ``target``; return its path and the request sent.

    ``job_book``: where the CDS job id is kept, so that a later attempt resumes the job
    (module docstring); without it every call submits a new job.

    Raises :class:`AuthenticationError` (401/403), :class:`CdsRequestRejectedError`
    (invalid request), :class:`CdsJobFailedError` (the job failed at the CDS) or
    :class:`DownloadError` (HTTP 5xx, network, timeout, truncated transfer).
    """
    request = era5_request(site, year, month, levels_hpa, box_deg)
    what = f"{DATASET} {site.name} {year:04d}-{month:02d}"
    return download_request(creds, request, target, what, timeout_s=timeout_s, poll_max_s=poll_max_s,
                            job_book=job_book), request


def download_request(creds: CdsCredentials, request: dict[str, Any], target: str | Path, what: str, *,
                     timeout_s: float = 120.0, poll_max_s: float = 120.0,
                     job_book: CdsJobBook | None = None) -> Path:
    """Retrieve one ERA-5 pressure-level ``request`` (:func:`era5_request`, :func:`era5_box_request`)
    into ``target`` with ``cdsapi``; errors as :func:`download_era5_month`."""
    import cdsapi

    register_secrets(creds.secrets)
    if ":" in creds.key:
        raise AuthenticationError(
            "the CDS API key has the old '<UID>:<APIKEY>' form of the CDS that was retired in 2024; "
            "use the personal access token shown on your profile page of the new CDS")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        client = cdsapi.Client(
            url=creds.url, key=creds.key, quiet=True, progress=False, timeout=timeout_s,
            retry_max=1, sleep_max=poll_max_s, delete=False,
            info_callback=_callback(logging.INFO), warning_callback=_callback(logging.WARNING),
            error_callback=_callback(logging.ERROR), debug_callback=_callback(logging.DEBUG))
        # cdsapi hands new-CDS keys to ecmwf.datastores (LegacyClient); its ``client`` is the
        # datastores Client that submits and polls jobs (with the url, key, timeout and retries above)
        datastores = client.client
        remote = _resume_job(datastores, job_book, request, what) if job_book is not None else None
        if remote is None:
            remote = datastores.submit(DATASET, request)
            if job_book is not None:
                job_book.save({"request_id": remote.request_id, "service": datastores.url,
                               "request_sha256": request_digest(request), "what": what})
        remote.download(str(target))
    except DownloadError:
        raise
    except Exception as e:  # noqa: BLE001 - every client failure becomes one typed, secret-free error
        err = _translate(e, what, timeout_s)
        if job_book is not None and isinstance(err, (CdsJobFailedError, CdsRequestRejectedError)):
            job_book.clear()  # a failed job is never resumed: the next attempt submits anew
        raise err from None
    if job_book is not None:
        job_book.clear()
    if not target.exists() or target.stat().st_size == 0:
        raise DownloadError(f"CDS {what}: no file was written")
    log.info("CDS: downloaded %s (%d bytes)", target.name, target.stat().st_size)
    return target
