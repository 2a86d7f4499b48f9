"""A double of the Copernicus Climate Data Store API (new CDS, ``ecmwf-datastores``) on 127.0.0.1.

Base URL (``CDSAPI_URL``): ``http://127.0.0.1:<port>/api``.  It serves what
``cdsapi.Client`` -> ``ecmwf.datastores.LegacyClient`` calls:

* ``GET  /api/catalogue/v1/messages`` -> ``{"messages": []}``
* ``GET  /api/retrieve/v1/processes/<dataset>`` -> the process description
* ``POST /api/retrieve/v1/processes/<dataset>/execution`` ``{"inputs": <request>}`` -> 201, a job
  (``status: accepted``) with a ``monitor`` link; an invalid request -> 400
* ``GET  /api/retrieve/v1/jobs/<id>[?log=True&request=True]`` -> the job; each poll moves it on
  (accepted -> running -> successful or failed, after ``polls_before_done`` polls)
* ``GET  /api/retrieve/v1/jobs/<id>/results`` -> ``{"asset": {"value": {"href", "file:size", "type"}}}``,
  or 400 with the error of a failed job
* ``HEAD|GET /download/<id>.nc`` -> the netCDF file

Every ``/api/retrieve`` call needs the ``PRIVATE-TOKEN`` header; a wrong key gets 401.
The netCDF is written by the synthetic generator (CDS layout) for the site whose
box the request's ``area`` is, so it is a real-format ERA-5 file.
"""

from __future__ import annotations

import itertools
import json
import re
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._http import DoubleServer, Reply

DATASET = "reanalysis-era5-pressure-levels"
ERA5_LEVELS = {1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 125, 150, 175, 200, 225, 250, 300, 350, 400, 450, 500,
               550, 600, 650, 700, 750, 775, 800, 825, 850, 875, 900, 925, 950, 975, 1000}
ERA5_VARIABLES = {"temperature", "specific_humidity", "u_component_of_wind", "v_component_of_wind",
                  "geopotential", "relative_humidity", "vertical_velocity"}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def validate_request(req: dict[str, Any]) -> str | None:
    """Why the CDS would refuse ``req`` (None if it is acceptable)."""
    need = ("product_type", "variable", "year", "month", "day", "time", "pressure_level", "data_format",
            "area")
    missing = [k for k in need if k not in req]
    if missing:
        return f"missing parameters: {missing}"
    if set(req["product_type"]) != {"reanalysis"}:
        return f"product_type {req['product_type']}"
    bad = set(req["variable"]) - ERA5_VARIABLES
    if bad:
        return f"unknown variables {sorted(bad)}"
    try:
        levels = {int(p) for p in req["pressure_level"]}
    except (TypeError, ValueError):
        return "pressure_level must be integers"
    if not levels <= ERA5_LEVELS:
        return f"invalid pressure levels {sorted(levels - ERA5_LEVELS)}"
    if req["data_format"] not in ("netcdf", "grib"):
        return f"data_format {req['data_format']!r}"
    n, w, s, e = (float(x) for x in req["area"])
    if not (-90 <= s < n <= 90 and w < e):
        return f"invalid area {req['area']}"
    if any(not re.fullmatch(r"\d\d:00", t) for t in req["time"]):
        return "time must be HH:00"
    return None


class CdsDouble(DoubleServer):
    def __init__(self, key: str, *, polls_before_done: int = 0, box_deg: float = 0.75, seed: int = 0,
                 make_file: Callable[[dict[str, Any], Path], Path] | None = None) -> None:
        super().__init__()
        self.key = key
        self.polls_before_done = polls_before_done
        self.box_deg = box_deg
        self.seed = seed
        self.make_file = make_file or self._synthetic_file
        self.fail_jobs = 0  # the next N jobs fail at the CDS
        self.fail_months: set[str] = set()  # every job for these "YYYY-MM" fails
        self.jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._jlock = threading.Lock()
        self._tmp = tempfile.TemporaryDirectory(prefix="cds-double-")

    @property
    def url(self) -> str:
        """What ``CDSAPI_URL`` must be."""
        return f"{self.origin}/api"

    def stop(self) -> None:
        super().stop()
        self._tmp.cleanup()

    def submitted_requests(self) -> list[dict[str, Any]]:
        return [j["request"] for j in self.jobs.values()]

    # ------------------------------------------------------------------ files
    def _synthetic_file(self, req: dict[str, Any], out_dir: Path) -> Path:
        from bzpipe.config import KNOWN_SITES
        from bzpipe.sources import synthetic

        n, w, s, e = (float(x) for x in req["area"])
        lat, lon = (n + s) / 2, (w + e) / 2
        site = min(KNOWN_SITES.values(),
                   key=lambda t: (t.latitude - lat) ** 2 + ((t.longitude + 180) % 360 - 180 - lon) ** 2)
        levels = sorted((int(p) for p in req["pressure_level"]), reverse=True)
        from bzpipe.ingest import NETCDF_LOCK  # netCDF/HDF5 are not thread-safe; the client decodes meanwhile

        with NETCDF_LOCK:
            return Path(synthetic.write_era5_month(out_dir, site, int(req["year"][0]), int(req["month"][0]),
                                                   levels, self.box_deg, self.seed, layout="cds"))

    # ------------------------------------------------------------------ JSON shapes
    def _job_json(self, jid: str, with_request: bool) -> dict[str, Any]:
        j = self.jobs[jid]
        base = f"{self.url}/retrieve/v1/jobs/{jid}"
        out = {"processID": DATASET, "type": "process", "jobID": jid, "status": j["status"],
               "created": j["created"], "updated": _now(),
               "links": [{"href": base, "rel": "self", "type": "application/json"},
                         {"href": base, "rel": "monitor", "type": "application/json"}]}
        if j["status"] in ("successful", "failed"):
            out["links"].append({"href": f"{base}/results", "rel": "results"})
        out["metadata"] = {"log": []}
        if with_request:
            out["metadata"]["request"] = {"ids": j["request"]}
        return out

    def _run_job(self, jid: str) -> None:
        """The job's work, in the background as at the CDS: write the file (or fail)."""
        j = self.jobs[jid]
        if not j["fail"]:
            try:
                j["file"] = Path(self.make_file(j["request"], Path(self._tmp.name) / jid))
            except Exception as e:  # noqa: BLE001 - a broken generator shows up as a failed job
                j["error"] = repr(e)
        j["done"].set()

    def _advance(self, jid: str) -> None:
        """A status poll moves the job on: running until its work is done and enough polls were made."""
        j = self.jobs[jid]
        if j["status"] in ("successful", "failed", "dismissed"):
            return
        j["polls"] += 1
        if j["polls"] > self.polls_before_done and j["done"].is_set():
            j["status"] = "successful" if "file" in j else "failed"
        else:
            j["status"] = "running"

    # ------------------------------------------------------------------ routing
    def route(self, method, path, query, headers, body) -> Reply:  # type: ignore[override]
        if path == "/api/catalogue/v1/messages":
            return Reply.json({"messages": []})
        m = re.fullmatch(r"/download/(\w+)\.nc", path)
        if m and method in ("GET", "HEAD"):
            j = self.jobs.get(m[1])
            if not j or "file" not in j:
                return Reply.json({"title": "not found"}, 404)
            return Reply(200, j["file"].read_bytes(), "application/netcdf", {"Accept-Ranges": "none"})
        if not path.startswith("/api/retrieve/v1/"):
            return Reply.json({"title": "not found"}, 404)
        if headers.get("private-token") != self.key:
            return Reply.json({"type": "authentication", "title": "Authentication failed",
                               "detail": "The provided credentials are not valid"}, 401)
        rest = path[len("/api/retrieve/v1/"):]
        if m := re.fullmatch(r"processes/([\w-]+)", rest):
            if m[1] != DATASET:
                return Reply.json({"title": "Process not found", "detail": f"{m[1]} does not exist"}, 404)
            return Reply.json({"id": DATASET, "title": "ERA5 hourly data on pressure levels", "links": []})
        if (m := re.fullmatch(r"processes/([\w-]+)/execution", rest)) and method == "POST":
            if m[1] != DATASET:
                return Reply.json({"title": "Process not found"}, 404)
            try:
                req = json.loads(body)["inputs"]
            except (ValueError, KeyError, TypeError):
                return Reply.json({"title": "invalid request", "detail": "body must be {'inputs': {..}}"},
                                  400)
            why = validate_request(req)
            if why:
                return Reply.json({"title": "invalid request", "detail": why}, 400)
            with self._jlock:
                jid = f"{next(self._ids):08d}"
                fail = self.fail_jobs > 0
                self.fail_jobs -= fail
                fail = fail or f"{req['year'][0]}-{req['month'][0]}" in self.fail_months
                self.jobs[jid] = {"status": "accepted", "polls": 0, "request": req, "created": _now(),
                                  "fail": fail, "done": threading.Event()}
            threading.Thread(target=self._run_job, args=(jid,), daemon=True).start()
            return Reply.json(self._job_json(jid, False), 201)
        if m := re.fullmatch(r"jobs/(\w+)", rest):
            if m[1] not in self.jobs:
                return Reply.json({"title": "job not found"}, 404)
            if method == "DELETE":
                self.jobs[m[1]]["status"] = "dismissed"
                return Reply.json(self._job_json(m[1], False))
            with self._jlock:
                if query.get("log"):  # a status poll (Remote.status)
                    self._advance(m[1])
            return Reply.json(self._job_json(m[1], bool(query.get("request"))))
        if m := re.fullmatch(r"jobs/(\w+)/results", rest):
            j = self.jobs.get(m[1])
            if j is None:
                return Reply.json({"title": "job not found"}, 404)
            if j["status"] == "failed":
                return Reply.json({"type": "job results failed", "title": "The job has failed",
                                   "detail": "MARS returned no data (double: injected failure)",
                                   "traceback": "ecmwf.mars: no data for the requested dates"}, 400)
            if j["status"] != "successful":
                return Reply.json({"title": "results not ready", "detail": f"status {j['status']}"}, 404)
            size = j["file"].stat().st_size
            return Reply.json({"asset": {"value": {"type": "application/netcdf",
                                                   "href": f"{self.origin}/download/{m[1]}.nc",
                                                   "file:size": size, "file:checksum": ""}}})
        return Reply.json({"title": "not found"}, 404)
