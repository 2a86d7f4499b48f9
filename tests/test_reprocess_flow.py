"""Prefect flows of CloudSat reprocessing against a real local Prefect server.

The event test serves the deployments with ``python -m flows.reprocess serve`` (a real
Runner, in a subprocess pointed at the session's test server), runs the landing scanner,
and follows the ``bzpipe.granule.arrived`` event through the automation, the
``granule-arrived`` dispatcher and the ``reprocess-granule`` run to the Zarr output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import pytest
import torch
from _infer_helpers import save_tiny_model, write_granule

from bzpipe.config import InferConfig
from bzpipe.store import Store
from bzpipe.store.layout import output_key

torch.set_num_threads(1)
pytestmark = pytest.mark.prefect
REPO = Path(__file__).resolve().parents[1]


def _cfg(root: Path, **kw) -> InferConfig:
    return InferConfig(store_root=str(root), run_name="tiny", mc_passes=2, window_overlap=16, batch_size=32,
                       n_workers=1, **kw)


def _truncated(folder: Path, number: int) -> Path:
    src = write_granule(folder / "tmp", n=64, number=number, start=datetime(2019, 1, 3, 1, 0))
    dst = folder / src.name
    dst.write_bytes(src.read_bytes()[:4000])
    shutil.rmtree(folder / "tmp")
    return dst


async def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return arts


def test_reprocess_granule_flow_with_era5_is_idempotent_and_quarantines(prefect_server, store_root):
    """A 5-channel model: the flow ingests the ERA-5 months (offline source) through the ingest flow."""
    import asyncio

    import xarray as xr

    from bzpipe.config import SyntheticConfig
    from bzpipe.sources.synthetic import generate_cloudsat_granule
    from flows.reprocess import QUARANTINE_KEY, reprocess_granule

    norm = {"reflectivity": {}, "t": {"mean": 260.0, "std": 10.0}, "q": {"mean": 1e-3, "std": 1e-3},
            "u": {"mean": 0.0, "std": 10.0}, "v": {"mean": 0.0, "std": 10.0}}
    model_id = save_tiny_model(store_root, "tiny", channels=5, width=64, normalization=norm)
    landing = store_root / "landing" / "cloudsat"
    good = generate_cloudsat_granule(landing, datetime(2019, 1, 2, 17, 58, 51), 400, 0, SyntheticConfig(),
                                     site="nsa", ecmwf_aux=False)             # no ECMWF-AUX: ERA-5 it is
    cfg = _cfg(store_root, sites=["nsa"])
    res = reprocess_granule(str(good), config=cfg)
    store = Store(store_root)
    assert res["status"] == "done" and res["model_id"] == model_id
    assert store.is_complete(res["output_key"]) and store.exists(res["plot_key"])
    assert store.is_complete(f"raw/cloudsat/{good.name}")           # staged from the landing area
    assert store.is_complete("raw/era5/nsa/era5_nsa_201901.nc")      # fetched by the ingest flow
    out = xr.open_zarr(store.uri(res["output_key"]), consolidated=False)
    covered = int((out["atmosphere_source"] == 2).sum())
    assert 0 < covered < 400                                        # the track crosses the NSA ERA-5 box
    assert reprocess_granule(str(good), config=cfg)["status"] == "skipped"

    bad = _truncated(landing, 67101)
    res = reprocess_granule(str(bad), config=cfg)
    assert res["status"] == "quarantined" and res["category"] == "corrupt or truncated file"
    rec = store.read_json(f"quarantine/{bad.stem}.json")
    assert rec["error"] == "CorruptFileError" and bad.name in rec["reason"]
    arts = asyncio.run(_artifact(QUARANTINE_KEY))
    assert arts and any(bad.name in str(a.data) for a in arts)


def test_backfill_date_range_runs_on_dask(prefect_server, store_root):
    from flows.backfill import backfill

    model_id = save_tiny_model(store_root, "tiny", width=64)
    landing = store_root / "landing" / "cloudsat"
    day2 = [write_granule(landing, n=64, number=67200 + i, start=datetime(2019, 1, 2, 3 + i, 0)) for i in range(2)]
    write_granule(landing, n=64, number=67300, start=datetime(2019, 1, 5, 3, 0))       # outside the range
    bad = _truncated(landing, 67201)                                                     # 2019-01-03
    out = backfill(config=_cfg(store_root, plot=False), start=date(2019, 1, 2), end=date(2019, 1, 3))
    assert out["counts"] == {"done": 2, "skipped": 0, "quarantined": 1, "failed": 0}
    names = {r["granule"]: r for r in out["results"]}
    assert set(names) == {p.name for p in day2} | {bad.name}
    store = Store(store_root)
    assert all(store.is_complete(names[p.name]["output_key"]) for p in day2)
    sid = _cfg(store_root, plot=False).settings_id()
    assert not store.exists(output_key(model_id, sid, "2019005030000_67300"))
    # a backfill by granule list (bare names, found in the landing area) does nothing new
    again = backfill(config=_cfg(store_root, plot=False), granules=[p.name for p in day2])
    assert again["counts"] == {"done": 0, "skipped": 2, "quarantined": 0, "failed": 0}


async def _runs(deployment_name: str):
    """Flow runs created from the deployment of that name (not the flows called directly by other tests)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the serve process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_scan_before_any_model_announces_nothing(prefect_server, store_root):
    from flows.reprocess import scan_landing

    write_granule(store_root / "landing" / "cloudsat", n=64, number=67401)
    assert scan_landing(config=_cfg(store_root)) == []          # no failed scan every few minutes
    assert not Store(store_root).list("state/emitted")


def test_granule_event_triggers_reprocessing_once(prefect_server, store_root, tmp_path):
    import asyncio

    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from flows.reprocess import ARRIVED_DEPLOYMENT, GRANULE_EVENT, PROCESS_DEPLOYMENT, scan_landing

    model_id = save_tiny_model(store_root, "tiny", width=64)
    landing = store_root / "landing" / "cloudsat"
    granule = write_granule(landing, n=64, number=67400)
    cfg = _cfg(store_root)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    sets = [f"store_root={store_root}", "run_name=tiny", "mc_passes=2", "window_overlap=16", "batch_size=32"]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.reprocess", "serve", "--no-scan",
                             *[a for s in sets for a in ("--set", s)]],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from prefect.client.orchestration import get_client

        async def automations():
            async with get_client() as client:
                return [a for a in await client.read_automations() if a.name == "cloudsat-granule-arrived"]

        _wait_for(lambda: asyncio.run(automations()), 120, "the deployments and their automation", proc)
        time.sleep(2)                      # let the server's trigger service load the new automation
        emitted = scan_landing(config=cfg)
        assert [e["name"] for e in emitted] == [granule.name]
        gid = granule.stem.split('_CS_')[0]
        store = Store(store_root)

        def done():
            runs = asyncio.run(_runs(PROCESS_DEPLOYMENT))
            return runs if runs and all(r.state and r.state.is_final() for r in runs) else None

        runs = _wait_for(done, 240, "the reprocess-granule run", proc)
        assert [r.state.type.value for r in runs] == ["COMPLETED"], [r.state for r in runs]
        # one complete output of this model (with the settings the served deployments run with)
        outs = [k for k in store.manifest("outputs/cloudsat") if k.endswith(f"/{gid}.zarr")]
        assert len(outs) == 1 and outs[0].startswith(f"outputs/cloudsat/{model_id}-") and store.is_complete(outs[0])
        assert runs[0].idempotency_key.startswith(f"cloudsat:{granule.name}:")
        assert runs[0].idempotency_key.endswith(outs[0].split("/")[2])      # <model id>-<settings id>

        # the same announcement again: the dispatcher runs, the work is not repeated
        emit_event(event=GRANULE_EVENT, resource={"prefect.resource.id": f"cloudsat.granule.{granule.name}"},
                   payload={"granule_uri": str(granule)})

        def two_dispatches():
            runs = asyncio.run(_runs(ARRIVED_DEPLOYMENT))
            return len(runs) == 2 and all(r.state and r.state.is_final() for r in runs)

        _wait_for(two_dispatches, 180, "the second granule-arrived run", proc)
        runs = asyncio.run(_runs(PROCESS_DEPLOYMENT))
        assert len(runs) == 1
        # the scanner has nothing left to announce for this model
        assert scan_landing(config=cfg) == []
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((tmp_path / "serve.log").read_text()[-5000:])
