"""A dask.distributed client: an existing scheduler, or a LocalCluster started here.

The scheduler address comes from (first set wins) the ``address`` argument
(``BuildConfig.dask_address`` / a flow parameter) or the environment variable
``DASK_SCHEDULER_ADDRESS``; without one a :class:`distributed.LocalCluster`
with ``n_workers`` x ``threads_per_worker`` is started and closed afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

log = logging.getLogger("bzpipe.cluster")

ENV_ADDRESS = "DASK_SCHEDULER_ADDRESS"


def scheduler_address(address: str | None = None) -> str | None:
    """The scheduler to connect to: ``address``, else ``$DASK_SCHEDULER_ADDRESS``, else None."""
    return address or os.environ.get(ENV_ADDRESS) or None


@contextlib.contextmanager
def dask_client(address: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1,
                processes: bool = True, memory_limit: str | float | None = "auto") -> Iterator[Client]:
    """Yield a Client (set as the default client) for the duration of the block.

    Connects to ``scheduler_address(address)`` if there is one (the cluster is
    left running afterwards), else starts a LocalCluster (closed afterwards).
    """
    addr = scheduler_address(address)
    if addr:
        log.info("dask: connecting to the scheduler at %s", addr)
        client = Client(addr)
        try:
            yield client
        finally:
            client.close()
        return
    log.info("dask: starting a LocalCluster (%d workers x %d threads, processes=%s)",
             n_workers, threads_per_worker, processes)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                           processes=processes, dashboard_address=":0", memory_limit=memory_limit)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def current_client() -> Client | None:
    """The default client of this process, or None."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def total_threads(client: Client | None) -> int:
    """Threads across all workers (1 without a client)."""
    if client is None:
        return 1
    info = client.scheduler_info()
    return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))


#: the abstract Dask resource that GPU workers advertise (``dask worker --resources GPU=1``;
#: infra/k8s/dask-cluster.yaml, infra/slurm/dask-jobqueue.yaml, infra/compose.yaml)
GPU_RESOURCE = "GPU"


def worker_resources(client: Client) -> dict[str, float]:
    """Sum over the workers of ``client``'s cluster of each abstract resource they advertise."""
    total: dict[str, float] = {}
    for w in client.scheduler_info(n_workers=-1).get("workers", {}).values():
        for name, amount in (w.get("resources") or {}).items():
            total[name] = total.get(name, 0.0) + float(amount)
    return total


def gpu_slots(address: str | None) -> float:
    """GPUs the workers of the scheduler at ``address`` (or ``$DASK_SCHEDULER_ADDRESS``) advertise;
    0 without a scheduler (a LocalCluster declares none)."""
    addr = scheduler_address(address)
    if not addr:
        return 0.0
    with Client(addr, timeout=30) as client:
        return worker_resources(client).get(GPU_RESOURCE, 0.0)
