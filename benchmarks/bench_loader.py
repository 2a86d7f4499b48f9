"""Training input pipeline: loader throughput against the training step rate (not a test).

    python benchmarks/bench_loader.py                        # CPU: layouts x workers, 1,024 samples
    python benchmarks/bench_loader.py --device cuda --samples 4096 --workers 0,2,4,8 --json out.json

Writes a synthetic patch dataset (5 x 128 x 128 float32 per sample, echo layers and clear air
like the real one, so it compresses like it) in two Zarr layouts into a temporary folder:

* ``sharded``: what :mod:`bzpipe.dataset.write` writes now: Zarr v3 shards of ``--shard``
  samples, inner chunks of one sample (:func:`bzpipe.dataset.write.x_encoding`);
* ``chunked``: the former layout, chunks of ``--shard`` samples (a shuffled batch decompresses
  ``--shard`` samples for every one it uses).

Then reads shuffled batches of ``--batch`` through :func:`bzpipe.torchdata.make_loader` (the
training loader: ``__getitems__``, pinned memory and a non-blocking copy on CUDA) with each
worker count, the split NOT cached in memory (the large-dataset case), and prints samples/s.
The training step rate it is compared with: measured on ``--device`` (Adam step, deep
supervision, bf16 autocast + channels_last on CUDA; ``--step-batches`` steps), or
``--step-rate`` given (the README's H100 figure at batch 64 is 774 samples/s).  The loader
keeps up when its rate is above the step rate: every row says by how much.  On a shared
machine the wall-clock rate understates the loader, so each row also gives the CPU time per
sample (this process and its workers): ``1000 / ms`` samples/s per core, the rate a dedicated
core sustains (N workers on N free cores: N times that).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see bzpipe/__init__.py

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from bzpipe.dataset.write import x_encoding  # noqa: E402
from bzpipe.schema import CHANNELS, NO_ECHO  # noqa: E402
from bzpipe.torchdata import PatchDataset, make_loader  # noqa: E402

H100_STEP_RATE = 774.0   #: README: training samples/s on one H100 at batch 64


def patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    """float32 (n, 5, size, size): a cloud layer with a smooth top over clear air, smooth ERA-5 profiles."""
    rng = np.random.default_rng(seed)
    r = np.arange(size, dtype=np.float32)[:, None] / size
    c = np.arange(size, dtype=np.float32)[None, :] / size
    x = np.empty((n, len(CHANNELS), size, size), np.float32)
    for i in range(n):
        top = rng.uniform(0.2, 0.8) + 0.1 * np.sin(2 * np.pi * (c * rng.uniform(0.5, 3) + rng.uniform()))
        refl = np.clip(rng.uniform(0.2, 0.9) - 0.8 * r + 0.05 * rng.standard_normal((size, size)), -0.5, 1.0)
        x[i, 0] = np.where(r < top, refl, NO_ECHO)
        for k in range(1, len(CHANNELS)):
            x[i, k] = rng.standard_normal() + (k - 2.5) * (r - 0.5) + 0.1 * np.sin(2 * np.pi * c + k)
    return x


def write(path: Path, x: np.ndarray, layout: str, shard: int) -> str:
    import xarray as xr

    n = x.shape[0]
    enc = x_encoding(n, x.shape[1:], shard) if layout == "sharded" else {"chunks": (shard, *x.shape[1:])}
    ds = xr.Dataset({"x": (("sample", "channel", "row", "col"), x)},
                    coords={"channel": np.array(CHANNELS, dtype=object)})
    uri = str(path / f"{layout}.zarr")
    ds.to_zarr(uri, group="train", mode="w", consolidated=False, encoding={"x": enc})
    return uri


def _cpu_seconds() -> float:
    """CPU seconds of this process and its live children (the loader workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for ch in me.children(recursive=True):
        try:
            total += sum(ch.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def loader_rate(uri: str, batch: int, workers: int, device: torch.device, batches: int) -> tuple[float, float]:
    """(samples/s wall clock, CPU milliseconds per sample, workers included) of shuffled batches."""
    ds = PatchDataset(uri, uri, "train", channels="3+_5", augment=True, cache=False, require_complete=False)
    g = torch.Generator().manual_seed(0)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * (batches + 2), generator=g)
    dl = make_loader(ds, batch, device, num_workers=workers, sampler=sampler, prefetch_factor=1)
    it = iter(dl)
    next(it).to(device, non_blocking=True)               # warm-up: workers started
    c0, t0 = _cpu_seconds(), time.perf_counter()
    n = 0
    for k, xb in enumerate(it):
        if k == batches:
            break
        xb = xb.to(device, non_blocking=True)
        n += xb.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    del it, dl
    return n / wall, 1000 * cpu / n


def step_rate(device: torch.device, batch: int, steps: int, size: int) -> float:
    from bzpipe.masking import mask_blind_zone, supervision_loss
    from bzpipe.model import UNet3Plus, UNet3PlusConfig

    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    x = torch.rand(batch, 5, size, size, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        inputs, mask = mask_blind_zone(x, size // 8, torch.randint(0, 9, (batch,), device=device))
        with amp:
            outs = model(inputs.contiguous(memory_format=torch.channels_last), heads=True)
        loss = supervision_loss(outs, x[:, :1], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=1024, help="samples in the synthetic split")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--shard", type=int, default=8, help="samples per shard (sharded) / per chunk (chunked)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="timed batches per run")
    p.add_argument("--workers", default="0,1,2", help="worker counts to try")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    p.add_argument("--step-rate", type=float, default=None,
                   help="training samples/s to compare with (default: measured on a GPU, else the H100 figure)")
    p.add_argument("--step-batches", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    workers = [int(w) for w in a.workers.split(",")]
    if a.step_rate is not None:
        step, how = a.step_rate, "given"
    elif device.type == "cuda":
        step, how = step_rate(device, a.batch, a.step_batches, a.size), f"measured on {device}"
    else:
        step, how = H100_STEP_RATE, "the README's H100 figure (no GPU here)"
    print("machine:", json.dumps(machine_info()))
    print(f"training step rate at batch {a.batch}: {step:.0f} samples/s ({how})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bzpipe-loader-") as d:
        x = patches(a.samples, a.size)
        uris = {layout: write(Path(d), x, layout, a.shard) for layout in ("sharded", "chunked")}
        sizes = {k: sum(f.stat().st_size for f in Path(v).rglob("*") if f.is_file()) for k, v in uris.items()}
        for w in workers:
            rates: dict[str, list[tuple[float, float]]] = {k: [] for k in uris}
            for _ in range(a.repeats):                     # interleaved layouts
                for layout, uri in uris.items():
                    rates[layout].append(loader_rate(uri, a.batch, w, device, a.batches))
            for layout, r in rates.items():
                med = statistics.median(v[0] for v in r)
                ms = statistics.median(v[1] for v in r)
                per_core = 1000.0 / ms
                rows.append({"layout": layout, "workers": w, "samples_per_s": round(med, 1),
                             "cpu_ms_per_sample": round(ms, 2), "samples_per_cpu_s": round(per_core, 1),
                             "vs_step": round(med / step, 2)})
                print(f"  {layout:8s} ({sizes[layout] / 2**20:6.1f} MiB) workers {w}: {med:8.1f} samples/s wall "
                      f"= {med / step:5.2f}x the step rate ({'keeps up' if med >= step else 'LIMITS training'}); "
                      f"{ms:6.2f} CPU-ms/sample = {per_core:6.0f} samples/s per core")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine_info(), "step_rate": step, "step_rate_source": how,
                                            "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
