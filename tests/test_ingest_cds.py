"""ERA-5 ingest through the real cdsapi / ecmwf-datastores client against a local CDS API double."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import date
from pathlib import Path

import pytest
from doubles.cds import CdsDouble

from bzpipe.config import KNOWN_SITES, IngestConfig
from bzpipe.credentials import DEFAULT_CDS_URL, CdsCredentials, cds_credentials_from_env
from bzpipe.errors import AuthenticationError, DownloadError
from bzpipe.ingest import IngestItem, ingest_item, is_retryable, plan
from bzpipe.sources.era5.download import CdsJobFailedError, CdsRequestRejectedError, era5_area, era5_request
from bzpipe.store import Store

KEY = "PLANTED-cds-key-77aa41f0"
LEVELS = [1000, 850, 500, 300]


@pytest.fixture
def cds():
    with CdsDouble(KEY, box_deg=0.25) as d:
        yield d


@pytest.fixture
def creds(cds: CdsDouble) -> CdsCredentials:
    return CdsCredentials(cds.url, KEY)


def make_cfg(tmp_path: Path, **kw) -> IngestConfig:
    base = dict(store_root=str(tmp_path / "store"), sites=["nsa"], start=date(2019, 2, 27),
                end=date(2019, 3, 2),
                era5_source="cds", era5_levels_hpa=LEVELS, era5_box_deg=0.25, request_timeout_s=5.0,
                cds_poll_max_s=1.0, tmp_dir=str(tmp_path / "tmp"))
    base.update(kw)
    return IngestConfig(**base)


JOBS = "work/cds-jobs/"


def assert_untouched(store: Store, key: str) -> None:
    """Nothing of ``key`` in the store; at most the id of the CDS job that a retry resumes."""
    assert not store.exists(key)
    assert store.entry(key) is None
    root = Path(store.root)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert [f for f in files if not f.startswith(JOBS)] == []
    assert not any(Path(f).name.startswith(".") for f in files), files  # no temp files


def job_record(store: Store, item: IngestItem) -> dict | None:
    key = f"{JOBS}{item.key}.json"
    return store.read_json(key) if store.exists(key) else None


def feb(cfg: IngestConfig) -> IngestItem:
    return next(i for i in plan(cfg, ("era5",)) if i.month == "2019-02")


def test_one_request_per_site_month_through_the_job_flow(tmp_path, cds, creds):
    cds.polls_before_done = 1  # accepted -> running -> successful
    cfg = make_cfg(tmp_path)
    items = plan(cfg, ("era5",))
    assert [i.key for i in items] == ["raw/era5/nsa/era5_nsa_201902.nc", "raw/era5/nsa/era5_nsa_201903.nc"]
    store = Store(cfg.store_root)
    for item in items:
        out = ingest_item(item, cfg, store, cds=creds)
        assert out.status == "fetched"
    # the client submitted, polled, fetched the results and downloaded: the whole job protocol
    assert len(cds.requests_to(r"/execution$", "POST")) == 2
    assert len(cds.requests_to(r"/jobs/\d+$", "GET")) >= 4
    assert len(cds.requests_to(r"/jobs/\d+/results$", "GET")) == 2
    assert len(cds.requests_to(r"^/download/", "GET")) == 2
    assert all(s.headers.get("private-token") == KEY for s in cds.requests_to("/api/retrieve/"))

    reqs = sorted(cds.submitted_requests(), key=lambda r: r["month"])
    feb_req, mar_req = reqs
    assert feb_req["variable"] == ["temperature", "specific_humidity", "u_component_of_wind",
                                   "v_component_of_wind", "geopotential"]
    assert feb_req["year"] == ["2019"] and feb_req["month"] == ["02"]
    assert feb_req["day"] == [f"{d:02d}" for d in range(1, 29)]  # the whole month, 2019 is no leap year
    assert len(mar_req["day"]) == 31 and len(feb_req["time"]) == 24
    assert feb_req["pressure_level"] == ["1000", "850", "500", "300"]
    n, w, s, e = feb_req["area"]
    nsa = KNOWN_SITES["nsa"]
    assert s < nsa.latitude < n and w < nsa.longitude < e and n - s <= 1.0 and e - w <= 1.0
    # the stored file is what the service delivered, recorded with its checksum and the request
    for job in cds.jobs.values():
        key = f"raw/era5/nsa/era5_nsa_2019{job['request']['month'][0]}.nc"
        stored = Path(store.root) / key
        assert stored.read_bytes() == job["file"].read_bytes()
        entry = store.entry(key)
        assert entry.sha256 == hashlib.sha256(job["file"].read_bytes()).hexdigest()
        assert entry.producer["dataset"] == "reanalysis-era5-pressure-levels"
        assert entry.producer["request"] == job["request"]
    # re-running submits nothing
    assert [ingest_item(i, cfg, store, cds=creds).status for i in items] == ["skipped", "skipped"]
    assert len(cds.requests_to(r"/execution$", "POST")) == 2


def test_http_500_then_success(tmp_path, cds, creds):
    cfg = make_cfg(tmp_path)
    store = Store(cfg.store_root)
    item = feb(cfg)
    cds.add_fault("POST", r"/execution$", "status", status=500)
    with pytest.raises(DownloadError, match="HTTP 500") as ei:
        ingest_item(item, cfg, store, cds=creds)
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)
    assert ingest_item(item, cfg, store, cds=creds).status == "fetched"


def test_a_failed_job_is_reported_with_the_services_reason(tmp_path, cds, creds):
    cfg = make_cfg(tmp_path)
    store = Store(cfg.store_root)
    item = feb(cfg)
    cds.fail_jobs = 1
    with pytest.raises(CdsJobFailedError,
                       match="nsa 2019-02 failed.*The job has failed; MARS returned no data"):
        ingest_item(item, cfg, store, cds=creds)
    assert_untouched(store, item.key)
    assert job_record(store, item) is None  # a failed job is never resumed
    assert ingest_item(item, cfg, store, cds=creds).status == "fetched"
    assert len(cds.requests_to(r"/execution$", "POST")) == 2  # the retry submitted anew


def test_a_truncated_download_is_never_stored(tmp_path, cds, creds):
    cfg = make_cfg(tmp_path)
    store = Store(cfg.store_root)
    item = feb(cfg)
    cds.add_fault("GET", r"^/download/", "truncate")
    with pytest.raises(DownloadError, match="cut short|incomplete") as ei:
        ingest_item(item, cfg, store, cds=creds)
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)
    assert list((tmp_path / "tmp").iterdir()) == []
    # the job itself succeeded: the retry downloads its results again, without a new job
    assert job_record(store, item) is not None
    assert ingest_item(item, cfg, store, cds=creds).status == "fetched"
    assert len(cds.requests_to(r"/execution$", "POST")) == 1
    assert job_record(store, item) is None


def test_a_stalled_service_times_out(tmp_path, cds, creds):
    cfg = make_cfg(tmp_path, request_timeout_s=0.5)
    store = Store(cfg.store_root)
    item = feb(cfg)
    cds.add_fault("GET", r"/jobs/\d+$", "hang", seconds=10)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"no answer within 0.5 s \(timed out\)"):
        ingest_item(item, cfg, store, cds=creds)
    assert time.monotonic() - t0 < 5
    assert_untouched(store, item.key)


def test_bad_key_401_clear_error_and_no_retry(tmp_path, cds):
    cfg = make_cfg(tmp_path)
    store = Store(cfg.store_root)
    item = feb(cfg)
    with pytest.raises(AuthenticationError,
                       match=r"CDS rejected the API key \(HTTP 401\).*Authentication failed") as ei:
        ingest_item(item, cfg, store, cds=CdsCredentials(cds.url, "WRONG-key-0000"))
    assert not is_retryable(ei.value)
    assert "WRONG-key-0000" not in str(ei.value)
    assert len(cds.requests_to("/api/retrieve/")) == 1  # the client gave up at once
    assert_untouched(store, item.key)


def test_an_invalid_request_is_rejected_and_not_retried(tmp_path, cds, creds):
    cfg = make_cfg(tmp_path, era5_levels_hpa=[1000, 333, 300])  # 333 hPa is no ERA-5 level
    item = feb(cfg)
    with pytest.raises(CdsRequestRejectedError,
                       match=r"HTTP 400\): invalid request; invalid pressure levels \[333\]") as ei:
        ingest_item(item, cfg, Store(cfg.store_root), cds=creds)
    assert not is_retryable(ei.value)


def test_an_old_style_key_is_refused_before_any_request(tmp_path, cds):
    cfg = make_cfg(tmp_path)
    with pytest.raises(AuthenticationError, match="old '<UID>:<APIKEY>' form"):
        ingest_item(feb(cfg), cfg, Store(cfg.store_root), cds=CdsCredentials(cds.url, "12345:abcdef-0000"))
    assert cds.seen == []


def test_the_key_is_never_logged_or_written(tmp_path, cds, creds, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # cdsapi's debug line dumps the client settings, key included
    caplog.set_level(logging.DEBUG, logger="bzpipe")  # flows.logging_setup may have set bzpipe to INFO
    cfg = make_cfg(tmp_path)
    store = Store(cfg.store_root)
    ingest_item(feb(cfg), cfg, store, cds=creds)
    with pytest.raises(AuthenticationError) as ei:
        ingest_item(feb(cfg), cfg, store, cds=CdsCredentials(cds.url, KEY + "-bad"), force=True)
    assert "CDS: CDSAPI" in caplog.text  # the client's settings line was logged, and scrubbed
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, str(ei.value), repr(creds), str(creds)):
        assert KEY not in text
    assert all(KEY.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_credentials_from_env_and_cdsapirc(tmp_path):
    assert cds_credentials_from_env({"CDSAPI_RC": str(tmp_path / "none")}) is None
    c = cds_credentials_from_env({"CDSAPI_URL": "http://x/api", "CDSAPI_KEY": KEY})
    assert (c.url, c.key) == ("http://x/api", KEY)
    rc = tmp_path / ".cdsapirc"
    rc.write_text(f"url: https://cds.example/api\nkey: {KEY}\n")
    c = cds_credentials_from_env({"CDSAPI_RC": str(rc)})
    assert (c.url, c.key) == ("https://cds.example/api", KEY)
    rc.write_text(f"key: {KEY}\n")
    assert cds_credentials_from_env({"CDSAPI_RC": str(rc)}).url == DEFAULT_CDS_URL
    assert KEY not in repr(c) and KEY not in str(c)


def test_area_and_request_shape():
    nsa = KNOWN_SITES["nsa"]
    n, w, s, e = era5_area(nsa, 0.75)
    # the 0.25 deg grid points within 0.75 deg of 71.323 N, 156.609 W
    assert (n, w, s, e) == (72.0, -157.25, 70.75, -156.0)
    assert era5_area(nsa, 0.1) == [71.5, -156.75, 71.25, -156.5]  # a tiny box still holds the 4 around
    assert all(abs(x * 4 - round(x * 4)) < 1e-9 for x in (n, w, s, e))
    east = nsa.model_copy(update={"longitude": 360 - 156.609})  # 0..360 convention gives the same box
    assert era5_area(east, 0.75) == [n, w, s, e]
    r = era5_request(nsa, 2020, 2, [300, 1000, 500], 0.75)
    assert len(r["day"]) == 29 and r["pressure_level"] == ["1000", "500", "300"]
    with pytest.raises(ValueError, match="300 hPa"):
        era5_request(nsa, 2020, 2, [1000, 500], 0.75)


def test_a_retry_resumes_the_queued_job_instead_of_submitting_again(tmp_path, cds, creds):
    cds.polls_before_done = 2
    cfg = make_cfg(tmp_path, request_timeout_s=0.5)
    store = Store(cfg.store_root)
    item = feb(cfg)
    cds.add_fault("GET", r"/jobs/\d+$", "hang", seconds=2, times=1)  # the first status poll stalls
    with pytest.raises(DownloadError, match="timed out") as ei:
        ingest_item(item, cfg, store, cds=creds)
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)
    rec = job_record(store, item)
    (jid,) = cds.jobs
    assert rec["request_id"] == jid and rec["service"].startswith(cds.url)
    assert KEY not in json.dumps(rec)

    assert ingest_item(item, cfg, store, cds=creds).status == "fetched"
    assert len(cds.requests_to(r"/execution$", "POST")) == 1       # one job at the CDS, not two
    assert len(cds.requests_to(rf"/jobs/{jid}/results$", "GET")) == 1
    assert job_record(store, item) is None                         # done: the record is gone
    assert (Path(store.root) / item.key).read_bytes() == cds.jobs[jid]["file"].read_bytes()


@pytest.mark.parametrize("case", ["gone", "other-request", "dismissed", "garbled"])
def test_a_recorded_job_that_cannot_serve_is_replaced_by_a_new_one(tmp_path, cds, creds, case, caplog):
    from bzpipe.ingest import StoreJobBook
    from bzpipe.sources.era5.download import request_digest

    cfg = make_cfg(tmp_path)
    store = Store(cfg.store_root)
    item = feb(cfg)
    nsa = KNOWN_SITES["nsa"]
    request = era5_request(nsa, 2019, 2, LEVELS, 0.25)
    book = StoreJobBook(store, item.key)
    rec = {"request_id": "00009999", "service": cds.url.rstrip("/"), "request_sha256": request_digest(request)}
    if case == "other-request":
        rec["request_sha256"] = request_digest({**request, "pressure_level": ["500"]})
    if case == "dismissed":  # a real job of the same request, dismissed at the CDS since
        old = ingest_item(item, make_cfg(tmp_path / "elsewhere"), Store(str(tmp_path / "elsewhere" / "store")),
                          cds=creds)
        assert old.status == "fetched"
        (jid,) = cds.jobs
        cds.jobs[jid]["status"] = "dismissed"
        rec["request_id"] = jid
    book.save(rec)
    if case == "garbled":
        (Path(store.root) / book.key).write_text("{not json")
    before = len(cds.requests_to(r"/execution$", "POST"))
    with caplog.at_level(logging.INFO, logger="bzpipe"):
        assert ingest_item(item, cfg, store, cds=creds).status == "fetched"
    assert len(cds.requests_to(r"/execution$", "POST")) == before + 1
    assert job_record(store, item) is None
    why = {"gone": "is gone at the CDS", "other-request": "for another request or service",
           "dismissed": "is dismissed; submitting anew", "garbled": None}[case]
    if why:
        assert why in caplog.text
    assert "resuming job" not in caplog.text
