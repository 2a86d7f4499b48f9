"""MC-dropout inference: the full forward pass against the band-limited path, side by side (not a test).

    python benchmarks/bench_inference.py --quick              # < 2 min on a 2-core CPU
    python benchmarks/bench_inference.py                      # 5 rounds, N = 16 passes per window
    python benchmarks/bench_inference.py --device cuda --windows 64 --passes 50 --dtype bf16
    python benchmarks/bench_inference.py --formats            # + channels_last vs contiguous, full pass

Same model (the paper-size UNet3+, random weights with non-trivial batch-norm statistics: speed
does not depend on the values), same inputs (``--windows`` patches of ``--size`` x ``--size``,
the lowest ``--rows`` rows hidden), same number of MC passes.  Timed, in interleaved rounds
(full, band, full, band, ...; medians): the MC passes of every window as
:func:`bzpipe.model.mc_predict` runs them, i.e. the full path's forward passes in batches of
``--batch`` passes x windows, and the band path's work shared per window (encoder level 0 and
its skips, :mod:`bzpipe.model.band`) plus its per-pass work in the same batches.

Printed: GFLOP per pass (``torch.utils.flop_counter``; the band path's shared work is amortized
over the N passes and also shown per window), passes/s, achieved GFLOP/s against the
peak of a 2048 x 2048 matmul measured here (fp32, or the ``--dtype``), and the largest
difference between the two paths on the hidden rows with the SAME dropout masks
(:class:`bzpipe.model.dropout.FixedMasks`).  With ``--dtype bf16``/``fp16`` also the mean
|delta| in dBZ on the hidden rows against fp32 (same masks).  The LAST line is
``band-limited speedup: <x>x (flops <y>x, max abs diff <d>)``: the speedup is the median over
rounds of the per-round ratio of wall-clock times (each round times both paths back to back).
On a shared machine the CPU seconds per pass (process time, all threads) are printed too.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see bzpipe/__init__.py

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from bzpipe.masking import mask_blind_zone  # noqa: E402
from bzpipe.model import UNet3Plus, UNet3PlusConfig, mc_dropout_mode  # noqa: E402
from bzpipe.model import unet3plus  # noqa: E402
from bzpipe.model.band import BandDecoder  # noqa: E402
from bzpipe.model.dropout import FixedMasks  # noqa: E402
from bzpipe.model.mc_dropout import MAX_TENSOR_ELEMENTS  # noqa: E402
from bzpipe.model.mc_stats import pass_dbz  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of the best of ``reps`` n x n matmuls."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def build(a: argparse.Namespace, device: torch.device) -> tuple[UNet3Plus, torch.Tensor]:
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=a.channels + 1))
    g = torch.Generator().manual_seed(0)
    for m in model.modules():                        # trained-like batch norm (not the identity)
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model = model.to(device).eval()
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(a.windows, a.channels, a.size, a.size, generator=g) * 1.5 - 0.5
    depth = torch.randint(a.rows // 2, a.rows + 1, (a.windows, a.size), generator=g)
    depth[:, 0] = a.rows                             # every window hides the full band somewhere
    inputs, _ = mask_blind_zone(x, depth, 0)
    return model, inputs.to(device)


class Paths:
    """The two ways of running N MC passes over the windows, batched as mc_predict batches them."""

    def __init__(self, model: UNet3Plus, inputs: torch.Tensor, a: argparse.Namespace, dtype: torch.dtype) -> None:
        self.model, self.inputs, self.a, self.dtype = model, inputs, a, dtype
        self.fmt = torch.channels_last if a.channels_last else torch.contiguous_format
        h, w = inputs.shape[-2:]
        self.dec = BandDecoder(model, h, w, a.rows, dtype=dtype, channels_last=a.channels_last)
        b = inputs.shape[0]
        full_cap = MAX_TENSOR_ELEMENTS // model.largest_activation(h, w)
        band_cap = MAX_TENSOR_ELEMENTS // self.dec.largest_activation()
        self.full_reps = max(1, min(a.batch, full_cap) // b)      # passes per forward (windows all at once)
        self.band_reps = max(1, min(a.band_batch or a.batch, band_cap) // b)

    def full(self, passes: int) -> torch.Tensor:
        outs, done = [], 0
        big_in = self.inputs.contiguous(memory_format=self.fmt)
        ac = (torch.autocast(self.inputs.device.type, dtype=self.dtype) if self.dtype != torch.float32
              else torch.autocast(self.inputs.device.type, enabled=False))
        with torch.no_grad(), mc_dropout_mode(self.model), ac:
            while done < passes:
                k = min(self.full_reps, passes - done)
                outs.append(self.model(big_in.repeat(k, 1, 1, 1))[..., :self.a.rows, :].float())
                done += k
        return torch.cat(outs)

    def band(self, passes: int) -> torch.Tensor:
        outs, done = [], 0
        with torch.no_grad(), mc_dropout_mode(self.model):
            sh = self.dec.shared(self.inputs)
            while done < passes:
                k = min(self.band_reps, passes - done)
                outs.append(self.dec.passes(sh, k).flatten(0, 1))
                done += k
        return torch.cat(outs)


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def same_masks(paths: Paths, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(full, band) outputs of k passes on the hidden rows with the same dropout masks."""
    src = FixedMasks(paths.model.drop.p, seed=1)
    paths.model.drop.source = src
    full_reps, band_reps = paths.full_reps, paths.band_reps
    paths.full_reps = paths.band_reps = k                  # one batch each: the masks line up
    try:
        return paths.full(k), paths.band(k)
    finally:
        paths.model.drop.source = None
        paths.full_reps, paths.band_reps = full_reps, band_reps


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 window, 4 passes, 3 rounds (< 2 min on 2 CPU cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rows", type=int, default=16, help="hidden rows (the blind zone)")
    p.add_argument("--channels", type=int, default=5, help="data channels (+ the mask channel)")
    p.add_argument("--windows", type=int, default=1)
    p.add_argument("--passes", type=int, default=16, help="MC passes per window")
    p.add_argument("--batch", type=int, default=16, help="passes x windows per forward (full path)")
    p.add_argument("--band-batch", type=int, default=0, help="passes x windows per band forward (default --batch)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--formats", action="store_true", help="also time the full pass contiguous vs channels_last")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.quick:
        a.windows, a.passes, a.rounds, a.batch = 1, 4, 3, 4
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    model, inputs = build(a, device)
    paths = Paths(model, inputs, a, dtype)
    info = machine_info()
    print("machine:", json.dumps(info))
    print(f"model: UNet3+ {model.num_parameters():,} parameters, {a.channels}+1 x {a.size} x {a.size} inputs, "
          f"{a.rows} hidden rows, {a.windows} window(s) x {a.passes} MC passes, {a.dtype}, "
          f"{'channels_last' if a.channels_last else 'contiguous'}, device {device}, "
          f"{paths.full_reps * a.windows} / {paths.band_reps * a.windows} samples per forward (full / band)")
    peak = matmul_peak(device, dtype)
    print(f"matmul peak ({a.dtype} 2048^2, measured): {peak:.0f} GFLOP/s")

    # work: FLOPs of one batch of each path, per pass
    k = 2
    with torch.no_grad(), mc_dropout_mode(model):
        f_full = flops(lambda: model(inputs[:1].repeat(k, 1, 1, 1).contiguous(memory_format=paths.fmt))) / k
        sh_flops = flops(lambda: paths.dec.shared(inputs[:1]))
        sh = paths.dec.shared(inputs[:1])
        f_band_pass = flops(lambda: paths.dec.passes(sh, k)) / k
    f_band = f_band_pass + sh_flops / a.passes

    # exactness: same masks, hidden rows
    full_out, band_out = same_masks(paths)
    max_diff = float((full_out - band_out).abs().max())

    # speed: interleaved rounds
    paths.full(1), paths.band(1)                          # warm-up (allocators, oneDNN primitives)
    times: dict[str, list[tuple[float, float]]] = {"full": [], "band": []}
    fmt_times: dict[str, list[tuple[float, float]]] = {"contiguous": [], "channels_last": []}
    for _ in range(a.rounds):
        times["full"].append(timed(lambda: paths.full(a.passes), device))
        times["band"].append(timed(lambda: paths.band(a.passes), device))
        if a.formats:
            saved = paths.fmt, paths.model
            for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
                paths.fmt = fmt
                paths.model = model.to(memory_format=fmt)
                fmt_times[name].append(timed(lambda: paths.full(a.passes), device))
            paths.fmt, paths.model = saved
            model.to(memory_format=saved[0])
    n_passes = a.windows * a.passes
    res = {}
    for name, work in (("full", f_full), ("band", f_band)):
        t = statistics.median(w for w, _ in times[name])
        rate = n_passes / t
        res[name] = {"gflop_per_pass": work / 1e9, "passes_per_s": rate, "gflop_per_s": rate * work / 1e9,
                     "passes_per_cpu_s": n_passes / statistics.median(c for _, c in times[name]),
                     "seconds": times[name]}
    rf, rb = res["full"], res["band"]
    print(f"full pass:          {rf['gflop_per_pass']:6.2f} GFLOP/pass  {rf['passes_per_s']:8.2f} passes/s  "
          f"{rf['gflop_per_s']:7.1f} GFLOP/s ({100 * rf['gflop_per_s'] / peak:.0f}% of the matmul peak); "
          f"{rf['passes_per_cpu_s']:.2f} passes per CPU-second")
    print(f"band-limited pass:  {rb['gflop_per_pass']:6.2f} GFLOP/pass  {rb['passes_per_s']:8.2f} passes/s  "
          f"{rb['gflop_per_s']:7.1f} GFLOP/s ({100 * rb['gflop_per_s'] / peak:.0f}% of the matmul peak); "
          f"per pass {f_band_pass / 1e9:.2f} + {sh_flops / 1e9:.2f} per window shared by the {a.passes} passes; "
          f"{rb['passes_per_cpu_s']:.2f} passes per CPU-second")
    print(f"rows computed per decoder level (d1..d4, e5): {paths.dec.plan.inp} of {paths.dec.plan.heights[:4]}, "
          f"e5 {paths.dec.plan.keep[4]} of {paths.dec.plan.heights[4]}")
    out = {"machine": info, "args": vars(a), "matmul_peak_gflops": peak, "full": rf, "band": rb,
           "max_abs_diff": max_diff}
    if a.formats:
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in fmt_times.items()}
        (cw, cc), (lw, lc) = med["contiguous"], med["channels_last"]
        out["formats"] = {"contiguous_s": cw, "channels_last_s": lw, "contiguous_cpu_s": cc, "channels_last_cpu_s": lc}
        print(f"full pass, contiguous vs channels_last: {n_passes / cw:.2f} vs {n_passes / lw:.2f} passes/s "
              f"(channels_last {cw / lw:.2f}x); per CPU-second {n_passes / cc:.2f} vs {n_passes / lc:.2f} "
              f"({cc / lc:.2f}x)")
    if dtype != torch.float32:
        ref = Paths(model, inputs, argparse.Namespace(**{**vars(a), "dtype": "fp32"}), torch.float32)
        ref_full, ref_band = same_masks(ref)
        d_full = float((pass_dbz(full_out) - pass_dbz(ref_full)).abs().mean())
        d_band = float((pass_dbz(band_out) - pass_dbz(ref_band)).abs().mean())
        out["mean_abs_dbz_vs_fp32"] = {"full": d_full, "band": d_band}
        print(f"{a.dtype} vs fp32, same masks, hidden rows: mean |delta| {d_full:.3f} dBZ (full), "
              f"{d_band:.3f} dBZ (band)")
    speedup = statistics.median(f[0] / b[0] for f, b in zip(times["full"], times["band"]))   # per round
    out["speedup"], out["flops_ratio"] = speedup, f_full / f_band
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
    print(f"band-limited speedup: {speedup:.2f}x (flops {f_full / f_band:.2f}x, max abs diff {max_diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
