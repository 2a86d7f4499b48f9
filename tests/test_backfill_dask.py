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


async def _latest(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.mark.prefect
@pytest.mark.slow
def test_backfill_runs_one_task_per_granule_on_the_clusters_gpu_workers(prefect_server, store_root):
    from distributed import LocalCluster

    from bzpipe.cluster import GPU_RESOURCE, gpu_slots
    from flows.backfill import BACKFILL_PROGRESS_KEY, backfill

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
        out = backfill(config=cfg, start=date(2019, 1, 2), end=date(2019, 1, 2))
    # one Dask task per granule, each holding one GPU slot of a worker while it ran
    assert seen.restrictions == [{GPU_RESOURCE: 1}, {GPU_RESOURCE: 1}], seen.restrictions
    assert out["counts"] == {"done": 2, "skipped": 0, "quarantined": 0, "failed": 0}
    assert {r["granule"] for r in out["results"]} == names and all(r["model_id"] == model_id for r in out["results"])
    [progress] = asyncio.run(_latest(BACKFILL_PROGRESS_KEY))
    assert progress.type == "progress" and float(progress.data) == 100.0
    # ... and one Prefect task run per granule, each visible in the UI under its name
    assert sorted(asyncio.run(_task_run_names("fill-raw/cloudsat/2019002"))) == sorted(
        f"fill-raw/cloudsat/{n}" for n in names)


async def _task_run_names(prefix: str, timeout: float = 30.0) -> list[str]:
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:                          # task runs reach the server as events, a little later
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=prefix)))
            names = [r.name for r in runs if r.state and r.state.is_completed()]
            if len(names) >= 2 or time.monotonic() > deadline:
                return names
            await asyncio.sleep(0.5)


class Restrictions(SchedulerPlugin):
    """Scheduler plugin: the resource restrictions of every task as it starts processing."""

    name = "bzpipe-test-restrictions"

    def __init__(self, scheduler) -> None:
        self.scheduler, self.restrictions = scheduler, []

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            self.restrictions.append(dict((ts.resource_restrictions if ts else None) or {}))
