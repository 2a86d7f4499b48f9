"""Training progress in the Prefect UI while a model trains, whatever runs the training.

Rank 0 of a training run (in this process, a torchrun subprocess, a Kubernetes pod or a
SLURM job) rewrites ``models/<run>/metrics.jsonl`` in the store after every epoch.
:class:`TrainingMonitor` reads it every ``poll_s`` seconds from a background thread of
the flow run and, for every new epoch of every run (one per seed):

* logs ``<run> epoch N/E: train ... val ...`` into the flow run;
* updates a progress artifact (epochs done / epochs);
* re-publishes the per-epoch table (``train-metrics-<run>``) and the loss-curve image
  (``train-curve-<run>``: the PNG in the store, shown by URL or embedded, see
  :mod:`flows.links`), so the curves in the UI grow during training.

The thread runs in a copy of the flow run's context, so artifacts and log lines belong
to the run.  A failed read is logged and retried at the next poll; it never stops training.
"""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Any

from bzpipe.checkpoint import loss_curve_png, read_metrics
from bzpipe.config import TrainConfig
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key, loss_curve_key
from flows.common import artifact_slug
from flows.links import link_markdown, publish_image

POLL_ENV = "BZPIPE_TRAIN_POLL_S"
COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "time_s", "samples_per_s", "is_best"]


def default_poll_s() -> float:
    try:
        return max(0.2, float(os.environ.get(POLL_ENV, "15")))
    except ValueError:
        return 15.0


def publish_curves(store: Store, run_name: str, rows: list[dict[str, Any]], *,
                   final: bool = False) -> str | None:
    """Table artifact of ``rows`` and the loss-curve image (PNG written to the store); returns its URI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if not rows:
        return None
    slug = artifact_slug(run_name)
    create_table_artifact([{c: r.get(c) for c in COLUMNS} for r in rows], key=f"train-metrics-{slug}",
                          description=f"Per-epoch training metrics of run {run_name}"
                                      + ("" if final else " (training in progress)"))
    png_key = loss_curve_key(run_name)
    png = loss_curve_png(rows, title=run_name)
    store.write_bytes(png_key, png)
    best = min(rows, key=lambda r: r["val_loss"])
    publish_image(store, png_key, artifact_key=f"train-curve-{slug}", data=png,
                  title=f"Loss curve of {run_name}",
                  description=f"epoch {rows[-1]['epoch']}: best validation masked MAE {best['val_loss']:.5f} "
                              f"at epoch {best['epoch']}" + ("" if final else " (training in progress)"))
    if final:
        create_markdown_artifact(
            f"## Training run `{run_name}`\n\n"
            f"- epochs run: {rows[-1]['epoch']} ({rows[-1].get('stopped') or 'finished'})\n"
            f"- best validation masked MAE: {best['val_loss']:.5f} at epoch {best['epoch']}\n"
            f"- best checkpoint: {link_markdown(store, checkpoint_key(run_name, 'best'))}\n"
            f"- loss curve: {link_markdown(store, png_key, 'PNG')}\n",
            key=f"train-summary-{slug}", description=f"Training run {run_name}")
    return store.uri(png_key)


class TrainingMonitor:
    """Polls the store for new epochs of ``cfg``'s runs and publishes them (see the module docstring).

    Use as a context manager around the training (a background thread), or call
    :meth:`poll` yourself (e.g. from a wait loop).
    """

    def __init__(self, cfg: TrainConfig, logger: Any, poll_s: float | None = None) -> None:
        from prefect.artifacts import create_progress_artifact

        self.store, self.logger = Store(cfg.store_root), logger
        self.runs = [name for name, _ in cfg.seed_runs()]
        self.epochs = cfg.epochs * len(self.runs)
        self.poll_s = default_poll_s() if poll_s is None else poll_s
        # epochs already in the store (a resumed run, or an earlier run that a fresh one will replace)
        self.seen: dict[str, int] = {r: len(read_metrics(self.store, r)) for r in self.runs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress_id = create_progress_artifact(
            0.0, key=f"train-progress-{artifact_slug(cfg.run_name)}",
            description=(f"epochs of {', '.join(self.runs)} ({self.epochs} at most; "
                         "early stopping may end sooner)"))

    def poll(self) -> int:
        """Publish the epochs written since the last poll; returns how many there were."""
        from prefect.artifacts import update_progress_artifact

        with self._lock:
            new = 0
            for run in self.runs:
                try:
                    rows = read_metrics(self.store, run)
                except Exception as e:  # noqa: BLE001 - a half-visible file on a slow store: next poll
                    self.logger.warning("reading the metrics of %s: %s: %s", run, type(e).__name__, e)
                    continue
                if len(rows) < self.seen.get(run, 0):   # a fresh run replaced an earlier run's file
                    self.seen[run] = 0
                if len(rows) == self.seen.get(run, 0):
                    continue
                for r in rows[self.seen.get(run, 0):]:
                    self.logger.info("%s epoch %s: train %.5f, val %.5f%s", run, r.get("epoch"),
                                     r.get("train_loss", float("nan")), r.get("val_loss", float("nan")),
                                     " (best)" if r.get("is_best") else "")
                new += len(rows) - self.seen.get(run, 0)
                self.seen[run] = len(rows)
                publish_curves(self.store, run, rows)
            if new:
                done = sum(self.seen.values())
                update_progress_artifact(self.progress_id, min(100.0, 100.0 * done / max(self.epochs, 1)))
            return new

    def finish(self) -> None:
        """Last poll, final curves and summary of every run, progress at 100 %."""
        from prefect.artifacts import update_progress_artifact

        self.poll()
        for run in self.runs:
            publish_curves(self.store, run, read_metrics(self.store, run), final=True)
        update_progress_artifact(self.progress_id, 100.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def __enter__(self) -> TrainingMonitor:
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), daemon=True,
                                        name="training-monitor")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
