"""Two DDP ranks (gloo, CPU) train the same run and end with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from _zarr_fixture import write_tiny_dataset

from bzpipe.checkpoint import read_checkpoint, read_metrics
from bzpipe.config import TrainConfig
from bzpipe.model import UNet3Plus
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key
from bzpipe.train import model_config_for


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cfg_json: str, out: str) -> None:
    """One rank, set up exactly as torchrun would (env://)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from bzpipe.train import train

    res = train(TrainConfig.model_validate_json(cfg_json))
    torch.save({"state": res.model.state_dict(), "history": [r["train_loss"] for r in res.history],
                "val": [r["val_loss"] for r in res.history]}, Path(out) / f"rank{rank}.pt")


def test_two_gloo_ranks_hold_identical_weights(tmp_path: Path):
    root = tmp_path / "store"
    write_tiny_dataset(root, n={"train": 16, "val": 6}, rows=32, cols=32, blind_zone_rows=4)
    cfg = TrainConfig(store_root=str(root), dataset="tiny", filters=(4, 8, 8, 8, 8), batch_size=4,
                      epochs=2, lr=1e-3, device="cpu", run_name="ddp")
    mp.start_processes(_rank_main, args=(2, _free_port(), cfg.model_dump_json(), str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:                      # parameters and batch-norm buffers alike
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["history"] == r1["history"] and r0["val"] == r1["val"]   # losses all-reduced over ranks
    # the weights moved away from the (seeded, identical) initialisation
    torch.manual_seed(cfg.seed)
    init = UNet3Plus(model_config_for(cfg)).state_dict()
    assert not torch.equal(init["head.weight"], r0["state"]["head.weight"])
    # rank 0 wrote the checkpoint (= the shared final weights) and one metrics row per epoch
    store = Store(root)
    state, meta, _ = read_checkpoint(store, checkpoint_key("ddp", "last"))
    assert meta["world_size"] == 2 and state["epoch"] == 2
    for k, v in state["model"].items():
        assert torch.equal(v, r0["state"][k]), k
    assert [r["epoch"] for r in read_metrics(store, "ddp")] == [1, 2]
