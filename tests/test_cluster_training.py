"""Training on a cluster, seen from Prefect: the Kubernetes Job through the API (a double of the
kubernetes client), its pods' logs, a restarted pod, SLURM's output file, and the epochs rank 0
writes to the store appearing as progress, table and loss curve while the job runs."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from doubles.kubeapi import ApiError, FakeKube

from bzpipe.checkpoint import write_metrics
from bzpipe.config import TrainConfig
from bzpipe.store import Store
from flows import kube


class ListLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _log(self, msg: str, *args: object) -> None:
        self.lines.append(msg % args if args else msg)

    info = warning = error = _log


def _cfg(root: Path, **kw) -> TrainConfig:
    base = dict(store_root=str(root), run_name="clu", dataset="tiny", epochs=3, nnodes=2, nproc_per_node=2,
                backend="kubernetes")
    return TrainConfig(**{**base, **kw})


def _row(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "lr": 1e-3, "time_s": 1.0,
            "samples_per_s": 10.0, "is_best": True}


# --------------------------------------------------------------------------- the API calls


def test_apply_creates_adopts_a_running_job_and_replaces_a_finished_one(tmp_path):
    from flows.train import render_k8s_job

    docs = render_k8s_job(_cfg(tmp_path), "s3://b/c.json")
    fake, log = FakeKube(), ListLog()
    assert kube.apply(fake, fake, docs, log) == "created"
    [(ns, name)] = fake.jobs
    assert (ns, name) in fake.services and fake.services[(ns, name)]["spec"]["clusterIP"] == "None"
    # a retried flow task: the Job of the first attempt still runs -> waited for, not duplicated
    assert kube.apply(fake, fake, docs, log) == "adopted"
    assert [c for c in fake.calls if c[0] == "create_job"] == [("create_job", name)] * 2
    assert len(fake.jobs) == 1
    # a rerun after the Job ended: the old Job is deleted, a fresh one resumes from checkpoint-last.pt
    fake.finish(ns, name, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert kube.apply(fake, fake, docs, log) == "created"
    assert ("delete_job", name) in fake.calls and fake.status[(ns, name)].conditions is None

    class Broken(FakeKube):
        def create_namespaced_job(self, namespace, body):
            raise ApiError(403, "Forbidden")

    with pytest.raises(kube.ClusterError, match=r"cannot create Job .*\(403\) Forbidden"):
        kube.apply(Broken(), Broken(), docs, log)


def test_wait_reports_completion_or_the_failure_reason(tmp_path):
    fake = FakeKube()
    fake.create_namespaced_job("ns", {"metadata": {"name": "j", "namespace": "ns"}})
    polls = []
    fake.on_read = lambda k, name, ns, n: k.finish(ns, name) if n == 3 else None
    job = kube.wait_for_job(fake, "j", "ns", poll_s=0.01, on_poll=lambda: polls.append(1))
    assert job.status.succeeded == 1 and len(polls) == 3
    fake.delete_namespaced_job("j", "ns")
    fake.create_namespaced_job("ns", {"metadata": {"name": "j", "namespace": "ns"}})
    fake.on_read = lambda k, name, ns, n: k.finish(ns, name, "Failed", "BackoffLimitExceeded", "too many failures")
    with pytest.raises(kube.ClusterError, match=r"ns/j failed \(BackoffLimitExceeded: too many failures\)"):
        kube.wait_for_job(fake, "j", "ns", poll_s=0.01)


def test_pod_logs_follow_every_pod_including_a_restarted_one():
    fake, log = FakeKube(), ListLog()
    fake.add_pod("j", 0, "rank 0 ready\nepoch 1 done\n")
    fake.add_pod("j", 1, "rank 2 ready\n", phase="Failed")
    fake.add_pod("other", 0, "not ours\n")
    with kube.PodLogs(fake, "j", "ns", log, poll_s=0.05):
        time.sleep(0.3)
        fake.add_pod("j", 1, "rank 2 rejoined the rendezvous\n")     # the Job started the pod anew
        fake.add_pod("j", 2, "still pending\n", phase="Pending")
        time.sleep(0.3)
    text = "\n".join(log.lines)
    assert "[j pod 0] rank 0 ready" in text and "[j pod 0] epoch 1 done" in text
    assert "[j pod 1] rank 2 ready" in text and "[j pod 1] rank 2 rejoined the rendezvous" in text
    assert "not ours" not in text and "still pending" not in text
    assert sum("rank 0 ready" in line for line in log.lines) == 1        # each pod followed once


def test_no_kubernetes_client_or_credentials_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_kubernetes(name, *a, **k):
        if name == "kubernetes" or name.startswith("kubernetes."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_kubernetes)
    with pytest.raises(kube.ClusterError, match=r"needs the kubernetes Python client: pip install -e '.\[k8s\]'"):
        kube.kubernetes_apis()
    monkeypatch.setattr(builtins, "__import__", real_import)
    pytest.importorskip("kubernetes")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube.ClusterError, match="no Kubernetes credentials"):
        kube.kubernetes_apis()


# --------------------------------------------------------------------------- progress in Prefect


async def _artifacts(key: str, latest: bool = True):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        f = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        return await (client.read_latest_artifacts(artifact_filter=f) if latest
                      else client.read_artifacts(artifact_filter=f))


def _logs(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            text = "\n".join(entry.message for entry in logs)
            if "finished" in text or time.monotonic() > deadline:
                return text
            time.sleep(0.5)


def _run_and_read_logs(submit, cfg: TrainConfig) -> str:
    """Run the submit task in a flow (polling every 0.3 s); return the flow run's log text."""
    from prefect import flow, get_run_logger

    @flow
    def run_it() -> str:
        best = submit(cfg, poll_s=0.3)
        get_run_logger().info("training finished")
        return best

    state = run_it(return_state=True)
    assert state.is_completed(), state.message
    return _logs(state.state_details.flow_run_id)


@pytest.mark.prefect
def test_kubernetes_training_shows_logs_and_epochs_while_it_runs(prefect_server, tmp_path, monkeypatch):
    import asyncio

    from flows.train import submit_kubernetes

    root = tmp_path / "store"
    store = Store(root)
    cfg = _cfg(root)
    fake = FakeKube()
    seen_during: list[int] = []

    def cluster_step(k: FakeKube, name: str, ns: str, n: int) -> None:
        """What the cluster does between two polls: pods start, rank 0 writes an epoch, a pod restarts."""
        if n == 1:
            k.add_pod(name, 0, "[rank 0] epoch 1: train 1.0\n")
            k.add_pod(name, 1, "[rank 2] NCCL error: connection reset\n", phase="Failed")
        if n <= 3:
            write_metrics(store, cfg.run_name, [_row(e) for e in range(1, n + 1)])
        if n == 2:
            k.add_pod(name, 1, "[rank 2] rejoined the c10d rendezvous\n")
        if n == 4:
            seen_during.append(len(asyncio.run(_artifacts(f"train-metrics-{cfg.run_name}", latest=False))))
        if n == 5:
            time.sleep(0.3)                                      # let the log followers finish
            k.finish(ns, name)

    fake.on_read = cluster_step
    monkeypatch.setattr(kube, "kubernetes_apis", lambda: (fake, fake))

    text = _run_and_read_logs(submit_kubernetes, cfg)
    job = f"bzpipe-train-{cfg.run_name}"
    assert f"[{job} pod 0] [rank 0] epoch 1: train 1.0" in text
    assert f"[{job} pod 1] [rank 2] NCCL error" in text and f"[{job} pod 1] [rank 2] rejoined the c10d" in text
    for e in (1, 2, 3):
        assert f"clu epoch {e}: train" in text
    # the table grew while the Job ran (one version per poll with a new epoch), then the final one
    assert seen_during and seen_during[0] >= 2
    [table] = asyncio.run(_artifacts("train-metrics-clu"))
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    [prog] = asyncio.run(_artifacts("train-progress-clu"))
    assert float(prog.data) == 100.0
    [curve] = asyncio.run(_artifacts("train-curve-clu"))
    assert "data:image/png;base64," in curve.data and store.exists("models/clu/loss-curve.png")
    # the Job carried the Secrets and the elastic rendezvous
    [(ns, name)] = fake.jobs
    ctr = fake.jobs[(ns, name)]["spec"]["template"]["spec"]["containers"][0]
    assert {e["secretRef"]["name"] for e in ctr["envFrom"]} == {"bzpipe-store", "bzpipe-credentials"}
    assert "--rdzv_backend=c10d" in ctr["args"][-1]


def _fake_sbatch(bindir: Path, store_root: Path, run: str) -> None:
    """Sbatch --parsable --wait: prints the job id at once, writes the job's output file and, as rank 0
    would, one epoch of metrics after another, then exits 0."""
    script = f'''#!{sys.executable}
import json, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from bzpipe.checkpoint import write_metrics
from bzpipe.store import Store
out = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--output="))
print("777;cluster", flush=True)
path = out.replace("%j", "777")
store = Store({str(store_root)!r})
rows = []
with open(path, "w") as f:
    for e in (1, 2):
        f.write(f"[bzpipe] node 0 epoch {{e}} done\\n"); f.flush()
        rows.append({{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "lr": 1e-3, "is_best": True}})
        write_metrics(store, {run!r}, rows)
        time.sleep(0.8)
'''
    p = bindir / "sbatch"
    p.write_text(script)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


@pytest.mark.prefect
def test_slurm_training_streams_its_output_file_and_epochs(prefect_server, tmp_path, monkeypatch):
    import asyncio

    from flows.train import SLURM_LOG_DIR_ENV, submit_slurm

    root = tmp_path / "store"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake_sbatch(bindir, root, "hpc")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(SLURM_LOG_DIR_ENV, str(tmp_path / "logs"))
    (tmp_path / "logs").mkdir()
    cfg = _cfg(root, run_name="hpc", backend="slurm", epochs=2)

    text = _run_and_read_logs(submit_slurm, cfg)
    assert "[slurm 777] [bzpipe] node 0 epoch 1 done" in text and "[slurm 777] [bzpipe] node 0 epoch 2 done" in text
    assert "hpc epoch 2: train" in text
    [table] = asyncio.run(_artifacts("train-metrics-hpc"))
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (tmp_path / "logs" / "bzpipe-train-777.out").is_file()


@pytest.mark.prefect
def test_in_process_training_updates_the_curves_during_training(prefect_server, tmp_path, monkeypatch):
    """The local backend too: the table and the curve are re-published as epochs finish, not only at the end."""
    import asyncio

    import torch
    from _zarr_fixture import write_tiny_dataset

    from bzpipe import train as bztrain
    from flows.train import train as train_flow
    from flows.training_progress import POLL_ENV

    torch.set_num_threads(1)
    root = tmp_path / "store"
    write_tiny_dataset(root, n={"train": 16, "val": 8, "test": 4}, rows=32, cols=32, blind_zone_rows=4)
    monkeypatch.setenv(POLL_ENV, "0.2")
    real_train = bztrain.train

    def slow_epochs(cfg, on_epoch_end=None):           # leave the monitor time to see each epoch
        return real_train(cfg, on_epoch_end=lambda row: time.sleep(0.8))

    monkeypatch.setattr(bztrain, "train", slow_epochs)
    cfg = TrainConfig(store_root=str(root), run_name="live", dataset="tiny", epochs=3, filters=(4, 8, 8, 8, 8),
                      batch_size=4, lr=1e-3, patience=50)
    train_flow(config=cfg)
    versions = asyncio.run(_artifacts("train-metrics-live", latest=False))
    lengths = sorted(len(v.data if isinstance(v.data, list) else json.loads(v.data)) for v in versions)
    assert lengths[0] < 3 and lengths[-1] == 3, lengths       # a partial table existed before the end
    [prog] = asyncio.run(_artifacts("train-progress-live"))
    assert float(prog.data) == 100.0
