"""The training input pipeline: sharded one-sample chunks for random access, the DataLoader settings."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from _zarr_fixture import tiny_patches

from bzpipe.dataset.write import x_encoding
from bzpipe.schema import CHANNELS
from bzpipe.torchdata import PatchDataset, loader_workers, make_loader

torch.set_num_threads(1)


def write(path: Path, x: np.ndarray, encoding: dict) -> str:
    uri = str(path)
    xr.Dataset({"x": (("sample", "channel", "row", "col"), x)},
               coords={"channel": np.array(CHANNELS, dtype=object)}).to_zarr(
        uri, group="train", mode="w", consolidated=False, encoding={"x": encoding})
    return uri


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[np.ndarray, dict[str, str]]:
    d = tmp_path_factory.mktemp("layouts")
    x = tiny_patches(20, 16, 24, np.random.default_rng(0))
    return x, {"sharded": write(d / "sharded.zarr", x, x_encoding(20, x.shape[1:], 8)),
               "chunked": write(d / "chunked.zarr", x, {"chunks": (8, *x.shape[1:])})}


def test_x_encoding_is_one_sample_per_chunk_in_shards():
    enc = x_encoding(100, (5, 128, 128), 8)
    assert enc == {"chunks": (1, 5, 128, 128), "shards": (8, 5, 128, 128)}
    assert x_encoding(3, (5, 16, 16), 8)["shards"] == (3, 5, 16, 16)       # a split smaller than a shard


@pytest.mark.parametrize("layout", ["sharded", "chunked"])
def test_random_batches_read_the_right_samples(layouts, layout):
    x, uris = layouts
    arr = zarr.open_group(uris[layout], mode="r")["train"]["x"]
    if layout == "sharded":
        assert arr.chunks[0] == 1 and arr.shards[0] == 8
    ds = PatchDataset(uris[layout], uris[layout], "train", channels="3+_1", cache=False, require_complete=False)
    assert ds.samples_per_chunk == (1 if layout == "sharded" else 8)
    idx = [17, 3, 3, 9, 0, 19]                                    # unsorted, repeated, across shards
    got = torch.stack(ds.__getitems__(idx)).numpy()
    np.testing.assert_array_equal(got, x[idx][:, :1])
    np.testing.assert_array_equal(ds[5].numpy(), x[5, :1])


def test_make_loader_workers_and_pinned_memory(layouts):
    x, uris = layouts
    assert loader_workers(None, "cpu") == 0 and loader_workers(3, "cpu") == 3
    ds = PatchDataset(uris["sharded"], uris["sharded"], "train", cache=True, require_complete=False)
    dl = make_loader(ds, 4, "cpu")
    assert dl.num_workers == 0 and not dl.pin_memory
    np.testing.assert_array_equal(next(iter(dl)).numpy(), x[:4])
    # with a worker: the cached split is read here once, before the worker starts, and shared
    ds2 = PatchDataset(uris["sharded"], uris["sharded"], "train", cache=True, require_complete=False)
    dl = make_loader(ds2, 5, "cpu", num_workers=1, sampler=torch.utils.data.SequentialSampler(ds2))
    assert ds2._data is not None and dl.persistent_workers and dl.prefetch_factor == 4
    got = np.concatenate([b.numpy() for b in dl])
    np.testing.assert_array_equal(got, x)


def test_state_noise_perturbs_only_the_era5_channels_as_a_bias_and_a_height_trend(layouts):
    """``state_noise``: per sample and ERA-5 channel, ``a + b (row / (H-1) - 1/2)`` with a, b ~ N(0, s^2);
    reflectivity untouched, constant over the patch's columns; 0 (the default) changes nothing."""
    x, uris = layouts
    plain = PatchDataset(uris["sharded"], uris["sharded"], "train", cache=True, require_complete=False)
    noisy = PatchDataset(uris["sharded"], uris["sharded"], "train", cache=True, require_complete=False,
                         state_noise=0.3)
    idx = list(range(20))
    np.testing.assert_array_equal(torch.stack(plain.__getitems__(idx)).numpy(), x)
    torch.manual_seed(0)
    d = torch.stack(noisy.__getitems__(idx)).numpy() - x                   # (20, 5, H, W)
    assert np.all(d[:, 0] == 0)                                            # reflectivity
    assert np.all(np.abs(d[:, 1:]).max(axis=(2, 3)) > 0)                    # every sample, every state channel
    np.testing.assert_allclose(d, np.broadcast_to(d[..., :1], d.shape), atol=1e-5)   # constant in time
    h = d.shape[2]
    rows = np.linspace(-0.5, 0.5, h)
    slope = (d[:, 1:, -1, 0] - d[:, 1:, 0, 0])                             # linear in height
    np.testing.assert_allclose(d[:, 1:, :, 0], (d[:, 1:, h // 2 - 1, 0] - slope * rows[h // 2 - 1])[..., None]
                               + slope[..., None] * rows, atol=1e-5)
    # the drawn biases and trends have the configured spread (4000 samples: sd within 5 %)
    from bzpipe.torchdata import perturb_state
    big = perturb_state(torch.zeros(4000, 3, 9, 2), [False, True, True], 0.3)
    bias, trend = big[:, 1:, 4, 0], big[:, 1:, 8, 0] - big[:, 1:, 0, 0]
    assert abs(float(bias.std()) / 0.3 - 1) < 0.05 and abs(float(trend.std()) / 0.3 - 1) < 0.05
    assert abs(float(bias.mean())) < 0.02 and torch.all(big[:, 0] == 0)


@pytest.mark.prefect
def test_loader_workers_exit_cleanly_in_a_process_that_ran_a_flow(prefect_server, layouts):
    """Training runs inside a Prefect flow: its log and event services leave a thread-exit callback that
    fails in a forked worker (Prefect 3.8), so the worker exited with code 1 and the DataLoader
    reported "worker exited unexpectedly" at shutdown.  make_loader's workers drop those callbacks."""
    import gc

    from prefect import flow

    @flow
    def starts_the_services() -> int:
        from prefect import get_run_logger

        get_run_logger().info("a flow log line: the log service is running")
        return 1

    assert starts_the_services() == 1
    x, uris = layouts
    ds = PatchDataset(uris["sharded"], uris["sharded"], "train", cache=True, require_complete=False)
    dl = make_loader(ds, 5, "cpu", num_workers=1, sampler=torch.utils.data.SequentialSampler(ds))
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in dl]), x)
    workers = list(dl._iterator._workers)                  # the persistent worker processes
    del dl
    gc.collect()                                            # shuts the workers down (DataLoader.__del__)
    for w in workers:
        w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0]


def test_a_dataset_is_read_in_a_models_normalization(tmp_path):
    """Another build (another winter, a rebuilt version) standardizes ERA-5 with its own training
    statistics; given the model's normalization, the patches come back as the model's own data were
    normalized (the same physical values -> the same numbers), and refusals name the channel."""
    from _zarr_fixture import write_restandardized_copy, write_tiny_dataset

    from bzpipe.dataset.normalization import renormalization
    from bzpipe.errors import DatasetMismatchError

    write_tiny_dataset(tmp_path, version="a", n=6, rows=16, cols=16)
    mean = {"t": 250.0, "q": -0.5, "u": 3.0, "v": 0.25}
    std = {"t": 8.0, "q": 0.4, "u": 5.0, "v": 2.0}
    write_restandardized_copy(tmp_path, "a", "b", mean, std)
    a = PatchDataset(tmp_path, "a", "test", cache=True)
    b_own = PatchDataset(tmp_path, "b", "test", cache=True)
    b = PatchDataset(tmp_path, "b", "test", cache=True, normalization=a.normalization)
    idx = list(range(6))
    xa = torch.stack(a.__getitems__(idx)).numpy()
    assert b.renormalized and not b_own.renormalized
    assert not PatchDataset(tmp_path, "a", "test", normalization=a.normalization).renormalized
    assert np.abs(torch.stack(b_own.__getitems__(idx)).numpy()[:, 1:] - xa[:, 1:]).max() > 1.0
    np.testing.assert_allclose(torch.stack(b.__getitems__(idx)).numpy(), xa, atol=2e-5)
    # the uncached reader maps the same way
    b_lazy = PatchDataset(tmp_path, "b", "test", cache=False, normalization=a.normalization)
    np.testing.assert_allclose(torch.stack(b_lazy.__getitems__([4, 1])).numpy(), xa[[4, 1]], atol=2e-5)
    # refusals: a different humidity transform, a different reflectivity mapping, a missing channel
    other = copy.deepcopy(a.normalization)
    other["q"]["transform"] = "relative_humidity_ice_below_0C"
    with pytest.raises(DatasetMismatchError, match="'q' has transform"):
        renormalization(b.normalization, other, b.channel_names, where="b")
    other = copy.deepcopy(a.normalization)
    other["reflectivity"]["dbz_min"] = -70.0
    with pytest.raises(DatasetMismatchError, match="reflectivity mapping differs.*dbz_min"):
        PatchDataset(tmp_path, "b", "test", normalization=other)
    other = copy.deepcopy(a.normalization)
    del other["u"]
    with pytest.raises(DatasetMismatchError, match="'u' has no normalization in the model"):
        PatchDataset(tmp_path, "b", "test", normalization=other)
