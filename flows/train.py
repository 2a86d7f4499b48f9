"""Prefect flow: train the UNet3+ locally, with torchrun, or on a Kubernetes / SLURM cluster.

    python -m flows.train --config run.yaml --set train.epochs=3

Backends (``TrainConfig.backend``):

* ``local``: in this process (``nproc_per_node`` = 1) or ``torchrun`` subprocesses (> 1);
* ``torchrun``: always ``torchrun --standalone --nproc_per_node N -m bzpipe.train``;
* ``kubernetes``: renders ``infra/k8s/train-job.yaml`` (an Indexed Job, S3 and service
  credentials from Secrets through ``envFrom``) and creates it with the kubernetes Python
  client (:mod:`flows.kube`); several nodes meet through an elastic c10d rendezvous on pod
  0's stable name, so a pod that Kubernetes restarts (``backoffLimit``) rejoins;
* ``slurm``: ``sbatch infra/slurm/train.sbatch`` (c10d rendezvous as well).

While it trains, the flow run shows progress whatever the backend
(:class:`flows.training_progress.TrainingMonitor`): every epoch rank 0 writes to
``metrics.jsonl`` is logged, the progress artifact advances, and the per-epoch table and
the loss-curve image are re-published; the cluster backends also stream the pods' /
job's log into the flow run.  The training task retries once: a retry resumes from
``checkpoint-last.pt``.  Returns the store URI of the best checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from bzpipe import train as bztrain
from bzpipe.checkpoint import checkpoint_key
from bzpipe.config import TrainConfig
from bzpipe.store import Store
from flows import kube
from flows.common import artifact_slug, cli_parser, resolve_config, retry_if_transient
from flows.kube import ClusterError
from flows.training_progress import TrainingMonitor

REPO = Path(__file__).resolve().parents[1]
K8S_TEMPLATE = REPO / "infra" / "k8s" / "train-job.yaml"
SLURM_SCRIPT = REPO / "infra" / "slurm" / "train.sbatch"
RDZV_PORT = 29500
#: worker-group restarts torchrun allows a node before it gives up (elastic rendezvous)
MAX_RESTARTS = 3
#: folder of the SLURM training jobs' output files (default: the checkout, the submit directory)
SLURM_LOG_DIR_ENV = "BZPIPE_SLURM_LOG_DIR"

__all__ = ["ClusterError", "render_k8s_job", "torchrun_command", "train"]


def _require_cli(name: str, backend: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ClusterError(f"backend={backend!r} needs the `{name}` command, which is not on PATH; "
                           "install and "
                           "configure it, or train with backend=local / torchrun")
    return path


def stage_config(cfg: TrainConfig) -> str:
    """Write the resolved config to ``models/<run>/train-config.json`` in the store; return its URI."""
    store = Store(cfg.store_root)
    key = Store.model_key(cfg.run_name, "train-config.json")
    store.write_json(key, cfg.model_dump(mode="json"))
    return store.uri(key)


def torchrun_command(config_uri: str, nproc_per_node: int, nnodes: int = 1, rdzv_host: str | None = None,
                     python: str = "python", rdzv_id: str = "bzpipe-train") -> list[str]:
    """The ``torchrun`` command line of a run: ``--standalone`` on one node; on several an elastic
    c10d rendezvous at ``rdzv_host`` (pod 0's stable name), so a restarted node rejoins and the
    others restart their workers (up to :data:`MAX_RESTARTS` times) instead of hanging."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}:{nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_host}:{RDZV_PORT}",
                f"--rdzv_id={rdzv_id}", f"--max_restarts={MAX_RESTARTS}", "--rdzv_conf=join_timeout=900"]
    return cmd + ["-m", "bzpipe.train", "--config", config_uri]


# --------------------------------------------------------------------------- kubernetes


def _fill(node: Any, values: dict[str, Any]) -> Any:
    """Replace ``"{{ var }}"`` (typed, whole value) and ``{{ var }}`` inside strings, recursively."""
    if isinstance(node, dict):
        out = {k: _fill(v, values) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str):
        whole = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", node)
        if whole:
            return values.get(whole.group(1))
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(values.get(m.group(1), "")), node)
    return node


def render_k8s_job(cfg: TrainConfig, config_uri: str, template: Path = K8S_TEMPLATE,
                   name: str | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Kubernetes manifests for a training run: the Job (+ a headless Service when nnodes > 1).

    Values: the template's ``variables`` defaults, then the run's (name, namespace,
    image, gpus = nproc_per_node, nnodes, command), then ``overrides``.
    """
    tpl = yaml.safe_load(Path(template).read_text())
    values = {k: v.get("default") for k, v in tpl["variables"]["properties"].items()}
    name = name or f"bzpipe-train-{artifact_slug(cfg.run_name)}"[:52].rstrip("-")
    inner = " ".join(shlex.quote(a) for a in torchrun_command(config_uri, cfg.nproc_per_node, cfg.nnodes,
                                                               rdzv_host=f"{name}-0.{name}", rdzv_id=name))
    # resource quantities are strings in the API's own models (kubernetes.client.V1ResourceRequirements)
    values.update(name=name, namespace=cfg.k8s_namespace, image=cfg.image, gpus=str(cfg.nproc_per_node),
                  nnodes=cfg.nnodes, env={"PYTHONUNBUFFERED": "1"})
    values.update(overrides)
    values["command"] = ["/bin/sh", "-c", inner]
    values["env"] = [{"name": k, "value": str(v)} for k, v in (values.get("env") or {}).items()]
    job = _fill(tpl["job_configuration"]["job_manifest"], values)
    docs = [job]
    if cfg.nnodes > 1:
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": name, "namespace": values["namespace"]},
                     "spec": {"clusterIP": "None", "selector": {"bzpipe/job": name},
                              "ports": [{"name": "rendezvous", "port": RDZV_PORT}]}})
    return docs


# --------------------------------------------------------------------------- tasks


@task(name="train-in-process", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      cache_policy=NONE)
def train_in_process(cfg: TrainConfig) -> str:
    with TrainingMonitor(cfg, get_run_logger()):
        return bztrain.train(cfg).best_uri


@task(name="train-torchrun", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      cache_policy=NONE)
def train_torchrun(cfg: TrainConfig) -> str:
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="bzpipe-train-") as d, TrainingMonitor(cfg, logger):
        path = Path(d) / "train-config.json"
        path.write_text(json.dumps(cfg.model_dump(mode="json")))
        cmd = torchrun_command(str(path), cfg.nproc_per_node, python=sys.executable)
        logger.info("running %s", " ".join(cmd))
        tail: list[str] = []
        with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            for line in proc.stdout or []:          # stream the ranks' logs into the Prefect run
                logger.info(line.rstrip())
                tail = (tail + [line])[-60:]
        if proc.returncode != 0:
            raise ClusterError(f"torchrun exited with {proc.returncode}:\n{''.join(tail)}")
    return Store(cfg.store_root).uri(checkpoint_key(cfg.run_name, "best"))


@task(name="submit-kubernetes", cache_policy=NONE)
def submit_kubernetes(cfg: TrainConfig, poll_s: float = 30.0) -> str:
    """Create the training Job with the kubernetes client and, with ``wait``, follow it to its end."""
    logger = get_run_logger()
    batch, core = kube.kubernetes_apis()
    if not cfg.store_root.startswith("s3://"):
        logger.warning("store_root %s is local; the cluster's pods must see it at the same path",
                       cfg.store_root)
    docs = render_k8s_job(cfg, stage_config(cfg))
    name, ns = docs[0]["metadata"]["name"], docs[0]["metadata"]["namespace"]
    how = kube.apply(batch, core, docs, logger)
    logger.info("Kubernetes Job %s/%s %s (%d pod(s) x %d GPU(s))", ns, name, how, cfg.nnodes, cfg.nproc_per_node)
    if cfg.wait:
        monitor = TrainingMonitor(cfg, logger, poll_s=poll_s)
        with kube.PodLogs(core, name, ns, logger, poll_s=min(poll_s, 10.0)):
            kube.wait_for_job(batch, name, ns, poll_s=poll_s, on_poll=monitor.poll)
        monitor.finish()
    return Store(cfg.store_root).uri(checkpoint_key(cfg.run_name, "best"))


def _follow_file(path: Path, logger: Any, stop: threading.Event, prefix: str) -> None:
    """Log the lines appended to ``path`` (a SLURM job's output file) until ``stop`` is set."""
    pos = 0
    while True:
        stopping = stop.wait(2.0)
        if path.is_file():
            with path.open("rb") as f:
                f.seek(pos)
                data = f.read()
            cut = data.rfind(b"\n") + 1 if not stopping else len(data)
            for line in data[:cut].decode(errors="replace").splitlines():
                if line.strip():
                    logger.info("%s %s", prefix, line.rstrip())
            pos += cut
        if stopping:
            return


@task(name="submit-slurm", cache_policy=NONE)
def submit_slurm(cfg: TrainConfig, poll_s: float | None = None) -> str:
    """``sbatch`` the training; with ``wait``, follow the job's output file and its epochs to its end."""
    logger = get_run_logger()
    sbatch = _require_cli("sbatch", "slurm")
    cmd = [sbatch, "--parsable", f"--nodes={cfg.nnodes}", f"--gpus-per-node={cfg.nproc_per_node}",
           f"--time={cfg.slurm_time}", f"--job-name=bzpipe-{artifact_slug(cfg.run_name)}"]
    if cfg.slurm_partition:
        cmd.append(f"--partition={cfg.slurm_partition}")
    if cfg.wait:
        cmd.append("--wait")
    log_dir = Path(os.environ.get(SLURM_LOG_DIR_ENV) or REPO)
    cmd += [f"--output={log_dir / 'bzpipe-train-%j.out'}", str(SLURM_SCRIPT), stage_config(cfg)]
    logger.info("running %s", " ".join(cmd))
    env = {**os.environ, "BZPIPE_GPUS_PER_NODE": str(cfg.nproc_per_node), "BZPIPE_REPO": str(REPO)}
    monitor = TrainingMonitor(cfg, logger, poll_s=poll_s) if cfg.wait else None
    stop, follower = threading.Event(), None
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        job_id = (proc.stdout.readline() if proc.stdout else "").strip().split(";")[0]
        if job_id and monitor is not None:
            out = log_dir / f"bzpipe-train-{job_id}.out"
            follower = threading.Thread(target=contextvars.copy_context().run,
                                        args=(_follow_file, out, logger, stop, f"[slurm {job_id}]"), daemon=True)
            follower.start()
            logger.info("SLURM job %s submitted; following %s", job_id, out)
        with monitor or contextlib.nullcontext():
            _, err = proc.communicate()
    stop.set()
    if follower is not None:
        follower.join(timeout=30)
    if proc.returncode != 0:
        raise ClusterError(f"SLURM job {job_id or '?'} / sbatch failed ({proc.returncode}): {err.strip()}")
    if monitor is not None:
        monitor.finish()
    logger.info("SLURM job %s %s", job_id, "finished" if cfg.wait else "submitted")
    return Store(cfg.store_root).uri(checkpoint_key(cfg.run_name, "best"))


# --------------------------------------------------------------------------- flow


@flow(name="train", log_prints=True)
def train(config: TrainConfig | None = None, config_path: str | None = None,
          overrides: list[str] | None = None) -> str:
    """Train the UNet3+ and return the store URI of the best checkpoint."""
    cfg = resolve_config(TrainConfig, config, config_path, overrides)
    if cfg.backend == "local" and cfg.nproc_per_node == 1 and cfg.nnodes == 1:
        best = train_in_process(cfg)
    elif cfg.backend in ("local", "torchrun"):
        if cfg.nnodes > 1:
            raise ClusterError("nnodes > 1 needs backend=kubernetes or slurm")
        best = train_torchrun(cfg)
    elif cfg.backend == "kubernetes":
        best = submit_kubernetes(cfg)
    else:
        best = submit_slurm(cfg)
    if cfg.backend in ("local", "torchrun"):
        publish_final_curves(cfg)
    return best


@task(name="publish-training-curves", cache_policy=NONE)
def publish_final_curves(cfg: TrainConfig) -> None:
    """The final table, loss-curve image and summary of every run (the cluster tasks do this themselves)."""
    from bzpipe.checkpoint import read_metrics
    from flows.training_progress import publish_curves

    store = Store(cfg.store_root)
    for run, _ in cfg.seed_runs():
        publish_curves(store, run, read_metrics(store, run), final=True)


def main(argv: list[str] | None = None) -> None:
    p = cli_parser("train", __doc__)
    a = p.parse_args(argv)
    print(train(config_path=a.config_path, overrides=a.overrides))


if __name__ == "__main__":
    main()
