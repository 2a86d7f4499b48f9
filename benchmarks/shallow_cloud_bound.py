"""How much of the blind zone's cloud under a clear lowest visible row can ERA-5 tell? A bound for the U-Net.

    python benchmarks/shallow_cloud_bound.py --store bzpipe-data --dev-store /scratch/dev --runs demo

Under a lowest visible row without echo, REP and MAR fill nothing, so whatever cloud-presence CSI
the U-Net gains over them there comes from its inputs: the ERA-5 columns (t, relative humidity,
u, v) and the echo higher up.  This script asks whether a plain classifier given the same inputs
finds that cloud better than the U-Net does.  It trains a logistic regression and a small
multilayer perceptron on the demo's training split (the windows that pass King et al.'s sample
filter, as the test windows do, and whose lowest visible row is clear): the features are the
column means of the four ERA-5 channels on the blind zone and the 16 rows above it, and the echo
fraction and mean of each observed row above the blind zone; the target is the evaluation's
cloud-presence event (:func:`bzpipe.metrics.contingency.cloud_presence`) of the hidden truth.
Each classifier is then scored on a development winter's patches with a clear lowest row (every
patch, in the demo's normalization), at probability 0.5 and at the threshold that maximizes its
CSI on the training split, beside each ``--runs`` model's MC-dropout fill on the same patches.

If the classifiers, which see the whole ERA-5 column directly and are fit by maximum likelihood,
detect that cloud no better than the U-Net does, the U-Net is not leaving ERA-5 information
unused there, and its cloud-presence lead over REP is bounded by what the reanalysis carries (the
generator's ERA-5 view: smooth errors and no mesoscale humidity, ``bzpipe/sources/synthetic``).
Nothing of the demo's test split is read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

ERA5_ROWS_ABOVE = 16     #: ERA-5 rows above the blind zone in the features


def has_echo_block(echo: np.ndarray, block: int) -> np.ndarray:
    """Whether each ``(n, rows, cols)`` boolean array holds a full ``block`` x ``block`` square of echo:
    the build's sample filter (:func:`bzpipe.dataset.plan.echo_block_starts`) on each patch."""
    from bzpipe.dataset.plan import echo_block_starts

    return np.array([echo_block_starts(e.T, block).any() for e in echo], dtype=bool)


def features(x: np.ndarray, blind: int, echo_block: int, era5_only: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x`` ``(n, 5, H, W)`` normalized patches -> (features, cloud target, clear lowest row, whether the
    patch passes the build's sample filter of an ``echo_block`` square above the blind zone);
    ``era5_only``: the ERA-5 column means alone, without the observed echo above the blind zone."""
    from bzpipe.metrics.contingency import cloud_presence
    from bzpipe.schema import norm_to_dbz

    dbz = norm_to_dbz(x[:, 0])                                           # (n, H, W), NaN = no echo
    echo = np.isfinite(dbz)
    above = echo[:, blind:]
    era5 = x[:, 1:, :blind + ERA5_ROWS_ABOVE].mean(-1).reshape(x.shape[0], -1)   # (n, 4 * rows)
    refl_above = np.where(echo, x[:, 0], -1.0)[:, blind:].mean(-1)      # (n, H - blind)
    parts = [era5] if era5_only else [era5, above.mean(-1), refl_above]
    feats = np.concatenate(parts, axis=1).astype(np.float32)
    target = cloud_presence(dbz[:, :blind])
    return feats, target, ~echo[:, blind].any(-1), has_echo_block(above, echo_block)


def fit(kind: str, xf: np.ndarray, y: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """A logistic regression or a 2-layer MLP (64 units), cross-entropy with L2, full-batch L-BFGS."""
    torch.manual_seed(seed)
    d = xf.shape[1]
    net = (torch.nn.Linear(d, 1) if kind == "logistic" else
           torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 1)))
    xt, yt = torch.from_numpy(xf), torch.from_numpy(y.astype(np.float32))
    opt = torch.optim.LBFGS(net.parameters(), max_iter=500, line_search_fn="strong_wolfe")
    l2 = 1e-3

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xt)[:, 0], yt)
        loss = loss + l2 * sum((p ** 2).sum() for n, p in net.named_parameters() if "weight" in n)
        loss.backward()
        return loss

    opt.step(closure)
    return net


def table(pred: np.ndarray, obs: np.ndarray) -> tuple[int, int, int, float]:
    h, m, f = int((pred & obs).sum()), int((~pred & obs).sum()), int((pred & ~obs).sum())
    return h, m, f, h / max(h + m + f, 1)


def load(store: str, version: str, split: str, normalization: dict[str, Any] | None) -> tuple[np.ndarray, Any]:
    """A split's patches ``(n, 5, H, W)`` in ``normalization`` (None: the dataset's own) and its dataset."""
    from bzpipe.store import Store
    from bzpipe.torchdata import PatchDataset

    ds = PatchDataset(Store(store), version, split, channels="3+_5", normalization=normalization)
    return torch.stack(ds.__getitems__(list(range(len(ds))))).numpy(), ds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="the demo's store (dataset 'demo', its models)")
    p.add_argument("--dev-store", required=True, help="where the development winter is (dev_winter.py)")
    p.add_argument("--winter", type=int, default=2020)
    p.add_argument("--runs", nargs="*", default=[], help="models in --store to score on the same patches")
    p.add_argument("--era5-only", action="store_true", help="the ERA-5 column means alone as features")
    a = p.parse_args(argv)
    print("machine:", machine_info(), flush=True)
    import dev_winter

    t = time.time()
    cfg = dev_winter.dev_config(a.dev_store, False, a.winter)
    dev_winter.ensure_dev_dataset(cfg)
    xtr, train_ds = load(a.store, "demo", "train", None)
    blind = train_ds.blind_zone_rows
    block = cfg.build.patch.echo_block
    f_tr, y_tr, clear_tr, keep_tr = features(xtr, blind, block, a.era5_only)
    del xtr
    sel = clear_tr & keep_tr & np.isfinite(y_tr)
    f_tr, y_tr = f_tr[sel], y_tr[sel] == 1
    xdv, dev_ds = load(a.dev_store, cfg.build.version, "test", train_ds.normalization)
    f_dv, y_dv, clear_dv, _ = features(xdv, blind, block, a.era5_only)
    del xdv
    sel_dv = clear_dv & np.isfinite(y_dv)
    f_dv, y_dv = f_dv[sel_dv], y_dv[sel_dv] == 1
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    f_tr, f_dv = (f_tr - mu) / sd, (f_dv - mu) / sd
    print(f"training windows with a clear lowest row: {y_tr.size} ({y_tr.mean():.1%} cloud below); "
          f"dev winter {a.winter}-{(a.winter + 1) % 100:02d} patches with a clear lowest row: {y_dv.size} "
          f"({y_dv.sum()} clouds); {f_tr.shape[1]} features; {time.time() - t:.0f} s", flush=True)
    print("  method: hits, misses, false alarms, CSI (dev winter, clear lowest row)")
    for kind in ("logistic", "mlp"):
        net = fit(kind, f_tr, y_tr)
        with torch.no_grad():
            p_tr = torch.sigmoid(net(torch.from_numpy(f_tr))[:, 0]).numpy()
            p_dv = torch.sigmoid(net(torch.from_numpy(f_dv))[:, 0]).numpy()
        grid = np.linspace(0.05, 0.95, 91)
        best = grid[int(np.argmax([table(p_tr >= g, y_tr)[3] for g in grid]))]
        for thr, label in ((0.5, "p >= 0.5"), (best, f"p >= {best:.2f} (best CSI on training)")):
            h, m, f, c = table(p_dv >= thr, y_dv)
            print(f"  {kind}, {label}: {h}, {m}, {f}, {c:.3f}")
    if a.runs:
        from bzpipe.evaluate import run_evaluation
        from bzpipe.metrics.contingency import cloud_presence
        from bzpipe.store import Store

        for run in a.runs:
            ev = dev_winter.evaluation_config(cfg, run)
            res = run_evaluation(ev, Store(a.dev_store), model_store=Store(a.store),
                                 indices=np.arange(len(dev_ds)))
            fl = res.fields
            clear = ~np.isfinite(fl.row_above).any(-1)
            truth = cloud_presence(fl.truth) == 1
            unet = cloud_presence(fl.preds["UNET"]) == 1
            h, m, f, c = table(unet[clear], truth[clear])
            print(f"  U-Net {run} (MC-dropout fill, {ev.mc_passes} passes): {h}, {m}, {f}, {c:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
