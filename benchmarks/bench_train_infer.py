"""Training and MC-dropout inference speed of the full-size UNet3+ (not a test).

    python benchmarks/bench_train_infer.py                  # CPU, and the GPU when there is one
    python benchmarks/bench_train_infer.py --device cuda --steps 50 --patches 256 --json out.json
    python benchmarks/bench_train_infer.py --device cpu --cpu-amp --size 64 --filters 8,16,32,64,128 --steps 8
        # the demo model: CPU training in float32 and with bf16 autocast (train.cpu_amp), side by side

Prints, per device: training samples/s (Adam step, deep supervision, batch 16,
128 x 128 patches, bf16 autocast + channels_last on GPU) and inference patches/s
with N = 50 MC-dropout passes (passes batched up to --max-batch; ``--path band``, the default
and what evaluation and CloudSat inference use, is the exact band-limited decoder for the
lowest ``size // 8`` rows, ``--path full`` the whole forward pass), with the machine it ran on.
Training uses channels_last on CPU too (faster there as well).  Inputs are random: speed does
not depend on the values.  ``bench_inference.py`` compares the two paths side by side.
``--cpu-amp`` times the CPU training steps twice in the same run, float32 and bf16 autocast
(:class:`bzpipe.distributed.Autocast`, ``train.cpu_amp``; native bf16 CPUs only), alternating.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see bzpipe/__init__.py

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bzpipe.distributed import Autocast, cpu_bf16_native  # noqa: E402
from bzpipe.masking import mask_blind_zone, supervision_loss  # noqa: E402
from bzpipe.model import UNet3Plus, UNet3PlusConfig, mc_predict  # noqa: E402
from bzpipe.model.mc_dropout import tensor_safe_batch  # noqa: E402
from bzpipe.model.unet3plus import channels_last_faster  # noqa: E402
from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)




def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _full_size_model(device: torch.device, a: argparse.Namespace) -> tuple[UNet3Plus, bool]:
    """The paper-size UNet3+ on ``device`` (channels_last on GPU), seeded; and whether it is a GPU."""
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=a.channels + 1, filters=a.filters)).to(device)
    gpu = device.type == "cuda"
    if channels_last_faster(device):
        model = model.to(memory_format=torch.channels_last)
    return model, gpu


def bench_train(device: torch.device, a: argparse.Namespace, cpu_amp: bool = False) -> dict:
    model, gpu = _full_size_model(device, a)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    precision = Autocast.for_training(a.amp, "bf16", cpu_amp, device)     # as bzpipe.train does
    x = torch.randn(a.batch, a.channels, a.size, a.size, device=device)
    model.train()

    def step() -> None:
        ramp = torch.randint(0, 9, (a.batch,), device=device)
        inputs, mask = mask_blind_zone(x, a.size // 8, ramp)
        if channels_last_faster(device):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            outs = model(inputs, heads=True)
        loss = supervision_loss(outs, x[:, :1], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = a.steps if a.steps else (30 if gpu else 2)
    for _ in range(a.warmup if gpu else 1):
        step()
    _sync(device)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    out = {"train_samples_per_s": round(steps * a.batch / dt, 2),
           "train_step_ms": round(1000 * dt / steps, 1),
           "steps": steps, "batch": a.batch, "precision": precision.label}
    if gpu:
        out["train_peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def bench_infer(device: torch.device, a: argparse.Namespace) -> dict:
    model, gpu = _full_size_model(device, a)
    n = a.patches if a.patches else (128 if gpu else 1)
    asked = a.max_batch if a.max_batch else (512 if gpu else 25)
    band = a.size // 8 if a.path == "band" else None
    max_batch = min(asked, tensor_safe_batch(model, a.size, a.size)) if band is None else asked
    x = torch.randn(n, a.channels, a.size, a.size, device=device)
    inputs, mask = mask_blind_zone(x, a.size // 8, 0)
    dtype = torch.bfloat16 if gpu and a.amp else None
    mc_predict(model, inputs[: min(n, 2)], n_passes=2, max_batch=max_batch, autocast_dtype=dtype,
               band_rows=band)  # warm-up
    _sync(device)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = mc_predict(model, inputs, n_passes=a.passes, max_batch=max_batch, x=x, mask=mask,
                     autocast_dtype=dtype, band_rows=band)
    _sync(device)
    dt = time.perf_counter() - t0
    assert res["std"].shape == (n, 1, a.size, a.size)
    out = {"infer_patches_per_s": round(n / dt, 3), "mc_passes": a.passes, "patches": n, "path": a.path,
           "max_batch": max_batch,
           "forward_samples_per_s": round(n * a.passes / dt, 1)}
    if gpu:
        out["infer_peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def compare_cpu_precision(a: argparse.Namespace, results: dict) -> None:
    """CPU training steps in float32 and bf16 autocast, alternating rounds (the VM is noisy)."""
    device = torch.device("cpu")
    if not cpu_bf16_native():
        print("this CPU has no native bf16 (AMX / AVX512-BF16): train.cpu_amp would train in float32")
    rounds: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(a.rounds):
        for label, on in (("float32", False), ("bfloat16", True)):
            rounds[label].append(bench_train(device, a, cpu_amp=on)["train_step_ms"])
    med = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
    results["cpu_precision"] = {"step_ms": rounds, "median_step_ms": med}
    print(f"[cpu] training step, batch {a.batch}, median of {a.rounds} rounds of {a.steps or 2} steps: "
          f"float32 {med['float32']} ms, bf16 autocast {med['bfloat16']} ms "
          f"(ratio {med['bfloat16'] / med['float32']:.2f}); every round: {rounds}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", action="append",
                   help="cpu, cuda, cuda:N (repeatable; default: cpu + cuda if any)")
    p.add_argument("--size", type=int, default=128, help="patch rows = cols")
    p.add_argument("--channels", type=int, default=5, help="data channels (5 = 3+_5, 1 = 3+_1); + mask")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=0, help="timed training steps (default 30 GPU, 2 CPU)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--passes", type=int, default=50, help="MC-dropout passes")
    p.add_argument("--patches", type=int, default=0, help="patches to infer (default 128 GPU, 1 CPU)")
    p.add_argument("--max-batch", type=int, default=0,
                   help="samples x passes per forward (default 512 GPU, 25 CPU)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on GPU")
    p.add_argument("--cpu-amp", action="store_true",
                   help="CPU: time the training steps in float32 and with bf16 autocast, side by side")
    p.add_argument("--filters", type=lambda v: tuple(int(x) for x in v.split(",")),
                   default=(32, 64, 128, 256, 512), help="filters per level (default the paper's)")
    p.add_argument("--path", choices=("band", "full"), default="band", help="MC inference path")
    p.add_argument("--rounds", type=int, default=3, help="--cpu-amp: alternating rounds per precision")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    info = machine_info()
    print("machine:", json.dumps(info, indent=1))
    params = UNet3Plus(UNet3PlusConfig(in_channels=a.channels + 1, filters=a.filters)).num_parameters()
    print(f"model: UNet3+ filters {a.filters}, {a.channels}+1 input channels, "
          f"{params:,} parameters, "
          f"{a.size}x{a.size} patches")
    results = {"machine": info, "parameters": params, "size": a.size, "runs": {}}
    for dev in ([] if a.cpu_amp else devices):
        device = torch.device(dev)
        r = {**bench_train(device, a), **bench_infer(device, a)}
        results["runs"][dev] = r
        print(f"[{dev}] training: {r['train_samples_per_s']} samples/s ({r['train_step_ms']} ms/step, batch "
              f"{a.batch}); MC inference (N={a.passes}, {a.path} path): {r['infer_patches_per_s']} patches/s "
              f"({r['forward_samples_per_s']} forward samples/s)")
    if a.cpu_amp:
        compare_cpu_precision(a, results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
