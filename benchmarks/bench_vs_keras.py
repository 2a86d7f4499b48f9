"""bzpipe's PyTorch UNet3+ against the authors' Keras UNet3+ on the same CPU (not a test).

    python benchmarks/bench_vs_keras.py --tf-python /tmp/tfvenv/bin/python            # 7 rounds
    python benchmarks/bench_vs_keras.py --tf-python /tmp/tfvenv/bin/python --rounds 3 --json out.json

Method.  The Keras model (``benchmarks/keras_reference.py``: ``bp_models.unet3plus`` rebuilt,
6,762,149 parameters) runs in a worker process under a Python that has ``tensorflow-cpu``
(``--tf-python``; an optional benchmark dependency, never a runtime one).  This process runs
bzpipe's model.  The two never run at the same time: each round times Keras, then bzpipe (the
order alternates between rounds), each after its own warm-up, so both see the same machine
state; the figures are medians over rounds and the ratio is taken per round.  Same work on
both sides: batch 16 (``--batch``), 128 x 128 patches, 5 data channels + the mask channel.

* inference: one forward pass with MC dropout on and batch norm on running statistics (Keras:
  a ``tf.function`` of the model; bzpipe: the full pass of :func:`bzpipe.model.mc_predict`,
  i.e. the model in :func:`mc_dropout_mode`, channels_last on CPU);
* training: one Adam step on the masked MAE (Keras: ``train_on_batch`` with ``blind_MAE``;
  bzpipe: the per-batch lines of :mod:`bzpipe.train`: masking, forward, loss, backward, step),
  bzpipe both without deep supervision (the authors' ``train_3net`` builds none) and with it
  (bzpipe's default: five heads and five losses, more work than the Keras step).

Both use every core they see (torch and TensorFlow default to the physical cores).  On a
shared machine a process with more threads takes a larger share of the cores, so each figure
also comes as samples per CPU-second (process CPU time, all threads): on a dedicated machine
with equal parallel efficiency, speed is proportional to it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see bzpipe/__init__.py

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from _timing import timed_calls  # noqa: E402

from bzpipe.masking import mask_blind_zone, supervision_loss  # noqa: E402
from bzpipe.model import UNet3Plus, UNet3PlusConfig  # noqa: E402
from bzpipe.model.mc_dropout import mc_dropout_mode  # noqa: E402
from bzpipe.model.unet3plus import channels_last_faster  # noqa: E402

HERE = Path(__file__).resolve().parent


class KerasWorker:
    def __init__(self, python: str, threads: int = 0) -> None:
        self.proc = subprocess.Popen([python, str(HERE / "keras_reference.py"), "--serve", "--threads", str(threads)],
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def ask(self, **cmd) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the Keras worker died (is tensorflow-cpu installed for --tf-python?)")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


class TorchSide:
    def __init__(self, batch: int, size: int) -> None:
        torch.manual_seed(0)
        self.batch = batch
        self.x = torch.rand(batch, 5, size, size) * 2 - 1
        self.fmt = torch.channels_last if channels_last_faster("cpu") else torch.contiguous_format
        self.models = {}
        for ds in (False, True):
            m = UNet3Plus(UNet3PlusConfig(in_channels=6, deep_supervision=ds)).to(memory_format=self.fmt)
            self.models[ds] = (m, torch.optim.Adam(m.parameters(), lr=5e-5))

    def infer(self) -> None:
        m = self.models[False][0]
        inputs, _ = mask_blind_zone(self.x, 16, 3)
        with torch.no_grad(), mc_dropout_mode(m):
            m(inputs.contiguous(memory_format=self.fmt))

    def train(self, ds: bool) -> None:
        m, opt = self.models[ds]
        m.train()
        ramp = torch.randint(0, 9, (self.batch,))
        inputs, mask = mask_blind_zone(self.x, 16, ramp)
        outs = m(inputs.contiguous(memory_format=self.fmt), heads=ds)
        loss = supervision_loss(outs if isinstance(outs, list) else [outs], self.x[:, :1], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tf-python", required=True, help="a Python with tensorflow-cpu (e.g. /tmp/tfvenv/bin/python)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=2, help="timed batches per side per round")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0,
                   help="threads on both sides (torch.set_num_threads; TF intra- and inter-op); 0: defaults")
    p.add_argument("--ops", default="inference,training,training_ds", help="which comparisons to run")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    keras = KerasWorker(a.tf_python, a.threads)
    info = keras.ask(op="info")
    side = TorchSide(a.batch, 128)
    print("machine:", json.dumps(machine_info()))
    print(f"keras: {info}; bzpipe: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{side.models[False][0].num_parameters():,} parameters (no heads), CPU format {side.fmt}")
    ops = {"inference": ("infer", side.infer), "training": ("train", lambda: side.train(False)),
           "training_ds": (None, lambda: side.train(True))}
    ops = {k: v for k, v in ops.items() if k in a.ops.split(",")}
    keys = ("keras", "bzpipe", "ratio", "keras_cpu", "bzpipe_cpu", "ratio_cpu")
    rows: dict[str, dict[str, list[float]]] = {k: {c: [] for c in keys} for k in ops}
    for r in range(a.rounds):
        for name, (kop, fn) in ops.items():
            kr = None
            if kop is not None and r % 2 == 0:
                kr = keras.ask(op=kop, batch=a.batch, reps=a.reps)
            tw, tc = timed_calls(fn, a.reps)
            if kop is not None and kr is None:
                kr = keras.ask(op=kop, batch=a.batch, reps=a.reps)
            row = rows[name]
            row["bzpipe"].append(a.batch / statistics.median(tw))
            row["bzpipe_cpu"].append(a.batch / statistics.median(tc))       # samples per CPU-second
            if kr is not None:
                kw, kc = statistics.median(kr["seconds"]), statistics.median(kr["cpu_seconds"])
                row["keras"].append(a.batch / kw)
                row["keras_cpu"].append(a.batch / kc)
                row["ratio"].append(kw / statistics.median(tw))
                row["ratio_cpu"].append(kc / statistics.median(tc))
        print(f"round {r + 1}: " + ", ".join(
            f"{n} bzpipe {v['bzpipe'][-1]:.2f}" + (f" keras {v['keras'][-1]:.2f}" if v["keras"] else "")
            for n, v in rows.items()) + " samples/s", flush=True)
    keras.close()
    med = {n: {k: round(statistics.median(v), 3) for k, v in d.items() if v} for n, d in rows.items()}
    for name, label in (("inference", "inference (MC dropout on)"), ("training", "training step")):
        if name not in med:
            continue
        m = med[name]
        print(f"{label}: samples/s keras {m['keras']}, bzpipe {m['bzpipe']} -> bzpipe {m['ratio']}x keras's speed; "
              f"samples per CPU-second keras {m['keras_cpu']}, bzpipe {m['bzpipe_cpu']} -> {m['ratio_cpu']}x")
    if "training_ds" in med and "training" in med:
        print(f"bzpipe training with deep supervision: {med['training_ds']['bzpipe']} samples/s "
              f"({med['training_ds']['bzpipe'] / med['training']['keras']:.2f}x keras), "
              f"{med['training_ds']['bzpipe_cpu']} per CPU-second "
              f"({med['training_ds']['bzpipe_cpu'] / med['training']['keras_cpu']:.2f}x keras)")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine_info(), "keras": info, "medians": med,
                                            "rounds": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
