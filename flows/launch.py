"""Starting a training run outside the flow's process: ``torchrun`` here, a Kubernetes Job, a SLURM job.

The train flow (:mod:`flows.train`) picks a backend and calls one of :func:`run_torchrun`,
:func:`run_kubernetes` or :func:`run_slurm`; this module does the rest:

* the ``torchrun`` command line (:func:`torchrun_command`): ``--standalone`` on one node, an
  elastic c10d rendezvous on several, so a restarted node rejoins;
* Kubernetes: the manifests rendered from ``infra/k8s/train-job.yaml`` (:func:`render_k8s_job`),
  created and polled through the kubernetes client (:mod:`flows.kube`), the pods' logs
  streamed into the flow run;
* SLURM: ``sbatch infra/slurm/train.sbatch``, the job's output file followed into the flow run;
* while a run goes on, its epochs are shown as they come (:class:`flows.training_progress.TrainingMonitor`).

Following a cluster job ends at the latest after ``TrainLaunch.max_wait_h``
(:class:`flows.settings.TrainLaunch`) with a :class:`ClusterError`; the job itself is left running.
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

from bzpipe.config import TrainConfig
from bzpipe.store import Store
from bzpipe.store.layout import train_config_key
from flows import kube
from flows.common import artifact_slug
from flows.kube import ClusterError
from flows.settings import TrainLaunch
from flows.training_progress import TrainingMonitor

REPO = Path(__file__).resolve().parents[1]
K8S_TEMPLATE = REPO / "infra" / "k8s" / "train-job.yaml"
SLURM_SCRIPT = REPO / "infra" / "slurm" / "train.sbatch"
RDZV_PORT = 29500
#: worker-group restarts torchrun allows a node before it gives up (elastic rendezvous)
MAX_RESTARTS = 3
#: folder of the SLURM training jobs' output files (default: the checkout, the submit directory)
SLURM_LOG_DIR_ENV = "BZPIPE_SLURM_LOG_DIR"

__all__ = ["MAX_RESTARTS", "SLURM_LOG_DIR_ENV", "ClusterError", "render_k8s_job", "run_kubernetes",
           "run_slurm", "run_torchrun", "stage_config", "torchrun_command"]


def _require_cli(name: str, backend: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ClusterError(f"backend={backend!r} needs the `{name}` command, which is not on PATH; "
                           "install and configure it, or train with backend=local / torchrun")
    return path


def stage_config(cfg: TrainConfig) -> str:
    """Write the resolved config to ``models/<run>/train-config.json`` in the store; return its URI."""
    store = Store(cfg.store_root)
    key = train_config_key(cfg.run_name)
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
        cmd += [f"--nnodes={nnodes}:{nnodes}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={rdzv_host}:{RDZV_PORT}", f"--rdzv_id={rdzv_id}",
                f"--max_restarts={MAX_RESTARTS}", "--rdzv_conf=join_timeout=900"]
    return cmd + ["-m", "bzpipe.train", "--config", config_uri]


# --------------------------------------------------------------------------- torchrun


def run_torchrun(cfg: TrainConfig, logger: Any) -> None:
    """``torchrun --standalone`` subprocesses on this machine, their logs streamed into ``logger``."""
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


def render_k8s_job(cfg: TrainConfig, config_uri: str, launch: TrainLaunch | None = None,
                   template: Path = K8S_TEMPLATE, name: str | None = None,
                   **overrides: Any) -> list[dict[str, Any]]:
    """Kubernetes manifests for a training run: the Job (+ a headless Service when nnodes > 1).

    Values: the template's ``variables`` defaults, then the run's (name, ``launch``'s namespace
    and image, gpus = nproc_per_node, nnodes, command), then ``overrides``.
    """
    launch = launch or TrainLaunch()
    tpl = yaml.safe_load(Path(template).read_text())
    values = {k: v.get("default") for k, v in tpl["variables"]["properties"].items()}
    name = name or f"bzpipe-train-{artifact_slug(cfg.run_name)}"[:52].rstrip("-")
    inner = " ".join(shlex.quote(a) for a in torchrun_command(
        config_uri, cfg.nproc_per_node, cfg.nnodes, rdzv_host=f"{name}-0.{name}", rdzv_id=name))
    # resource quantities are strings in the API's own models (kubernetes.client.V1ResourceRequirements)
    values.update(name=name, namespace=launch.k8s_namespace, image=launch.image, gpus=str(cfg.nproc_per_node),
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


def run_kubernetes(cfg: TrainConfig, launch: TrainLaunch, logger: Any, poll_s: float = 30.0) -> None:
    """Create the training Job with the kubernetes client and, with ``launch.wait``, follow it to
    its end (at most ``launch.max_wait_h``)."""
    batch, core = kube.kubernetes_apis()
    if not cfg.store_root.startswith("s3://"):
        logger.warning("store_root %s is local; the cluster's pods must see it at the same path",
                       cfg.store_root)
    docs = render_k8s_job(cfg, stage_config(cfg), launch)
    name, ns = docs[0]["metadata"]["name"], docs[0]["metadata"]["namespace"]
    how = kube.apply(batch, core, docs, logger)
    logger.info("Kubernetes Job %s/%s %s (%d pod(s) x %d GPU(s))", ns, name, how, cfg.nnodes,
                cfg.nproc_per_node)
    if launch.wait:
        monitor = TrainingMonitor(cfg, logger, poll_s=poll_s)
        with kube.PodLogs(core, name, ns, logger, poll_s=min(poll_s, 10.0)):
            kube.wait_for_job(batch, name, ns, poll_s=poll_s, on_poll=monitor.poll,
                              timeout_s=launch.max_wait_h * 3600.0)
        monitor.finish()


# --------------------------------------------------------------------------- slurm


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


def sbatch_command(cfg: TrainConfig, launch: TrainLaunch, sbatch: str, log_dir: Path,
                   config_uri: str) -> list[str]:
    """The ``sbatch`` command line of a training run."""
    cmd = [sbatch, "--parsable", f"--nodes={cfg.nnodes}", f"--gpus-per-node={cfg.nproc_per_node}",
           f"--time={launch.slurm_time}", f"--job-name=bzpipe-{artifact_slug(cfg.run_name)}"]
    if launch.slurm_partition:
        cmd.append(f"--partition={launch.slurm_partition}")
    if launch.wait:
        cmd.append("--wait")
    return cmd + [f"--output={log_dir / 'bzpipe-train-%j.out'}", str(SLURM_SCRIPT), config_uri]


def run_slurm(cfg: TrainConfig, launch: TrainLaunch, logger: Any, poll_s: float | None = None) -> str:
    """``sbatch`` the training; with ``launch.wait``, follow the job's output file and its epochs to
    its end (at most ``launch.max_wait_h``).  Returns the SLURM job id."""
    sbatch = _require_cli("sbatch", "slurm")
    log_dir = Path(os.environ.get(SLURM_LOG_DIR_ENV) or REPO)
    cmd = sbatch_command(cfg, launch, sbatch, log_dir, stage_config(cfg))
    logger.info("running %s", " ".join(cmd))
    env = {**os.environ, "BZPIPE_GPUS_PER_NODE": str(cfg.nproc_per_node), "BZPIPE_REPO": str(REPO)}
    monitor = TrainingMonitor(cfg, logger, poll_s=poll_s) if launch.wait else None
    stop, follower = threading.Event(), None
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        job_id = (proc.stdout.readline() if proc.stdout else "").strip().split(";")[0]
        if job_id and monitor is not None:
            out = log_dir / f"bzpipe-train-{job_id}.out"
            follower = threading.Thread(target=contextvars.copy_context().run,
                                        args=(_follow_file, out, logger, stop, f"[slurm {job_id}]"),
                                        daemon=True)
            follower.start()
            logger.info("SLURM job %s submitted; following %s", job_id, out)
        try:
            with monitor or contextlib.nullcontext():
                _, err = proc.communicate(timeout=launch.max_wait_h * 3600.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise ClusterError(f"SLURM job {job_id or '?'} did not finish within {launch.max_wait_h:g} h; "
                               f"it is left running (scancel {job_id} ends it)") from None
        finally:
            stop.set()
            if follower is not None:
                follower.join(timeout=30)
    if proc.returncode != 0:
        raise ClusterError(f"SLURM job {job_id or '?'} / sbatch failed ({proc.returncode}): {err.strip()}")
    if monitor is not None:
        monitor.finish()
    logger.info("SLURM job %s %s", job_id, "finished" if launch.wait else "submitted")
    return job_id
