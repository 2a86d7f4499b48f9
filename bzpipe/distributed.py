"""The process layout of a training run (torchrun / SLURM environment) and what ranks share.

One process without the torchrun variables; with them, every rank reads its
shard and the helpers here keep the ranks consistent.  No prefect, no models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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
