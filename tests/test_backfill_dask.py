"""backfill-cloudsat on an existing Dask cluster whose workers advertise GPUs: one Prefect task per
granule on those workers, the GPU resource requested per granule, a progress artifact."""

from __future__ import annotations

import asyncio
from datetime import date, datetime

import pytest
import torch
from _infer_helpers import save_tiny_model, write_granule
from distributed.diagnostics.plugin import SchedulerPlugin

from bzpipe.config import InferConfig

torch.set_num_threads(1)


@pytest.mark.prefect
@pytest.mark.slow
def test_backfill_runs_one_task_per_granule_on_the_clusters_gpu_workers(prefect_server, store_root):
    from distributed import LocalCluster

    from bzpipe.cluster import GPU_RESOURCE, gpu_slots
    from flows.backfill import backfill

    model_id = save_tiny_model(store_root, "tiny", width=64)
    landing = store_root / "landing" / "cloudsat"
    names = {write_granule(landing, n=64, number=67500 + i, start=datetime(2019, 1, 2, 3 + i, 0)).name
             for i in range(2)}
    # an existing cluster (as compose / k8s / SLURM run one) whose worker says it holds one GPU
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      resources={GPU_RESOURCE: 1}) as cluster:
        assert gpu_slots(cluster.scheduler_address) == 1.0
        seen = Restrictions(cluster.scheduler)
        cluster.scheduler.add_plugin(seen)
        cfg = InferConfig(store_root=str(store_root), run_name="tiny", mc_passes=2, window_overlap=16,
                          batch_size=32, plot=False, dask_address=cluster.scheduler_address, max_in_flight=1)
        state = backfill(config=cfg, start=date(2019, 1, 2), end=date(2019, 1, 2), return_state=True)
    out = state.result()
    # one Dask task per granule, each holding one GPU slot of a worker while it ran
    assert seen.restrictions == [{GPU_RESOURCE: 1}, {GPU_RESOURCE: 1}], seen.restrictions
    assert out["counts"] == {"done": 2, "skipped": 0, "quarantined": 0, "failed": 0}
    assert {r["granule"] for r in out["results"]} == names and all(r["model_id"] == model_id for r in out["results"])
    # ... one Prefect task run per granule, each visible in the UI under its name, and the progress
    # artifact at 100 %, read from this run's subflows only (other tests share the server)
    names_seen, progress = asyncio.run(_task_runs_and_progress(state.state_details.flow_run_id))
    assert sorted(names_seen) == sorted(f"fill-raw/cloudsat/{n}" for n in names)
    assert [(a.type, float(a.data)) for a in progress] == [("progress", 100.0)]


async def _task_runs_and_progress(flow_run_id, timeout: float = 30.0):
    """The completed ``fill-raw/...`` task runs under ``flow_run_id``'s subflows, and their
    progress artifacts (task runs reach the server as events, a little later: poll)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterName,
    )

    from flows.backfill import BACKFILL_PROGRESS_KEY

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            subflows = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            ids = [flow_run_id] + [f.id for f in subflows]
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_="fill-raw/cloudsat/"), flow_run_id=TaskRunFilterFlowRunId(any_=ids)))
            names = [r.name for r in runs if r.state and r.state.is_completed()]
            if len(names) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        progress = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[BACKFILL_PROGRESS_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
    return names, progress


class Restrictions(SchedulerPlugin):
    """Scheduler plugin: the resource restrictions of every task as it starts processing."""

    name = "bzpipe-test-restrictions"

    def __init__(self, scheduler) -> None:
        self.scheduler, self.restrictions = scheduler, []

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            self.restrictions.append(dict((ts.resource_restrictions if ts else None) or {}))
