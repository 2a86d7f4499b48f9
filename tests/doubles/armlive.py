"""A double of the ARM Live Data Webservice (https://adc.arm.gov/armlive/) on 127.0.0.1.

Speaks the service's documented protocol (what bzpipe's client and ``act.discovery.download_arm_data``
send):

* ``GET /armlive/data/query?user=<name>:<token>&ds=<datastream>&start=<ISO>Z&end=<ISO>Z&wt=json``
  -> ``{"status": "success", "files": [...]}`` (files whose start time lies in [start, end])
* ``GET /armlive/data/saveData?user=<name>:<token>&file=<name>`` -> the bytes (with
  ``Content-Length``), or ARM's "This data file is not available" text (status 200) for a
  file it does not hold or holds only on tape
* ``GET /citationservice/citation/datastream?id=<ds>&citationType=apa&startDate=..&endDate=..``
  -> ``{"citation": "..."}`` (act asks for it after a download; bzpipe does not)

Wrong credentials get HTTP 401.  Files are served from a folder of real-format
files (written with the synthetic generator), keyed by their ARM names.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from ._http import DoubleServer, Reply

_NAME = re.compile(r"^(?P<ds>.+\.[a-z]\d)\.(?P<date>\d{8})\.(?P<time>\d{6})\.")


def _parse_time(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


class ArmLiveDouble(DoubleServer):
    def __init__(self, username: str, token: str, files_dir: str | Path) -> None:
        super().__init__()
        self.username, self.token = username, token
        self.files_dir = Path(files_dir)
        #: names the query lists but saveData answers "not available" for (on tape, must be ordered)
        self.unavailable: set[str] = set()

    @property
    def url(self) -> str:
        """The base URL to configure (``IngestConfig.arm_live_url``)."""
        return self.origin

    def files(self) -> dict[str, Path]:
        return {p.name: p for p in self.files_dir.rglob("*") if p.is_file()}

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        return query.get("user", [""])[0] == f"{self.username}:{self.token}"

    def route(self, method, path, query, headers, body) -> Reply:  # type: ignore[override]
        if method != "GET":
            return Reply(405, b"method not allowed", "text/plain")
        if path == "/armlive/data/query":
            if not self._authorised(query):
                return Reply.json({"status": "error", "message": "invalid user or token"}, 401)
            try:
                ds = query["ds"][0]
                start, end = _parse_time(query["start"][0]), _parse_time(query["end"][0])
                assert query["wt"] == ["json"]
            except (KeyError, ValueError, AssertionError):
                return Reply.json({"status": "error", "message": "bad query"}, 400)
            names = []
            for name in sorted(self.files()):
                m = _NAME.match(name)
                if m and m["ds"] == ds:
                    t = datetime.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S")
                    if start <= t <= end:
                        names.append(name)
            return Reply.json({"status": "success", "files": names, "datastream": ds})
        if path == "/armlive/data/saveData":
            if not self._authorised(query):
                return Reply.json({"status": "error", "message": "invalid user or token"}, 401)
            name = query.get("file", [""])[0]
            f = self.files().get(name)
            if f is None or name in self.unavailable:
                return Reply(200, f"This data file is not available on /data/archive: {name}".encode(),
                             "text/plain")
            return Reply(200, f.read_bytes(), "application/octet-stream",
                         {"Content-Disposition": f'attachment; filename="{name}"'})
        if path == "/citationservice/citation/datastream":
            ds = query.get("id", ["?"])[0]
            return Reply.json({"citation": f"Atmospheric Radiation Measurement (ARM) user facility. {ds}. "
                                           "ARM Data Center (double)."})
        return Reply(404, b"not found", "text/plain")


def write_served_files(d: Path, site: str, days: list, cfg) -> Path:
    """Real-format KaZR and met files (the synthetic writers), as ARM Live holds them, in ``d``."""
    from bzpipe.sources import synthetic

    for day in days:
        synthetic.write_kazr_day(d, site, day, cfg, 0)
        synthetic.write_met_day(d, site, day, cfg, 0)
    return d
