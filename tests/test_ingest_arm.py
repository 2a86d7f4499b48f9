"""ARM Live ingest (query + direct saveData requests) against a local ARM Live double."""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import time
from datetime import date
from pathlib import Path

import pytest
from doubles.armlive import ArmLiveDouble, write_served_files

from bzpipe.config import IngestConfig, SyntheticConfig
from bzpipe.credentials import ArmCredentials, arm_credentials_from_env, redact
from bzpipe.errors import AuthenticationError, DownloadError, InputFileError, StoreError
from bzpipe.ingest import IngestItem, arm_datastream, ingest_item, is_retryable, plan
from bzpipe.sources.arm.download import ArmFileUnavailableError, parse_arm_name
from bzpipe.store import Store

USER = "bzpipe-tester"
TOKEN = "PLANTED-arm-token-5d1c9e77"
DAYS = [date(2019, 1, 1), date(2019, 1, 2)]
TINY = SyntheticConfig(time_step_s=120.0, hours_per_day=1.0, n_gates=48)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real-format KaZR and met files (synthetic writer), as ARM Live holds them."""
    return write_served_files(tmp_path_factory.mktemp("armlive"), "nsa", DAYS, TINY)


@pytest.fixture
def armlive(served: Path, tmp_path: Path):
    files = tmp_path / "served"
    shutil.copytree(served, files)
    with ArmLiveDouble(USER, TOKEN, files) as d:
        yield d


@pytest.fixture
def creds() -> ArmCredentials:
    return ArmCredentials(USER, TOKEN)


def make_cfg(tmp_path: Path, armlive: ArmLiveDouble, **kw) -> IngestConfig:
    base = dict(store_root=str(tmp_path / "store"), sites=["nsa"], start=DAYS[0], end=DAYS[-1],
                kazr_source="arm", arm_live_url=armlive.url, synthetic=TINY, request_timeout_s=5.0,
                tmp_dir=str(tmp_path / "tmp"))
    base.update(kw)
    return IngestConfig(**base)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_untouched(store: Store, key: str) -> None:
    """Nothing at ``key``, no manifest entry, and no temporary left anywhere in the store."""
    assert not store.exists(key)
    assert store.entry(key) is None
    root = Path(store.root)
    leftovers = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert leftovers == [], leftovers


def kazr_item(cfg: IngestConfig, creds: ArmCredentials, day: date) -> IngestItem:
    return next(i for i in plan(cfg, ("kazr",), arm=creds) if i.day == day.isoformat())


def test_months_drop_the_listed_files_of_other_months(tmp_path, armlive, creds):
    """ARM Live lists start..end; only the days in ``months`` are planned (the double serves January)."""
    span = {"start": date(2018, 12, 31), "end": DAYS[-1]}
    january = plan(make_cfg(tmp_path, armlive, months=[1], **span), ("kazr",), arm=creds)
    assert sorted(i.day for i in january) == [d.isoformat() for d in DAYS]
    assert plan(make_cfg(tmp_path, armlive, months=[12], **span), ("kazr",), arm=creds) == []


# --------------------------------------------------------------------------- the happy path


def test_lists_and_ingests_real_format_files(tmp_path, armlive, creds, served):
    cfg = make_cfg(tmp_path, armlive)
    items = plan(cfg, ("kazr", "met"), arm=creds)
    served_names = sorted(p.name for p in served.iterdir())
    assert sorted(i.name for i in items) == served_names
    # the same file names the offline source produces: one layout for both sources
    offline = plan(cfg.model_copy(update={"kazr_source": "offline"}), ("kazr", "met"))
    assert sorted(i.key for i in offline) == sorted(i.key for i in items)

    store = Store(cfg.store_root)
    for item in items:
        out = ingest_item(item, cfg, store, arm=creds)
        assert out.status == "fetched"
        assert out.key == f"raw/{item.kind}/nsa/{item.name}"
        src = served / item.name
        assert (Path(store.root) / out.key).read_bytes() == src.read_bytes()
        entry = store.entry(out.key)
        assert entry.sha256 == sha(src) and entry.size == src.stat().st_size
        assert entry.producer["source"] == "arm" and entry.producer["datastream"] == item.datastream
        assert entry.producer["config"]["values"]["arm_live_url"] == armlive.url
    # the service's URLs reached the double: the query, then saveData with user=<name>:<token>
    saves = armlive.requests_to("/armlive/data/saveData")
    assert sorted(s.query["file"][0] for s in saves) == served_names
    assert all(s.query["user"] == [f"{USER}:{TOKEN}"] for s in saves)
    assert {s.query["ds"][0] for s in armlive.requests_to("/armlive/data/query")} == {
        "nsaarsclkazr1kolliasC1.c0", "nsametC1.b1"}

    # idempotent: a second run downloads nothing
    n_before = len(armlive.seen)
    again = [ingest_item(i, cfg, store, arm=creds) for i in items]
    assert [o.status for o in again] == ["skipped"] * len(items)
    assert len(armlive.requests_to("/armlive/data/saveData")) == len(served_names)
    assert len(armlive.seen) == n_before


def test_a_stored_file_that_no_longer_matches_its_checksum_is_fetched_again(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    first = ingest_item(item, cfg, store, arm=creds)
    path = Path(store.root) / item.key
    path.write_bytes(path.read_bytes()[:100])  # damaged behind the store's back
    again = ingest_item(item, cfg, store, arm=creds)
    assert again.status == "fetched" and again.sha256 == first.sha256
    assert store.verify(item.key)


# --------------------------------------------------------------------------- faults


def test_http_500_then_success(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    armlive.add_fault("GET", "/armlive/data/saveData", "status", status=500)
    with pytest.raises(DownloadError, match=r"download of nsa\S+\.nc: HTTP 500") as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)
    assert ingest_item(item, cfg, store, arm=creds).status == "fetched"
    assert store.verify(item.key)


def test_query_500_is_a_retryable_download_error(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    armlive.add_fault("GET", "/armlive/data/query", "status", status=503)
    with pytest.raises(DownloadError,
                       match="query for nsaarsclkazr1kolliasC1.c0 2019-01-01..2019-01-02: HTTP 503"):
        plan(cfg, ("kazr",), arm=creds)


def test_a_stalled_connection_times_out(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive, request_timeout_s=0.5)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    armlive.add_fault("GET", "/armlive/data/saveData", "hang", seconds=10)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"no answer within 0.5 s \(timed out\)") as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert time.monotonic() - t0 < 5
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)


def test_a_transfer_cut_short_is_never_stored(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    armlive.add_fault("GET", "/armlive/data/saveData", "truncate")
    with pytest.raises(DownloadError, match="transfer cut short after") as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)


def test_a_truncated_file_fails_the_readability_check(tmp_path, armlive, creds):
    """The service sends a file that is itself cut short (consistent length): the reader rejects it."""
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    f = armlive.files_dir / item.name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputFileError, match=item.name) as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert is_retryable(ei.value)
    assert_untouched(store, item.key)


def test_a_complete_file_without_usable_data_is_kept(tmp_path, armlive, creds, caplog):
    """An instrument outage: the file decodes but every temperature is missing. It is stored as the
    service has it (with a warning); a truncated file, by contrast, is refused (test above)."""
    import netCDF4

    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = next(i for i in plan(cfg, ("met",), arm=creds) if i.day == DAYS[0].isoformat())
    with netCDF4.Dataset(armlive.files_dir / item.name, "a") as nc:
        nc["temp_mean"][:] = nc["temp_mean"]._FillValue
    with caplog.at_level(logging.WARNING, logger="bzpipe.ingest"):
        out = ingest_item(item, cfg, store, arm=creds)
    assert out.status == "fetched" and store.verify(item.key)
    assert f"{item.name}: complete but without usable data" in caplog.text


def test_bad_credentials_401_clear_error_and_no_retry(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    bad = ArmCredentials(USER, "WRONG-token-0000")
    with pytest.raises(AuthenticationError,
                       match=rf"rejected the credentials of user '{USER}' \(HTTP 401\)") as ei:
        plan(cfg, ("kazr",), arm=bad)
    assert "ARM_TOKEN" in str(ei.value) and "WRONG-token-0000" not in str(ei.value)
    assert not is_retryable(ei.value)
    assert len(armlive.requests_to("/armlive/data/query")) == 1  # one request, no retry loop

    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    with pytest.raises(AuthenticationError, match="HTTP 401"):
        ingest_item(item, cfg, store, arm=bad)
    assert_untouched(store, item.key)


def test_an_html_login_page_is_an_authentication_error(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    armlive.add_fault("GET", "/armlive/data/query", "html")
    with pytest.raises(AuthenticationError, match="check ARM_USERNAME / ARM_TOKEN"):
        plan(cfg, ("kazr",), arm=creds)


def test_a_file_the_service_cannot_deliver_is_not_retried(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    armlive.unavailable.add(item.name)  # listed, but "This data file is not available"
    with pytest.raises(ArmFileUnavailableError, match=f"{item.name} is not available for download") as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert not is_retryable(ei.value)
    assert_untouched(store, item.key)


def test_a_file_gone_since_the_listing_is_a_clear_error(tmp_path, armlive, creds):
    """Listed, then removed before saveData: the service answers "not available" for it."""
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    (armlive.files_dir / item.name).unlink()
    with pytest.raises(ArmFileUnavailableError, match=f"{item.name} is not available for download"):
        ingest_item(item, cfg, store, arm=creds)
    assert_untouched(store, item.key)


def test_one_direct_savedata_request_per_file(tmp_path, armlive, creds):
    """The download is one saveData GET with user=<name>:<token> (no second listing, no citation call)."""
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    before = len(armlive.requests_to("/armlive/data/query"))
    assert ingest_item(item, cfg, store, arm=creds).status == "fetched"
    [save] = armlive.requests_to("/armlive/data/saveData")
    assert save.query == {"user": [f"{USER}:{TOKEN}"], "file": [item.name]}
    assert len(armlive.requests_to("/armlive/data/query")) == before
    assert armlive.requests_to("/citationservice/") == []


def test_a_stall_in_the_middle_of_the_body_times_out(tmp_path, armlive, creds, monkeypatch):
    """Headers arrive, then the body stops: the read timeout fails the download, nothing is kept."""
    import requests

    from bzpipe.sources.arm import download

    real_get = requests.get

    class Stalling:
        def __init__(self, r):
            self._r = r
            self.status_code, self.headers = r.status_code, r.headers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._r.close()

        def iter_content(self, n):
            from urllib3.exceptions import ReadTimeoutError

            yield b"CDF\x01"
            raise requests.ConnectionError(ReadTimeoutError(None, "/armlive/data/saveData", "Read timed out."))

    monkeypatch.setattr(download.requests, "get", lambda *a, **k: Stalling(real_get(*a, **k)))
    cfg = make_cfg(tmp_path, armlive, request_timeout_s=0.5)
    store = Store(cfg.store_root)
    item = IngestItem(kind="kazr", site="nsa", name="nsaarsclkazr1kolliasC1.c0.20190101.000000.nc",
                      source="arm", datastream="nsaarsclkazr1kolliasC1.c0", day="2019-01-01")
    with pytest.raises(DownloadError, match=r"no answer within 0.5 s \(timed out\)") as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert is_retryable(ei.value) and TOKEN not in str(ei.value)
    assert_untouched(store, item.key)


@pytest.mark.parametrize("err, why", [(errno.ENOSPC, "no space left on the device"),
                                      (errno.EACCES, "permission denied")])
def test_a_full_or_read_only_store_leaves_nothing_behind(tmp_path, armlive, creds, monkeypatch, err, why):
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    item = kazr_item(cfg, creds, DAYS[0])
    real_copy = shutil.copyfile

    def copy_then_fail(src, dst, *a, **k):
        # write part of the file, as a disk filling up mid-write does, then fail
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError(err, "simulated")

    monkeypatch.setattr("bzpipe.store.shutil.copyfile", copy_then_fail)
    with pytest.raises(StoreError, match=rf"{item.name}: write failed: {why}; nothing was changed") as ei:
        ingest_item(item, cfg, store, arm=creds)
    assert not is_retryable(ei.value)
    assert_untouched(store, item.key)
    assert list((tmp_path / "tmp").iterdir()) == []  # the download's temporary folder is gone too
    monkeypatch.setattr("bzpipe.store.shutil.copyfile", real_copy)
    assert ingest_item(item, cfg, store, arm=creds).status == "fetched"


# --------------------------------------------------------------------------- secrets


def test_the_token_is_never_logged_printed_or_written(tmp_path, armlive, creds, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3's URL lines included
    cfg = make_cfg(tmp_path, armlive)
    store = Store(cfg.store_root)
    messages = []
    for item in plan(cfg, ("kazr", "met"), arm=creds):
        ingest_item(item, cfg, store, arm=creds)
    armlive.add_fault("GET", "/armlive/data/saveData", "status", status=500)
    item = IngestItem(kind="kazr", site="nsa", name=kazr_item(cfg, creds, DAYS[0]).name, source="arm",
                      datastream="nsaarsclkazr1kolliasC1.c0", day="2019-01-01")
    for bad_call in (lambda: ingest_item(item, cfg, store, arm=creds, force=True),
                     lambda: plan(cfg, ("kazr",), arm=ArmCredentials(USER, TOKEN + "x"))):
        with pytest.raises(DownloadError) as ei:
            bad_call()
        messages += [str(ei.value), repr(ei.value)]
    # urllib3 logged the query URLs that carry the token, and the filter scrubbed them
    assert f"/armlive/data/query?user={USER}:***&ds=" in caplog.text
    out, err = capfd.readouterr()
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for text in (caplog.text, out, err, "\n".join(messages), repr(creds), str(creds)):
        assert TOKEN not in text
    assert TOKEN.encode() not in written


def test_credentials_from_environment():
    assert arm_credentials_from_env({}) is None
    c = arm_credentials_from_env({"ARM_USERNAME": USER, "ARM_TOKEN": TOKEN})
    assert (c.username, c.token) == (USER, TOKEN)
    assert TOKEN not in repr(c) and TOKEN not in str(c)
    assert redact(f"user={USER}:{TOKEN}&ds=x") == f"user={USER}:***&ds=x"
    with pytest.raises(AuthenticationError, match="ARM_TOKEN"):
        arm_credentials_from_env({"ARM_USERNAME": USER})


def test_the_kazr_datastream_is_configurable(tmp_path, armlive, creds):
    cfg = make_cfg(tmp_path, armlive, kazr_datastream="kazrge", kazr_level="a1", sites=["nsa", "oli"])
    assert [arm_datastream(cfg, s, "kazr") for s in ("nsa", "oli")] == ["nsakazrgeC1.a1", "olikazrgeM1.a1"]
    assert arm_datastream(cfg, "oli", "met") == "olimetM1.b1"
    default = make_cfg(tmp_path, armlive, sites=["nsa", "oli"])  # the CloudSat-calibrated KaZR-ARSCL VAP
    assert [arm_datastream(default, s, "kazr") for s in ("nsa", "oli")] == [
        "nsaarsclkazr1kolliasC1.c0", "oliarsclkazr1kolliasM1.c0"]
    assert plan(cfg, ("kazr",), arm=creds) == []  # the double holds no kazrge files
    assert {s.query["ds"][0] for s in armlive.requests_to("/armlive/data/query")} == {
        "nsakazrgeC1.a1", "olikazrgeM1.a1"}


def test_arm_file_names_parse():
    p = parse_arm_name("nsaarsclkazr1kolliasC1.c0.20190101.000000.nc")
    assert (p.datastream, p.day, p.hhmmss) == ("nsaarsclkazr1kolliasC1.c0", date(2019, 1, 1), "000000")
    assert parse_arm_name("sgpkazrgeC1.a1.20190529.000002.cdf").datastream == "sgpkazrgeC1.a1"
    with pytest.raises(ValueError):
        parse_arm_name("era5_nsa_201901.nc")


def test_offline_files_are_made_again_when_the_synthetic_settings_change(tmp_path):
    """The generator's file names do not carry its settings (6 h and 16 h of a day share a name):
    an offline file is skipped only when it was generated with the same seed and settings."""
    def cfg(hours: float, seed: int = 7) -> IngestConfig:
        return IngestConfig(store_root=str(tmp_path / "store"), sites=["nsa"], start="2019-01-01",
                            end="2019-01-01", seed=seed, fetch_met=False, era5_source="offline",
                            synthetic=SyntheticConfig(hours_per_day=hours))

    store = Store(str(tmp_path / "store"))
    item = plan(cfg(2.0), kinds=("kazr",))[0]
    assert ingest_item(item, cfg(2.0), store).status == "fetched"
    first = store.entry(item.key).sha256
    assert ingest_item(item, cfg(2.0), store).status == "skipped"            # the same settings: kept
    assert ingest_item(item, cfg(3.0), store).status == "fetched"            # 3 h instead of 2: made again
    assert store.entry(item.key).sha256 != first
    assert ingest_item(item, cfg(3.0), store).status == "skipped"
    assert ingest_item(item, cfg(3.0, seed=8), store).status == "fetched"     # another seed: made again
    # a schedule of hours (synthetic.hours_per_day_from) counts by the file's day: a change after
    # 2019-01-01 leaves its file as it is, a change that reaches it makes it again
    later = cfg(3.0, seed=8).model_copy(update={"synthetic": SyntheticConfig(
        hours_per_day=3.0, hours_per_day_from={date(2019, 1, 2): 1.0})})
    assert ingest_item(item, later, store).status == "skipped"
    sooner = cfg(3.0, seed=8).model_copy(update={"synthetic": SyntheticConfig(
        hours_per_day=3.0, hours_per_day_from={date(2019, 1, 1): 1.0})})
    assert ingest_item(item, sooner, store).status == "fetched"
    same = cfg(1.0, seed=8)                              # 1 h on that day either way: kept
    assert ingest_item(item, same, store).status == "skipped"


def test_offline_worker_processes_write_the_same_files_and_survive_a_dead_worker(tmp_path):
    """``ingest.offline_processes`` runs the generator in spawned workers (both cores in the demo):
    the stored bytes are the same as in-thread, the setting is not a synthetic setting (nothing is
    made again), and a worker that dies fails only the item in hand, with a retryable error; the
    next item gets a new pool."""
    import os
    from concurrent.futures.process import BrokenProcessPool

    from bzpipe.ingest import drop_offline_pool, offline_pool

    def cfg(root: str, processes: int) -> IngestConfig:
        return IngestConfig(store_root=str(tmp_path / root), sites=["nsa"], start="2019-01-01", end="2019-01-02",
                            seed=7, fetch_met=False, era5_source="offline", synthetic=TINY,
                            offline_processes=processes)

    items = plan(cfg("a", 0), kinds=("kazr", "era5"))
    assert sorted(i.kind for i in items) == ["era5", "kazr", "kazr"]
    try:
        in_thread = {i.key: ingest_item(i, cfg("a", 0)).sha256 for i in items}
        in_workers = {i.key: ingest_item(i, cfg("b", 2)).sha256 for i in items}
        assert in_workers == in_thread
        assert {ingest_item(i, cfg("a", 2)).status for i in items} == {"skipped"}

        dead = offline_pool(1).submit(os._exit, 3)          # a worker killed under the pool
        with pytest.raises(BrokenProcessPool):
            dead.result()
        with pytest.raises(DownloadError, match=f"offline generator process for {items[0].name} died") as err:
            ingest_item(items[0], cfg("c", 1))
        assert is_retryable(err.value)
        assert Store(str(tmp_path / "c")).entry(items[0].key) is None
        assert ingest_item(items[0], cfg("c", 1)).sha256 == in_thread[items[0].key]
    finally:
        drop_offline_pool()
