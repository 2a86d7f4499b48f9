"""The process layout of a training run (torchrun / SLURM environment), its device and precision,
and what ranks share.

One process without the torchrun variables; with them, every rank reads its
shard and the helpers here keep the ranks consistent.  No prefect, no models.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """Rank layout from the torchrun / SLURM-torchrun environment (1 process when unset)."""
    return DistEnv(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device of this process: the one device picker of training, evaluation and inference.

    ``auto`` is ``cuda:<local rank>`` when CUDA is available, else the CPU; an explicit device is
    taken as it is, except that a CUDA device without CUDA is a :class:`~bzpipe.errors.ConfigError`
    and ``cuda`` without an index is the local rank's.  ``local_rank`` defaults to the torchrun
    environment's (:func:`dist_env`; 0 in a single process).
    """
    from bzpipe.errors import ConfigError

    rank = dist_env().local_rank if local_rank is None else local_rank
    if spec == "auto":
        return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{rank}")
    return dev


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16), where oneDNN's bf16
    convolutions are faster than float32; elsewhere bf16 on CPU is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(bool(f()) for f in checks if f is not None)


class Autocast:
    """The precision of a training run's steps: autocast, plus a GradScaler for fp16.

    * CUDA with ``amp``: ``amp_dtype`` (bf16 needs no scaler; fp16 gets one); validation
      autocasts too.
    * CPU with ``cpu_amp`` on a CPU with native bf16 (:func:`cpu_bf16_native`): bf16 autocast of the
      training steps only; validation, evaluation and inference stay float32, so the model is
      judged as it is used.  On the 2-core demo VM (AMX) a training step of the demo model took
      0.45 s instead of 0.57 s (``benchmarks/bench_train_infer.py --cpu-amp``, 3 rounds).
    * Otherwise float32 (a CPU without native bf16 is named in the log).
    """

    def __init__(self, enabled: bool, dtype: torch.dtype, device_type: str, *, eval_enabled: bool) -> None:
        self.enabled, self.dtype, self.device_type = enabled, dtype, device_type
        self.eval_enabled = bool(enabled and eval_enabled)
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled and device_type == "cuda"
                                           and dtype == torch.float16)

    @classmethod
    def for_training(cls, amp: bool, amp_dtype: str, cpu_amp: bool, device: torch.device) -> Autocast:
        if device.type == "cuda":
            on = bool(amp)
            bf16 = amp_dtype == "bf16" and (not on or torch.cuda.is_bf16_supported())
            return cls(on, torch.bfloat16 if bf16 else torch.float16, "cuda", eval_enabled=True)
        on = bool(cpu_amp and device.type == "cpu")
        if on and not cpu_bf16_native():
            log.warning("cpu_amp: this CPU has no native bf16 (AMX / AVX512-BF16); training in float32")
            on = False
        return cls(on, torch.bfloat16, device.type, eval_enabled=False)

    @property
    def eval_dtype(self) -> torch.dtype | None:
        """The autocast dtype of validation passes, or None (float32)."""
        return self.dtype if self.eval_enabled else None

    @property
    def label(self) -> str:
        """What the checkpoints record: ``bfloat16`` / ``float16`` / ``off``."""
        return f"{self.dtype}".removeprefix("torch.") if self.enabled else "off"

    def autocast(self, evaluation: bool = False) -> contextlib.AbstractContextManager:
        if not (self.eval_enabled if evaluation else self.enabled):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def average_bn_stats(model: nn.Module, env: DistEnv) -> None:
    """Average the batch-norm running statistics over the ranks (DDP only syncs them from rank 0
    at the start of each forward, so after an epoch every rank holds those of its own last batch)."""
    if not env.distributed:
        return
    for name, buf in model.named_buffers():
        if buf.is_floating_point() and name.endswith(("running_mean", "running_var")):
            dist.all_reduce(buf)
            buf.div_(env.world_size)


def all_reduce_sum(values: list[float], device: torch.device, env: DistEnv) -> list[float]:
    """Sum ``values`` over the ranks (as is in a single process)."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
