"""Checkpoints, the metrics file, and loading a trained model.

Everything lives under ``models/<run_name>/`` (:mod:`bzpipe.store.layout`) in a :class:`bzpipe.store.Store`
(local folder or s3://), written atomically with a manifest entry::

    checkpoint-last.pt    the state after the latest finished epoch (resume point)
    checkpoint-best.pt    the state of the epoch with the lowest validation loss
    metrics.jsonl         one JSON row per epoch: train/val loss, lr, time, ...
    final.json            written when the run ends: the checksums of the checkpoints it ended with
    loss-curve.png        written by the Prefect flow (:func:`loss_curve_png`)

Only a finished model is applied to CloudSat (:func:`require_finished_model`): a
checkpoint of a run still training, or killed, changes or may be half-way.  The
checkpoint's meta records the sha256 of the dataset it was trained on;
:func:`check_trained_dataset` compares an evaluation's dataset with it.

A checkpoint holds only tensors and primitive containers, so it loads with
``torch.load(weights_only=True)``; the config, normalization, provenance and
metrics history travel as one JSON string (``meta_json``).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from bzpipe.checksums import sha256_bytes
from bzpipe.errors import DatasetMismatchError, StoreError, UnfinishedModelError
from bzpipe.model.unet3plus import UNet3Plus, UNet3PlusConfig
from bzpipe.store import Store
from bzpipe.store.layout import (
    CHECKPOINTS,
    checkpoint_key,
    dataset_key,
    final_key,
    is_dataset_version,
    metrics_key,
)


def as_store(store_or_uri: Store | str) -> Store:
    return store_or_uri if isinstance(store_or_uri, Store) else Store(store_or_uri)


def mark_finished(store: Store, run_name: str, **extra: Any) -> dict[str, Any]:
    """Record that a training run ended, with the checksums of its checkpoints at that moment.

    A run still training rewrites its checkpoints, which then no longer match this record, so
    :func:`finished_model_id` can tell a finished model from an interim one.
    """
    rec: dict[str, Any] = {f"{w}_sha256": e.sha256 for w in CHECKPOINTS
                           if (e := store.entry(checkpoint_key(run_name, w))) is not None}
    rec.update(extra)
    store.write_json(final_key(run_name), rec)
    return rec


def finished_model_id(store: Store, run_name: str, which: str = "best") -> str | None:
    """Model id of checkpoint ``which`` if its run has finished training with it, else None."""
    entry = store.entry(checkpoint_key(run_name, which))
    if entry is None or not store.exists(final_key(run_name)):
        return None
    final = store.read_json(final_key(run_name))
    return entry.sha256[:12] if final.get(f"{which}_sha256") == entry.sha256 else None


def require_finished_model(store: Store, run_name: str, which: str = "best") -> str:
    """:func:`finished_model_id`, or :class:`UnfinishedModelError` saying why there is none."""
    mid = finished_model_id(store, run_name, which)
    if mid is not None:
        return mid
    ckpt, final = checkpoint_key(run_name, which), final_key(run_name)
    if store.entry(ckpt) is None or not store.exists(ckpt):
        why = f"there is no {which} checkpoint {store.uri(ckpt)}: train the model first"
    elif not store.exists(final):
        why = (f"run {run_name!r} has not finished (no {store.uri(final)}): it is still training or was "
               "killed; let it finish (a killed run resumes from checkpoint-last.pt)")
    else:
        why = (f"{store.uri(ckpt)} changed after run {run_name!r} finished (a resumed run is training); "
               "wait until it finishes")
    raise UnfinishedModelError(f"no finished model to apply: {why}")


def check_trained_dataset(store: Store, meta: dict[str, Any], dataset: str, *,
                          allow_mismatch: bool = False) -> dict[str, Any]:
    """Compare ``dataset`` (a version in ``store``) with the dataset the model of ``meta`` was trained on.

    Returns ``{"status": "match" | "mismatch" | "unverified", "trained_on": {uri, sha256},
    "evaluated": {uri, sha256}, "overridden": bool, "note": str}``.  A mismatch raises
    :class:`DatasetMismatchError` unless ``allow_mismatch``; "unverified" means one of the two
    checksums is unknown (a checkpoint of an older bzpipe, or a dataset given by URI).
    """
    trained = meta.get("dataset") or {}
    t_uri, t_sha = str(trained.get("uri", "")), str(trained.get("sha256") or "")
    key = dataset_key(dataset) if is_dataset_version(dataset) else None
    entry = store.entry(key) if key else None
    e_uri, e_sha = (store.uri(key) if key else dataset), (entry.sha256 if entry else "")
    out: dict[str, Any] = {"trained_on": {"uri": t_uri, "sha256": t_sha},
                           "evaluated": {"uri": e_uri, "sha256": e_sha}, "overridden": False}
    if not (t_sha and e_sha):
        out.update(status="unverified",
                   note=f"cannot tell whether {e_uri} is the dataset the model was trained "
                   f"on ({t_uri or 'not recorded'}): a checksum is missing")
        return out
    if t_sha == e_sha:
        out.update(status="match",
                   note=f"{e_uri} is the dataset the model was trained on (sha256 {e_sha[:12]})")
        return out
    note = (f"{e_uri} (sha256 {e_sha[:12]}) is not the dataset the model was trained on ({t_uri}, sha256 "
            f"{t_sha[:12]}): rebuilt or another version, so its evaluation patches may have been "
            "training patches (a different ERA-5 normalization is mapped into the model's)")
    if not allow_mismatch:
        raise DatasetMismatchError(f"{note}. Evaluate on the dataset the model was trained on, retrain on "
                                   "this one, or set allow_dataset_mismatch=true to evaluate anyway (the "
                                   "report then says so)")
    out.update(status="mismatch", overridden=True, note=note + "; evaluated anyway (allow_dataset_mismatch)")
    return out


def save_checkpoint(store: Store, key: str, state: dict[str, Any], meta: dict[str, Any]) -> str:
    """Serialize ``state`` (+ ``meta`` as JSON) and write it atomically; return its sha256."""
    payload = dict(state)
    payload["meta_json"] = json.dumps(meta, sort_keys=True, default=str)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    store.write_bytes(key, data, producer=meta.get("provenance"))
    return sha256_bytes(data)


def read_checkpoint(store: Store, key: str, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(state, meta, sha256) of a checkpoint; ``torch.load(weights_only=True)``."""
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        raise StoreError(f"{store.uri(key)}: no checkpoint here") from None
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise StoreError(f"{store.uri(key)}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    meta = json.loads(state.pop("meta_json", "{}"))
    return state, meta, sha256_bytes(data)


def write_metrics(store: Store, run_name: str, rows: list[dict[str, Any]],
                  producer: dict[str, Any] | None = None) -> None:
    """Rewrite ``metrics.jsonl`` atomically with ``rows`` (one JSON object per line)."""
    text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    store.write_bytes(metrics_key(run_name), text.encode(), producer=producer)


def read_metrics(store_or_uri: Store | str, run_name: str) -> list[dict[str, Any]]:
    """The per-epoch rows of ``metrics.jsonl`` ([] if none yet)."""
    store = as_store(store_or_uri)
    try:
        text = store.read_bytes(metrics_key(run_name)).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_model(meta: dict[str, Any]) -> UNet3Plus:
    """A fresh model with the architecture recorded in a checkpoint's meta."""
    return UNet3Plus(UNet3PlusConfig(**meta["model"]))


def load_model(store_or_uri: Store | str, run_name: str, which: str = "best",
               device: str | torch.device = "cpu") -> tuple[UNet3Plus, dict[str, Any]]:
    """The trained model (eval mode, on ``device``; channels_last on CUDA) and its meta.

    meta holds ``model`` (architecture), ``channels`` (names of the input
    channels before the mask channel), ``channel_set``, ``blind_zone_rows``,
    ``ramp_max_rows``, ``normalization``, ``config`` (config_record),
    ``provenance``, ``dataset``, ``epoch``, ``val_loss``, plus
    ``checkpoint_key``, ``checkpoint_uri``, ``checkpoint_sha256`` and ``model_id``.
    """
    store = as_store(store_or_uri)
    key = checkpoint_key(run_name, which)
    state, meta, sha = read_checkpoint(store, key, map_location=device)
    model = build_model(meta)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    if torch.device(device).type == "cuda":  # NHWC convolutions: ~3x faster inference on an H100
        model.to(memory_format=torch.channels_last)
    meta.update(epoch=int(state["epoch"]), val_loss=float(state["val_loss"]),
                checkpoint_key=key, checkpoint_uri=store.uri(key), checkpoint_sha256=sha)
    meta["model_id"] = model_id(meta)
    return model, meta


def model_id(meta: dict[str, Any]) -> str:
    """Short hash of the checkpoint file (12 hex digits); keys outputs of this exact model."""
    sha = meta.get("checkpoint_sha256")
    if not sha:
        raise ValueError("meta has no checkpoint_sha256 (use the meta returned by load_model)")
    return str(sha)[:12]


def loss_curve_png(rows: list[dict[str, Any]], title: str = "") -> bytes:
    """A PNG of train / validation loss (log scale) and learning rate per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in rows]
    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(ep, [r["train_loss"] for r in rows], "o-", label="train (all heads)")
    ax.plot(ep, [r["val_loss"] for r in rows], "s-", label="validation (d1, blind zone)")
    best = [r["epoch"] for r in rows if r.get("is_best")]
    if best:
        ax.axvline(best[-1], color="0.6", ls="--", lw=1, label=f"best epoch {best[-1]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked MAE (normalized reflectivity)")
    if all(r["train_loss"] > 0 and r["val_loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title or "UNet3+ training")
    ax2 = ax.twinx()
    ax2.plot(ep, [r["lr"] for r in rows], color="0.8", lw=1)
    ax2.set_ylabel("learning rate", color="0.5")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
