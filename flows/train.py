"""Prefect flow: train the UNet3+ locally, with torchrun, or on a Kubernetes / SLURM cluster.

    python -m flows.train --config run.yaml --set train.epochs=3

Backends (``TrainConfig.backend``):

* ``local``: in this process (``nproc_per_node`` = 1) or ``torchrun`` subprocesses (> 1);
* ``torchrun``: always ``torchrun --standalone --nproc_per_node N -m bzpipe.train``;
* ``kubernetes``: renders ``infra/k8s/train-job.yaml`` and ``kubectl apply``s it;
* ``slurm``: ``sbatch infra/slurm/train.sbatch``.

The training task retries once: a retry resumes from ``checkpoint-last.pt``.
Per-epoch metrics go to the Prefect UI as a table artifact, and a loss-curve
PNG is written to the store and linked from a markdown artifact.  Returns the
store URI of the best checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from bzpipe import train as bztrain
from bzpipe.checkpoint import checkpoint_key, loss_curve_png, read_metrics
from bzpipe.config import TrainConfig
from bzpipe.errors import BzpipeError
from bzpipe.store import Store
from flows.common import artifact_slug, cli_parser, resolve_config

REPO = Path(__file__).resolve().parents[1]
K8S_TEMPLATE = REPO / "infra" / "k8s" / "train-job.yaml"
SLURM_SCRIPT = REPO / "infra" / "slurm" / "train.sbatch"
RDZV_PORT = 29500


class ClusterError(BzpipeError):
    """A cluster CLI is missing, or a submitted training job failed."""



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
                     python: str = "python") -> list[str]:
    """The ``torchrun`` command line of a run (``--standalone`` on one node)."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nnodes}", "--node_rank=${JOB_COMPLETION_INDEX:-0}",
                f"--master_addr={rdzv_host}", f"--master_port={RDZV_PORT}"]
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
    inner = " ".join(shlex.quote(a) if not a.startswith("--node_rank") else a
                     for a in torchrun_command(config_uri, cfg.nproc_per_node, cfg.nnodes,
                                               rdzv_host=f"{name}-0.{name}"))
    values.update(name=name, namespace=cfg.k8s_namespace, image=cfg.image, gpus=cfg.nproc_per_node,
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


@task(name="train-in-process", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def train_in_process(cfg: TrainConfig) -> str:
    return bztrain.train(cfg).best_uri


@task(name="train-torchrun", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def train_torchrun(cfg: TrainConfig) -> str:
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="bzpipe-train-") as d:
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
    logger = get_run_logger()
    kubectl = _require_cli("kubectl", "kubernetes")
    if not cfg.store_root.startswith("s3://"):
        logger.warning("store_root %s is local; the cluster's pods must see it at the same path",
                       cfg.store_root)
    docs = render_k8s_job(cfg, stage_config(cfg))
    name, ns = docs[0]["metadata"]["name"], docs[0]["metadata"]["namespace"]
    proc = subprocess.run([kubectl, "apply", "-f", "-"], input=yaml.safe_dump_all(docs), text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise ClusterError(f"kubectl apply failed for job {name}: {proc.stderr.strip()}")
    logger.info("submitted Kubernetes job %s/%s", ns, name)
    while cfg.wait:
        st = subprocess.run([kubectl, "get", "job", name, "-n", ns, "-o",
                             "jsonpath={.status.succeeded},{.status.failed}"], capture_output=True, text=True)
        if st.returncode != 0:
            raise ClusterError(f"kubectl get job {name}: {st.stderr.strip()}")
        counts = [int(v) if v.strip().isdigit() else 0 for v in st.stdout.strip().split(",")]
        ok, failed = (counts + [0, 0])[:2]
        if ok >= cfg.nnodes:
            break
        if failed and failed > int(docs[0]["spec"].get("backoffLimit", 0)):
            raise ClusterError(f"Kubernetes job {ns}/{name} failed; see `kubectl logs job/{name} -n {ns}`")
        time.sleep(poll_s)
    return Store(cfg.store_root).uri(checkpoint_key(cfg.run_name, "best"))


@task(name="submit-slurm", cache_policy=NONE)
def submit_slurm(cfg: TrainConfig) -> str:
    logger = get_run_logger()
    sbatch = _require_cli("sbatch", "slurm")
    cmd = [sbatch, "--parsable", f"--nodes={cfg.nnodes}", f"--gpus-per-node={cfg.nproc_per_node}",
           f"--time={cfg.slurm_time}", f"--job-name=bzpipe-{artifact_slug(cfg.run_name)}"]
    if cfg.slurm_partition:
        cmd.append(f"--partition={cfg.slurm_partition}")
    if cfg.wait:
        cmd.append("--wait")
    cmd += [str(SLURM_SCRIPT), stage_config(cfg)]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "BZPIPE_GPUS_PER_NODE": str(cfg.nproc_per_node),
                               "BZPIPE_REPO": str(REPO)})
    if proc.returncode != 0:
        raise ClusterError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    logger.info("SLURM job %s %s", proc.stdout.strip().split(";")[0], "finished" if cfg.wait else "submitted")
    return Store(cfg.store_root).uri(checkpoint_key(cfg.run_name, "best"))


@task(name="publish-training-curves", cache_policy=NONE)
def publish_training_curves(store_root: str, run_name: str) -> str | None:
    """Table artifact of the per-epoch metrics + a loss-curve PNG in the store, linked from markdown."""
    store = Store(store_root)
    rows = read_metrics(store, run_name)
    if not rows:
        return None
    slug = artifact_slug(run_name)
    cols = ["epoch", "train_loss", "val_loss", "lr", "time_s", "samples_per_s", "is_best"]
    create_table_artifact([{c: r.get(c) for c in cols} for r in rows], key=f"train-metrics-{slug}",
                          description=f"Per-epoch training metrics of run {run_name}")
    png_key = Store.model_key(run_name, "loss-curve.png")
    store.write_bytes(png_key, loss_curve_png(rows, title=run_name))
    png_uri = store.uri(png_key)
    link = png_uri if "://" in png_uri else Path(png_uri).as_uri()
    best = min(rows, key=lambda r: r["val_loss"])
    create_markdown_artifact(
        f"## Training run `{run_name}`\n\n"
        f"- epochs run: {rows[-1]['epoch']} ({rows[-1].get('stopped') or 'running'})\n"
        f"- best validation masked MAE: {best['val_loss']:.5f} at epoch {best['epoch']}\n"
        f"- best checkpoint: `{store.uri(checkpoint_key(run_name, 'best'))}`\n\n"
        f"[loss curve (PNG)]({link})\n",
        key=f"train-curve-{slug}", description=f"Loss curve of run {run_name}")
    return png_uri


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
    if cfg.backend in ("local", "torchrun") or cfg.wait:
        publish_training_curves(cfg.store_root, cfg.run_name)
    return best


def main(argv: list[str] | None = None) -> None:
    p = cli_parser("train", __doc__)
    a = p.parse_args(argv)
    print(train(config_path=a.config_path, overrides=a.overrides))


if __name__ == "__main__":
    main()
