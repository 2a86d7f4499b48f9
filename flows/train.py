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

The launching itself (command lines, manifests, following a job) is :mod:`flows.launch`; where a
cluster job runs (image, namespace, SLURM partition and time, how long to follow it) are the flow
settings :class:`flows.settings.TrainLaunch`, keys of the config's ``train`` section.

While it trains, the flow run shows progress whatever the backend
(:class:`flows.training_progress.TrainingMonitor`): every epoch rank 0 writes to
``metrics.jsonl`` is logged, the progress artifact advances, and the per-epoch table and
the loss-curve image are re-published; the cluster backends also stream the pods' /
job's log into the flow run.  The training task retries once: a retry resumes from
``checkpoint-last.pt``.  Returns the store URI of the best checkpoint.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bzpipe import train as bztrain
from bzpipe.config import TrainConfig
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key
from flows import launch as launcher
from flows.common import NO_CACHE, cli_parser, resolve_stage, retry_if_transient
from flows.kube import ClusterError
from flows.launch import MAX_RESTARTS, SLURM_LOG_DIR_ENV, render_k8s_job, torchrun_command
from flows.settings import FlowSettings, TrainLaunch
from flows.training_progress import TrainingMonitor

__all__ = ["MAX_RESTARTS", "SLURM_LOG_DIR_ENV", "ClusterError", "render_k8s_job", "torchrun_command", "train"]


def _best_uri(cfg: TrainConfig) -> str:
    return Store(cfg.store_root).uri(checkpoint_key(cfg.run_name, "best"))


# --------------------------------------------------------------------------- tasks
# every one is bounded by TrainLaunch.max_wait_h (timeout_seconds, set by the flow)


@task(name="train-in-process", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def train_in_process(cfg: TrainConfig) -> str:
    with TrainingMonitor(cfg, get_run_logger()):
        return bztrain.train(cfg).best_uri


@task(name="train-torchrun", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def train_torchrun(cfg: TrainConfig) -> str:
    launcher.run_torchrun(cfg, get_run_logger())
    return _best_uri(cfg)


@task(name="submit-kubernetes", cache_policy=NO_CACHE)
def submit_kubernetes(cfg: TrainConfig, launch: TrainLaunch | None = None, poll_s: float = 30.0) -> str:
    """Create the training Job and, with ``launch.wait``, follow it to its end (:mod:`flows.launch`)."""
    launcher.run_kubernetes(cfg, launch or TrainLaunch(), get_run_logger(), poll_s=poll_s)
    return _best_uri(cfg)


@task(name="submit-slurm", cache_policy=NO_CACHE)
def submit_slurm(cfg: TrainConfig, launch: TrainLaunch | None = None, poll_s: float | None = None) -> str:
    """``sbatch`` the training; with ``launch.wait``, follow it to its end (:mod:`flows.launch`)."""
    launcher.run_slurm(cfg, launch or TrainLaunch(), get_run_logger(), poll_s=poll_s)
    return _best_uri(cfg)


# --------------------------------------------------------------------------- flow


@flow(name="train")
def train(config: TrainConfig | None = None, config_path: str | None = None,
          overrides: list[str] | None = None, settings: FlowSettings | None = None) -> str:
    """Train the UNet3+ and return the store URI of the best checkpoint.

    ``settings``: where a cluster job runs (:class:`flows.settings.TrainLaunch`); default: the
    ``train`` section of the config file.
    """
    cfg, found = resolve_stage(TrainConfig, config, config_path, overrides, settings)
    launch = found.train
    limit: dict[str, Any] = {"timeout_seconds": launch.max_wait_h * 3600.0}
    if cfg.backend == "local" and cfg.nproc_per_node == 1 and cfg.nnodes == 1:
        best = train_in_process.with_options(**limit)(cfg)
    elif cfg.backend in ("local", "torchrun"):
        if cfg.nnodes > 1:
            raise ClusterError("nnodes > 1 needs backend=kubernetes or slurm")
        best = train_torchrun.with_options(**limit)(cfg)
    elif cfg.backend == "kubernetes":
        best = submit_kubernetes.with_options(**limit)(cfg, launch)
    else:
        best = submit_slurm.with_options(**limit)(cfg, launch)
    if cfg.backend in ("local", "torchrun"):
        publish_final_curves(cfg)
    return best


@task(name="publish-training-curves", cache_policy=NO_CACHE)
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
