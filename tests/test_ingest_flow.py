"""The Prefect ingest flows: offline default, the ARM Live and CDS doubles, faults, secrets, S3."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from doubles.armlive import ArmLiveDouble, write_served_files
from doubles.cds import CdsDouble
from doubles.s3 import list_objects, moto_s3

from bzpipe.config import IngestConfig, SyntheticConfig
from bzpipe.sources import synthetic
from bzpipe.store import Store

pytestmark = pytest.mark.prefect

USER = "bzpipe-flow-tester"
TOKEN = "PLANTED-arm-token-flow-93b2e1"
KEY = "PLANTED-cds-key-flow-41c7d0"
DAYS = [date(2019, 1, 31), date(2019, 2, 1)]  # two days, two ERA-5 months
TINY = SyntheticConfig(time_step_s=120.0, hours_per_day=1.0, n_gates=48)
LEVELS = [1000, 850, 500, 300]


def tiny_cfg(root: str, tmp: Path, **kw: Any) -> IngestConfig:
    base = dict(store_root=root, sites=["nsa"], start=DAYS[0], end=DAYS[-1], synthetic=TINY,
                era5_levels_hpa=LEVELS, era5_box_deg=0.25, retries=2, retry_delay_s=0.05,
                request_timeout_s=15.0, cds_poll_max_s=0.5, arm_concurrency=4, cds_concurrency=2,
                tmp_dir=str(tmp / "inflight"))
    base.update(kw)
    return IngestConfig(**base)


EXPECTED_KEYS = sorted(
    [f"raw/kazr/nsa/{synthetic.kazr_file_name('nsa', d)}" for d in DAYS]
    + [f"raw/met/nsa/{synthetic.met_file_name('nsa', d)}" for d in DAYS]
    + ["raw/era5/nsa/era5_nsa_201901.nc", "raw/era5/nsa/era5_nsa_201902.nc"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_served_files(tmp_path_factory.mktemp("armlive-flow"), "nsa", DAYS, TINY)


@pytest.fixture
def services(served: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = tmp_path / "served"
    shutil.copytree(served, files)
    with ArmLiveDouble(USER, TOKEN, files) as arm, CdsDouble(KEY, box_deg=0.25) as cds:
        monkeypatch.setenv("ARM_USERNAME", USER)
        monkeypatch.setenv("ARM_TOKEN", TOKEN)
        monkeypatch.setenv("CDSAPI_URL", cds.url)
        monkeypatch.setenv("CDSAPI_KEY", KEY)
        yield arm, cds


def remote_cfg(tmp_path: Path, arm: ArmLiveDouble, **kw: Any) -> IngestConfig:
    return tiny_cfg(str(tmp_path / "store"), tmp_path, kazr_source="arm", era5_source="cds",
                    arm_live_url=arm.url, **kw)


# --------------------------------------------------------------------------- Prefect read-back


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def run_record(state) -> dict[str, Any]:
    """Everything Prefect recorded about a flow run: logs, artifacts, parameters, state message."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    run_id = state.state_details.flow_run_id
    with _client() as c:
        logs, offset = [], 0
        while True:
            page = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200,
                               offset=offset)
            logs += page
            offset += len(page)
            if len(page) < 200:
                break
        artifacts = c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        run = c.read_flow_run(run_id)
    return {"logs": [lg.message for lg in logs], "artifacts": artifacts, "parameters": run.parameters,
            "message": state.message or ""}


def prefect_database_files() -> list[Path]:
    """The test server's SQLite database (and its journal files)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    files = [p for p in db.parent.glob(db.name + "*") if p.is_file()]
    assert files, f"no Prefect database at {db}"
    return files


def report_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    table = next(a for a in rec["artifacts"] if a.type == "table")
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    return data


def progress_values(rec: dict[str, Any]) -> list[float]:
    return [float(a.data) for a in rec["artifacts"] if a.type == "progress"]


def assert_layout(store: Store) -> None:
    raw = store.list("raw")
    assert raw == EXPECTED_KEYS
    manifest = store.manifest("raw")
    assert sorted(manifest) == EXPECTED_KEYS
    for key in raw:
        assert store.verify(key), key  # manifest checksum == stored bytes


# --------------------------------------------------------------------------- tests


def test_offline_default_fills_the_store_and_reruns_skip_everything(prefect_server, tmp_path):
    from flows.ingest import ingest

    cfg = tiny_cfg(str(tmp_path / "store"), tmp_path)
    assert (cfg.kazr_source, cfg.era5_source) == ("offline", "offline")  # no credentials needed
    state = ingest(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"fetched": 6, "skipped": 0, "failed": 0}
    store = Store(cfg.store_root)
    assert_layout(store)
    rec = run_record(state)
    rows = report_rows(rec)
    assert sorted(r["key"] for r in rows) == EXPECTED_KEYS and {r["status"] for r in rows} == {"fetched"}
    assert progress_values(rec) == [100.0]

    again = ingest(config=cfg, return_state=True)
    assert again.result()["counts"] == {"fetched": 0, "skipped": 6, "failed": 0}
    assert {r["status"] for r in report_rows(run_record(again))} == {"skipped"}


def test_generated_files_run_in_batches_and_a_failed_file_does_not_stop_its_batch(prefect_server, tmp_path,
                                                                               monkeypatch):
    """Offline files are generated one task per kind, site and month; within a batch a failure is
    per file: a transient one is retried alone (the stored files of the batch are not made again), a
    permanent one is not retried, and the others of its batch are stored."""
    from bzpipe import ingest as ingest_lib
    from bzpipe.errors import ConfigError, DownloadError
    from flows.ingest import ingest

    days = [date(2019, 1, 30), date(2019, 1, 31)]
    cfg = tiny_cfg(str(tmp_path / "store"), tmp_path, start=days[0], end=days[1])
    assert {k: len(b) for k, b in ingest_lib.offline_batches(ingest_lib.plan(cfg)).items()} == {
        "kazr-nsa-2019-01": 2, "met-nsa-2019-01": 2, "era5-nsa-2019-01": 1}
    real, calls = ingest_lib.generate_offline, []

    def flaky(kind, dest_dir, site, when, cfg_):
        calls.append((kind, when))
        if (kind, when) == ("kazr", days[0].isoformat()) and calls.count((kind, when)) == 1:
            raise DownloadError("generator process died (planted)")              # transient: retried
        if (kind, when) == ("met", days[1].isoformat()):
            raise ConfigError("planted permanent failure")                         # never retried
        return real(kind, dest_dir, site, when, cfg_)

    monkeypatch.setattr(ingest_lib, "generate_offline", flaky)
    state = ingest(config=cfg, return_state=True)
    assert state.is_failed() and "1 of 5 ingest item(s) failed" in state.message
    met_bad = f"raw/met/nsa/{synthetic.met_file_name('nsa', days[1])}"
    assert f"{met_bad}: ConfigError: planted permanent failure" in state.message
    assert calls.count(("kazr", days[0].isoformat())) == 2            # the failed file, again
    assert calls.count(("kazr", days[1].isoformat())) == 1            # its stored batch mate, once
    assert calls.count(("met", days[1].isoformat())) == 1 and calls.count(("met", days[0].isoformat())) == 1
    rows = {r["key"]: r for r in report_rows(run_record(state))}
    assert rows[met_bad]["status"] == "failed" and "planted permanent" in rows[met_bad]["message"]
    assert sorted(k for k, r in rows.items() if r["status"] != "failed") == sorted(
        k for k in Store(cfg.store_root).list("raw"))                                # 4 stored, all verified
    assert sum(r["status"] == "fetched" for r in rows.values()) == 3 and len(rows) == 5
    assert sum(r["status"] == "skipped" for r in rows.values()) == 1  # stored by the first try of its batch
    assert progress_values(run_record(state))[-1] == 100.0


def test_a_batch_task_that_dies_reports_the_files_it_stored_as_present(prefect_server, tmp_path, monkeypatch):
    """A batch task that fails outside its per-file handling (killed, out of memory) names no file;
    the files it stored before are complete and verified in the store, so the report shows them as
    present and only the missing ones as failed."""
    import flows.ingest as flow_ingest
    from bzpipe import ingest as ingest_lib
    from flows.ingest import ingest

    days = [date(2019, 1, 30), date(2019, 1, 31)]
    cfg = tiny_cfg(str(tmp_path / "store"), tmp_path, start=days[0], end=days[1])
    real = ingest_lib.ingest_batch

    def dies_after_one(items, cfg_, store):
        items = list(items)
        real(items[:1], cfg_, store)
        raise RuntimeError("worker killed (planted)")

    monkeypatch.setattr(flow_ingest, "ingest_batch", dies_after_one)
    state = ingest(config=cfg, return_state=True)
    assert state.is_failed() and "2 of 5 ingest item(s) failed" in state.message
    stored = set(Store(cfg.store_root).list("raw"))
    assert len(stored) == 3                                # the first file of each of the three batches
    rows = {r["key"]: r for r in report_rows(run_record(state))}
    assert len(rows) == 5
    for key, row in rows.items():
        assert "worker killed (planted)" in row["message"]
        assert row["status"] == ("skipped" if key in stored else "failed"), row
    assert all(key in state.message for key, row in rows.items() if row["status"] == "failed")
    assert not any(key in state.message for key in stored)


def test_against_the_services_same_layout_idempotent_and_no_secret_anywhere(
        prefect_server, tmp_path, services, caplog, capfd):
    from flows.ingest import ARM_LIMIT, CDS_LIMIT, ingest
    from flows.logging_setup import configure_bzpipe_logging

    arm, cds = services
    cfg = remote_cfg(tmp_path, arm)
    configure_bzpipe_logging("DEBUG")  # bzpipe's debug lines (the CDS client's settings) go to Prefect too
    try:
        state = ingest(config=cfg, return_state=True)
    finally:
        configure_bzpipe_logging("INFO")
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"fetched": 6, "skipped": 0, "failed": 0}
    store = Store(cfg.store_root)
    assert_layout(store)  # the same layout as the offline default
    for name in (p.name for p in arm.files_dir.iterdir()):
        kind = "kazr" if ".nc" in name else "met"
        stored = Path(store.root) / f"raw/{kind}/nsa/{name}"
        assert stored.read_bytes() == (arm.files_dir / name).read_bytes()
    assert len(cds.requests_to(r"/execution$", "POST")) == 2

    with _client() as c:  # the per-service limits were created with the configured sizes
        assert c.read_global_concurrency_limit_by_name(ARM_LIMIT).limit == cfg.arm_concurrency
        assert c.read_global_concurrency_limit_by_name(CDS_LIMIT).limit == cfg.cds_concurrency

    n_saves, n_jobs = len(arm.requests_to("saveData")), len(cds.requests_to(r"/execution$"))
    again = ingest(config=cfg, return_state=True)
    assert again.result()["counts"] == {"fetched": 0, "skipped": 6, "failed": 0}
    assert len(arm.requests_to("saveData")) == n_saves and len(cds.requests_to(r"/execution$")) == n_jobs

    # the planted secrets appear nowhere: Prefect logs, artifacts, parameters, our logs, stdout, any file
    out, err = capfd.readouterr()
    texts = [caplog.text, out, err]
    for st in (state, again):
        rec = run_record(st)
        assert rec["logs"], "the scan must see the run's logs"
        if st is state:  # the lines that carried the secrets were recorded, scrubbed
            assert any("CDS: CDSAPI" in m and "'key': '***'" in m for m in rec["logs"])
        texts += rec["logs"] + [json.dumps(rec["parameters"]), rec["message"]]
        texts += [f"{a.data} {a.description}" for a in rec["artifacts"]]
    blob = "\n".join(texts)
    files = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    files += b"".join(p.read_bytes() for p in prefect_database_files())  # all the server recorded
    for secret in (TOKEN, KEY):
        assert secret not in blob
        assert secret.encode() not in files


def test_faults_retry_then_a_failed_month_does_not_stop_the_others(prefect_server, tmp_path, services):
    from flows.ingest import ingest

    arm, cds = services
    # recovered by retries (2 faults: even if both hit one file, its 3rd attempt succeeds)
    arm.add_fault("GET", "/armlive/data/saveData", "status", status=500, times=1)
    arm.add_fault("GET", "/armlive/data/saveData", "truncate", times=1)
    cds.fail_months = {"2019-02"}  # every attempt at February fails at the CDS
    cfg = remote_cfg(tmp_path, arm)
    state = ingest(config=cfg, return_state=True)
    assert state.is_failed()
    assert "1 of 6 ingest item(s) failed" in state.message
    assert "raw/era5/nsa/era5_nsa_201902.nc: CdsJobFailedError" in state.message
    assert "MARS returned no data" in state.message
    store = Store(cfg.store_root)
    present = [k for k in EXPECTED_KEYS if k != "raw/era5/nsa/era5_nsa_201902.nc"]
    assert store.list("raw") == present and all(store.verify(k) for k in present)
    assert not store.exists("raw/era5/nsa/era5_nsa_201902.nc")
    assert len([j for j in cds.jobs.values() if j["request"]["month"] == ["02"]]) == 1 + cfg.retries
    rows = {r["key"]: r for r in report_rows(run_record(state))}
    assert rows["raw/era5/nsa/era5_nsa_201902.nc"]["status"] == "failed"
    assert sum(r["status"] == "fetched" for r in rows.values()) == 5
    # fixing the service and re-running fetches only what is missing
    cds.fail_months = set()
    again = ingest(config=cfg, return_state=True)
    assert again.result()["counts"] == {"fetched": 1, "skipped": 5, "failed": 0}
    assert_layout(store)


def test_bad_credentials_fail_fast_without_retry_storm(prefect_server, tmp_path, services, monkeypatch):
    from flows.ingest import ingest

    arm, cds = services
    monkeypatch.setenv("ARM_TOKEN", "WRONG-arm-token-0000")
    monkeypatch.setenv("CDSAPI_KEY", "WRONG-cds-key-0000")
    cfg = remote_cfg(tmp_path, arm, retries=3)
    state = ingest(config=cfg, return_state=True)
    assert state.is_failed()
    assert "4 of 4 ingest item(s) failed" in state.message  # 2 ARM listings + 2 ERA-5 months
    assert "rejected the credentials of user 'bzpipe-flow-tester' (HTTP 401)" in state.message
    assert "CDS rejected the API key (HTTP 401)" in state.message
    assert "WRONG-arm-token-0000" not in state.message and "WRONG-cds-key-0000" not in state.message
    # one attempt each, although retries=3
    assert len(arm.requests_to("/armlive/data/query")) == 2
    assert len(cds.requests_to("/api/retrieve/v1/processes/")) == 2
    assert Store(cfg.store_root).list("raw") == []


def test_ingest_into_s3_via_moto(prefect_server, tmp_path):
    from flows.ingest import ingest_kazr

    with moto_s3("bzpipe-test") as endpoint:
        cfg = tiny_cfg("s3://bzpipe-test/run1", tmp_path, fetch_met=False)
        state = ingest_kazr(config=cfg, return_state=True)
        assert state.is_completed(), state.message
        objects = list_objects(endpoint, "bzpipe-test", "run1/")
        kazr = [k for k in EXPECTED_KEYS if k.startswith("raw/kazr/")]
        assert sorted(k for k in objects if k.startswith("run1/raw/")) == [f"run1/{k}" for k in kazr]
        assert sorted(k for k in objects if k.startswith("run1/manifests/")) == \
            [f"run1/manifests/{k}.json" for k in kazr]
        store = Store(cfg.store_root)
        assert all(store.verify(k) for k in kazr)
        again = ingest_kazr(config=cfg, return_state=True)
        assert again.result()["counts"] == {"fetched": 0, "skipped": 2, "failed": 0}


def test_credentials_from_prefect_secret_blocks(prefect_server, monkeypatch, tmp_path):
    from prefect.blocks.system import Secret

    from bzpipe.errors import AuthenticationError
    from flows.ingest import arm_credentials, cds_credentials
    from flows.settings import IngestSecrets

    for var in ("ARM_USERNAME", "ARM_TOKEN", "CDSAPI_URL", "CDSAPI_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no-cdsapirc"))
    secrets = IngestSecrets(arm_username_secret="t-arm-user", arm_token_secret="t-arm-token",
                        cds_key_secret="t-cds-key")
    with pytest.raises(AuthenticationError,
                       match="set ARM_USERNAME and ARM_TOKEN, or create .*'t-arm-token'"):
        arm_credentials(secrets)
    with pytest.raises(AuthenticationError, match="CDSAPI_KEY.*'t-cds-key'"):
        cds_credentials(secrets)
    # other values than the planted secrets: the server's database keeps these (that is its job)
    Secret(value="block-user").save("t-arm-user", overwrite=True)
    Secret(value="block-arm-token-1234").save("t-arm-token", overwrite=True)
    Secret(value="block-cds-key-5678").save("t-cds-key", overwrite=True)
    arm = arm_credentials(secrets)
    assert (arm.username, arm.token) == ("block-user", "block-arm-token-1234")
    cds = cds_credentials(secrets)
    assert cds.key == "block-cds-key-5678" and cds.url == "https://cds.climate.copernicus.eu/api"
    monkeypatch.setenv("ARM_USERNAME", "env-user")  # the environment wins over the blocks
    monkeypatch.setenv("ARM_TOKEN", "env-token-1234")
    assert arm_credentials(secrets).username == "env-user"


def test_the_arm_live_limit_caps_requests_in_flight(prefect_server, tmp_path, services):
    from flows.ingest import ARM_LIMIT, ingest_kazr

    arm, _ = services
    with _client() as c:
        try:
            c.delete_global_concurrency_limit_by_name(ARM_LIMIT)
        except Exception:  # noqa: BLE001 - not there yet
            pass
    # slow answers, so that downloads would overlap without the limit
    arm.add_fault("GET", "/armlive/data/saveData", "hang", seconds=0.3, times=4)
    cfg = remote_cfg(tmp_path, arm, arm_concurrency=1)
    try:
        state = ingest_kazr(config=cfg, return_state=True)
        assert state.is_completed(), state.message
        with _client() as c:
            assert c.read_global_concurrency_limit_by_name(ARM_LIMIT).limit == 1  # created from the config
        assert len(arm.requests_to("saveData")) == 4
        assert arm.max_in_flight == 1
    finally:
        with _client() as c:
            c.delete_global_concurrency_limit_by_name(ARM_LIMIT)
