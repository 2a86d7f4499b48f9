"""Reliability: nothing complete is lost, nothing stale or half-written is reported as complete.

Kills are real: a worker process runs the build, the training or a CloudSat write, and is sent
SIGKILL at a chosen point (``kill -9``; no exception, no cleanup code runs).  The workers are forked
from a child process that has imported the job once (:class:`Killer`), so a kill costs no start-up.
The points are the store's write operations (files, Zarr chunks, renames, removals), counted in the
worker; which ones are chosen is seeded (one per kind of operation, then random others), so every
run of the suite kills at the same places.  After each kill the store is checked as a reader sees
it, then the step is run again to completion and compared with an uninterrupted run.

Also here: byte flips in a granule, a rebuild after an evaluation, a crash during a forced rewrite,
the retry policy, the temporary Prefect server of a killed flow, and impossible settings.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bzpipe.store import Store
from bzpipe.store.layout import JOURNAL_PREFIX
from bzpipe.store.replace import replacement_pending

REPO = Path(__file__).resolve().parents[1]
SEED = 13

# --------------------------------------------------------------------------- kill harness

#: the child: installs the kill points, imports what its job needs once, then forks one worker per
#: request (a JSON line on stdin: the kill point and the job's argument).  A worker counts the store's
#: write operations and, at operation K, says so and waits for the SIGKILL; K = 0 runs to the end
#: and prints every point.  The workers are the processes that get killed.
CHILD = r"""
import json, os, sys, time, pathlib, traceback
os.environ.setdefault("OMP_NUM_THREADS", "1")
K, _n = 0, 0

def point(name):
    global _n
    _n += 1
    if K == 0:
        print(f"P {name}", flush=True)
    elif _n == K:
        print(f"KILL {_n} {name}", flush=True)
        time.sleep(600)

import bzpipe.store as _st
import bzpipe.store.replace as _rp
from zarr.storage import LocalStore

def _wrap(owner, attr, label):
    orig = getattr(owner, attr)
    def hooked(*a, **kw):
        point(label(*a))
        return orig(*a, **kw)
    setattr(owner, attr, hooked)

_wrap(_st.Store, "write_bytes", lambda self, key, *a: f"write {key}")
_wrap(_st.Store, "put_file", lambda self, local, key, *a: f"put {key}")
_wrap(_rp, "_rm", lambda store, key: f"rm {key}")
_wrap(pathlib.Path, "rename", lambda self, target: f"rename {self.name} -> {pathlib.Path(target).name}")
_zset = LocalStore.set

async def _set(self, key, value, *a, **kw):
    point(f"zarr {key}")
    return await _zset(self, key, value, *a, **kw)

LocalStore.set = _set
%(job)s
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        K, code = request["kill_at"], 0
        try:
            job(request["arg"])
            print("DONE", flush=True)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(f"PID {pid}", flush=True)
    print(f"EXIT {os.waitpid(pid, 0)[1]}", flush=True)
"""


class Killer:
    """A child process that has imported ``job`` (source defining ``job(ARG)``); :meth:`run` forks a
    worker from it and sends it SIGKILL at a chosen point."""

    def __init__(self, job: str, tmp: Path) -> None:
        self.err = tmp / f"child-{id(self)}.err"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD % {"job": job}], cwd=REPO, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)

    def __enter__(self) -> Killer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def run(self, arg: Any, kill_at: int, timeout: float = 300.0) -> tuple[str, list[str]]:
        """``("killed", [the point])``, or ``("done", [every point])`` with ``kill_at=0``."""
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            self.proc.stdin.write(json.dumps({"kill_at": kill_at, "arg": arg}) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            worker, status, points = 0, "", []
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if line.startswith("PID "):
                    worker = int(line.split()[1])
                elif line.startswith("KILL"):
                    os.kill(worker, signal.SIGKILL)
                    status, points = "killed", [line.split(" ", 2)[2].strip()]
                elif line.startswith("P "):
                    points.append(line[2:].strip())
                elif line.startswith("DONE"):
                    status = "done"
                elif line.startswith("EXIT"):
                    if status:
                        return status, points
                    break
        finally:
            timer.cancel()
        raise AssertionError(f"the worker ended without reaching its kill point {kill_at}:\n"
                             + self.err.read_text()[-4000:])


@pytest.fixture
def killers(tmp_path: Path) -> Iterator[Callable[[str], Killer]]:
    """``killers(job)``: a :class:`Killer` for ``job``, closed at the end of the test."""
    made: list[Killer] = []

    def make(job: str) -> Killer:
        made.append(Killer(job, tmp_path))
        return made[-1]

    yield make
    for k in made:
        k.__exit__()


def kill_points(points: list[str], n: int, seed: int = SEED, skip: str = "^$") -> list[int]:
    """``n`` seeded kill points (1-based): one at each kind of operation (a seeded sample of the kinds if
    there are more), then random others; operations matching ``skip`` are left out."""
    rng = random.Random(seed)
    kinds: dict[str, list[int]] = {}
    for i, p in enumerate(points, 1):
        if re.search(skip, p):
            continue
        op, _, key = p.partition(" ")
        if op == "zarr":
            kind = "zarr metadata" if key.endswith("zarr.json") else "zarr chunk"
        elif op in ("rename", "rm"):
            kind = op
        else:
            kind = f"{op} {re.sub(r'[0-9a-f]{8,}|[0-9]+', '#', key)}"
        kinds.setdefault(kind, []).append(i)
    names = sorted(kinds)
    chosen = {rng.choice(kinds[k]) for k in rng.sample(names, min(n, len(names)))}
    rest = [i for v in kinds.values() for i in v if i not in chosen]
    chosen |= set(rng.sample(rest, min(n - len(chosen), len(rest))))
    return sorted(chosen)


def hidden_leftovers(store: Store, prefix: str) -> list[str]:
    """Hidden aside copies under ``prefix`` (never listed as objects)."""
    out = []
    for dirpath, dirnames, _ in os.walk(store.uri(prefix)):
        out += [os.path.join(dirpath, d) for d in dirnames if ".tmp-" in d]
    return out


def assert_nothing_listed_is_partial(store: Store, prefix: str) -> None:
    """No key under ``prefix`` that a listing or the manifest shows is a temporary one."""
    assert not [k for k in store.list(prefix) if ".tmp-" in k]
    assert not [k for k in store.manifest(prefix) if ".tmp-" in k]


# --------------------------------------------------------------------------- dataset build

PLAN_B = "work/test/plan-b.json"
BUILD_JOB = """
from bzpipe.config import BuildConfig
from bzpipe.dataset import load_plan, write_dataset
from bzpipe.store import Store

def job(ARG):
    cfg = BuildConfig.model_validate(ARG["config"])
    store = Store(cfg.store_root)
    write_dataset(store.root, load_plan(store, ARG["plan"]), cfg)
"""


def _build_config(root: Path, stride: int, **kw: Any):  # type: ignore[no-untyped-def]
    from test_dataset_build import small_config

    return small_config(root, version="v", patch={"width": 16, "blind_zone_rows": 4, "stride": stride},
                        overwrite=True, **kw)


def _arrays(store: Store, version: str) -> dict[str, np.ndarray]:
    from bzpipe.dataset import open_dataset
    from bzpipe.split import SPLITS

    return {s: open_dataset(store, version).open_split(s)["x"].values for s in SPLITS}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Killer(BUILD_JOB, tmp_path_factory.mktemp("rel-child")) as k:
        yield k


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, builder: Killer) -> dict[str, Any]:
    """A store with version ``v`` complete from plan A (stride 16), and what plan B (stride 8) makes."""
    from datetime import date

    import pandas as pd
    from test_dataset_build import DAYS, make_era5, make_met, make_radar

    from bzpipe.colocate import colocate
    from bzpipe.config import KNOWN_SITES
    from bzpipe.dataset import plan_dataset, write_colocated, write_dataset
    from bzpipe.store.layout import colocated_key

    base = tmp_path_factory.mktemp("rel-build")
    root = base / "a"
    store = Store(root)
    cfg_a = _build_config(root, 16)
    keys = []
    for i, day in enumerate(DAYS):
        ds = colocate(make_radar(day, seed=i), make_era5(day, seed=i), KNOWN_SITES["nsa"], cfg_a.grid, day,
                      pd.Timestamp(day) + pd.Timedelta(days=1), met=make_met(day))
        key = colocated_key("nsa", date.fromisoformat(day))
        write_colocated(store, key, ds)
        keys.append(key)
    write_dataset(store.root, plan_dataset(store, cfg_a, keys, recipe_id="recipe-a"), cfg_a)
    plan_b = plan_dataset(store, _build_config(root, 8), keys, recipe_id="recipe-b")
    assert all(plan_b.n_samples(s) for s in ("train", "val", "test")), plan_b.counts
    store.write_json(PLAN_B, plan_b.to_json(), manifest=False)
    ref_b_root = base / "b"
    shutil.copytree(root, ref_b_root)
    status, points = builder.run(_build_arg(ref_b_root), 0)
    assert status == "done"
    sb = Store(ref_b_root)
    return {"root": root, "a": _arrays(store, "v"), "sha_a": store.entry("datasets/v.zarr").sha256,
            "b": _arrays(sb, "v"), "sha_b": sb.entry("datasets/v.zarr").sha256, "points": points}


def _build_arg(root: Path) -> dict[str, Any]:
    return {"config": _build_config(root, 8).model_dump(mode="json"), "plan": PLAN_B}


def _rebuild(root: Path) -> None:
    """Run the interrupted build again, in this process."""
    from bzpipe.dataset import load_plan, write_dataset

    store = Store(root)
    write_dataset(store.root, load_plan(store, PLAN_B), _build_config(root, 8))


@pytest.mark.slow
def test_kill_9_during_a_dataset_replacement_loses_nothing(built: dict[str, Any], builder: Killer,
                                                           tmp_path: Path) -> None:
    """``overwrite: true`` with another plan, killed at seeded points: the old version stays complete and
    readable until the new one is swapped in; a rerun finishes the job; nothing stale counts as complete."""
    from bzpipe.dataset import IncompleteDatasetError, open_dataset

    points = built["points"]
    assert any(p.startswith("rename") for p in points) and any(p.startswith(f"write {JOURNAL_PREFIX}")
                                                             for p in points)
    assert not _same(built["a"], built["b"]) and built["sha_a"] != built["sha_b"]
    seen = set()
    for k in kill_points(points, 7):
        root = tmp_path / f"k{k}"
        shutil.copytree(built["root"], root)
        status, [where] = builder.run(_build_arg(root), k)
        assert status == "killed"
        store = Store(root)
        if store.is_complete("datasets/v.zarr"):
            got, sha = _arrays(store, "v"), store.entry("datasets/v.zarr").sha256
            assert (_same(got, built["a"]) and sha == built["sha_a"]) or \
                   (_same(got, built["b"]) and sha == built["sha_b"]), f"killed at {where}: a mix"
            seen.add("old" if sha == built["sha_a"] else "new")
        else:   # only the swap may drop the old version's entry, and it is journaled
            assert replacement_pending(store, "datasets/v.zarr"), f"killed at {where}: the old version is gone"
            with pytest.raises(IncompleteDatasetError, match="being replaced"):
                open_dataset(store, "v").open_split("train")
            seen.add("swap")
        assert_nothing_listed_is_partial(store, "datasets")
        # run again: the new version, exactly as an uninterrupted build makes it
        _rebuild(root)
        assert _same(_arrays(store, "v"), built["b"]) and store.entry("datasets/v.zarr").sha256 == built["sha_b"]
        assert not store.list(JOURNAL_PREFIX) and not hidden_leftovers(store, "datasets"), where
    assert {"old", "swap"} <= seen


def test_kill_9_during_a_first_build_leaves_nothing_complete(built: dict[str, Any], builder: Killer,
                                                             tmp_path: Path) -> None:
    rng = random.Random(SEED)
    for k in rng.sample(range(2, len(built["points"]) // 2), 1):          # while regions are written
        root = tmp_path / f"k{k}"
        shutil.copytree(built["root"], root, ignore=shutil.ignore_patterns("datasets", "v.zarr.json"))
        store = Store(root)
        assert not store.exists("datasets/v.zarr") and store.entry("datasets/v.zarr") is None
        status, _ = builder.run(_build_arg(root), k)
        assert status == "killed" and not store.is_complete("datasets/v.zarr")
        _rebuild(root)
        assert _same(_arrays(store, "v"), built["b"])


def test_a_full_disk_during_a_rebuild_names_the_path_and_keeps_the_old_version(built: dict[str, Any],
                                                                                tmp_path: Path,
                                                                                monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno

    from zarr.storage import LocalStore

    from bzpipe.errors import StoreError, is_retryable

    root = tmp_path / "s"
    shutil.copytree(built["root"], root)
    original = LocalStore.set
    calls = {"n": 0}

    async def full(self, key, value, *a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, key, value, *a, **kw)

    monkeypatch.setattr(LocalStore, "set", full)
    with pytest.raises(StoreError, match=r"datasets/\.v\.zarr\.tmp-.*no space left on the device") as ei:
        _rebuild(root)
    monkeypatch.undo()
    assert not is_retryable(ei.value)
    store = Store(root)
    assert _same(_arrays(store, "v"), built["a"]) and store.entry("datasets/v.zarr").sha256 == built["sha_a"]
    _rebuild(root)                                      # space again: resumes, then swaps
    assert _same(_arrays(store, "v"), built["b"])


def test_the_build_refuses_an_empty_validation_split(built: dict[str, Any], tmp_path: Path) -> None:
    from bzpipe.dataset import EmptySplitError, load_plan, write_dataset

    store = Store(built["root"])
    plan = load_plan(store, PLAN_B)
    plan.samples["val"] = {k: [] for k in plan.samples["val"]}
    cfg = _build_config(built["root"], 8).model_copy(update={"version": "noval"})
    with pytest.raises(EmptySplitError, match="val"):
        write_dataset(store.root, plan, cfg)
    assert not store.exists("datasets/noval.zarr") and not store.exists("work/build/noval")


def test_the_recipe_id_does_not_depend_on_where_the_store_is(synthetic_store_copy: tuple[Path, Path]) -> None:
    from bzpipe.dataset import build_recipe

    a, b = synthetic_store_copy
    cfg_a, cfg_b = (_build_config(r, 8) for r in (a, b))
    assert build_recipe(Store(a), cfg_a)[0] == build_recipe(Store(b), cfg_b)[0]


@pytest.fixture
def synthetic_store_copy(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of one store with raw (synthetic KaZR) files, at different paths."""
    from datetime import date

    from bzpipe.config import KNOWN_SITES, SyntheticConfig
    from bzpipe.sources import synthetic

    a = tmp_path / "here" / "store"
    folder = a / "raw" / "kazr" / "nsa"
    synthetic.write_kazr_day(folder, KNOWN_SITES["nsa"], date(2019, 1, 1), SyntheticConfig(hours_per_day=0.2), 0)
    for p in folder.iterdir():
        Store(a).put_file(p, f"raw/kazr/nsa/{p.name}")
    b = tmp_path / "moved" / "elsewhere"
    shutil.copytree(a, b)
    return a, b


# --------------------------------------------------------------------------- training

TRAIN_JOB = """
import torch
from bzpipe.config import TrainConfig
from bzpipe.train import train

def job(ARG):
    torch.set_num_threads(1)
    train(TrainConfig.model_validate(ARG))
"""


def _train_cfg(root: Path):  # type: ignore[no-untyped-def]
    from bzpipe.config import TrainConfig

    return TrainConfig(store_root=str(root), dataset="tiny", run_name="r", filters=(4, 8, 8, 8, 8), batch_size=4,
                       lr=1e-3, patience=50, epochs=2, max_batches_per_epoch=2, device="cpu")


def _weights(root: Path) -> dict[str, Any]:
    from bzpipe.checkpoint import load_model

    model, _ = load_model(str(root), "r", which="last")
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_kill_9_during_training_applies_nothing_unfinished(tmp_path: Path, killers) -> None:  # type: ignore[no-untyped-def]
    import torch
    from _zarr_fixture import write_tiny_dataset

    from bzpipe.checkpoint import finished_model_id, read_checkpoint, require_finished_model
    from bzpipe.errors import UnfinishedModelError
    from bzpipe.store.layout import CHECKPOINTS, checkpoint_key
    from bzpipe.train import train

    base = tmp_path / "base"
    write_tiny_dataset(base, n={"train": 8, "val": 4, "test": 4}, rows=32, cols=32, blind_zone_rows=4)
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    killer = killers(TRAIN_JOB)
    status, points = killer.run(_train_cfg(ref).model_dump(mode="json"), 0)
    assert status == "done" and finished_model_id(Store(ref), "r") is not None
    want = _weights(ref)
    for k in kill_points(points, 3):
        root = tmp_path / f"k{k}"
        shutil.copytree(base, root)
        status, [where] = killer.run(_train_cfg(root).model_dump(mode="json"), k)
        assert status == "killed"
        store = Store(root)
        for which in CHECKPOINTS:                     # whatever is there is whole
            if store.exists(checkpoint_key("r", which)):
                read_checkpoint(store, checkpoint_key("r", which))
        if not store.exists("models/r/final.json"):   # not finished: never applied
            assert finished_model_id(store, "r") is None, where
            with pytest.raises(UnfinishedModelError, match="has not finished|no best checkpoint"):
                require_finished_model(store, "r")
        train(_train_cfg(root))                       # resume: the same weights as without the kill
        got = _weights(root)
        assert all(torch.equal(got[n], want[n]) for n in want), f"killed at {where}: resumed weights differ"
        assert require_finished_model(store, "r") == finished_model_id(store, "r")


def test_only_finished_models_are_applied(tmp_path: Path) -> None:
    from _infer_helpers import save_tiny_model

    from bzpipe.checkpoint import load_model, require_finished_model, save_checkpoint
    from bzpipe.config import InferConfig
    from bzpipe.errors import UnfinishedModelError, is_retryable
    from bzpipe.store.layout import checkpoint_key, final_key
    from flows.reprocess import resolve_model

    store = Store(tmp_path)
    cfg = InferConfig(store_root=str(tmp_path), run_name="tiny")
    with pytest.raises(UnfinishedModelError, match="no last checkpoint"):   # the default: the final epoch
        resolve_model.fn(cfg)
    mid = save_tiny_model(tmp_path, "tiny", width=64)
    assert resolve_model.fn(cfg) == mid
    model, meta = load_model(store, "tiny")
    save_checkpoint(store, checkpoint_key("tiny", "last"), {"model": model.state_dict(), "epoch": 2,
                                                             "val_loss": 0.05}, meta)   # a resumed run
    with pytest.raises(UnfinishedModelError, match="changed after run 'tiny' finished") as ei:
        resolve_model.fn(cfg)
    assert not is_retryable(ei.value)
    store.remove(final_key("tiny"))                                                     # a killed run
    with pytest.raises(UnfinishedModelError, match="has not finished"):
        require_finished_model(store, "tiny")


# --------------------------------------------------------------------------- CloudSat outputs

OUTPUT_JOB = """
import torch
from bzpipe.config import InferConfig
from bzpipe.infer.granule import process_granule

def job(ARG):
    torch.set_num_threads(1)
    res = process_granule(ARG["root"], ARG["key"], InferConfig.model_validate(ARG["cfg"]), force=True)
    assert res.status == "done", res
"""


def _infer_cfg(root: Path, **kw: Any):  # type: ignore[no-untyped-def]
    from bzpipe.config import InferConfig

    return InferConfig(**{"store_root": str(root), "run_name": "tiny", "mc_passes": 2, "window_overlap": 16,
                          "batch_size": 32, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with a finished tiny model, a staged granule and its complete output."""
    from _infer_helpers import save_tiny_model, write_granule

    from bzpipe.infer.granule import process_granule

    root = tmp_path_factory.mktemp("rel-out") / "store"
    save_tiny_model(root, "tiny", width=64)
    path = write_granule(root / "raw" / "cloudsat", n=96, number=67700)
    store = Store(root)
    key = store.key_of(str(path))
    res = process_granule(str(root), key, _infer_cfg(root))
    assert res.status == "done"
    return {"root": root, "key": key, "out": res.output_key, "sha": store.entry(res.output_key).sha256}


def _verify_output(store: Store, key: str) -> bool:
    from bzpipe.infer.output import content_sha256, open_output

    with open_output(store, key) as ds:
        return content_sha256(ds.load()) == store.entry(key).sha256


def _manifest_verify(root: Path, capsys) -> int:  # type: ignore[no-untyped-def]
    from bzpipe.cli import main

    rc = main(["manifest", str(root), "--verify"])
    capsys.readouterr()
    return rc


@pytest.mark.slow
def test_kill_9_during_a_forced_rewrite_of_an_output(filled: dict[str, Any], tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                     killers) -> None:
    from bzpipe.infer.granule import process_granule

    arg = {"key": filled["key"], "cfg": _infer_cfg(filled["root"]).model_dump(mode="json")}
    ref = tmp_path / "ref"
    shutil.copytree(filled["root"], ref)
    killer = killers(OUTPUT_JOB)
    status, points = killer.run({**arg, "root": str(ref)}, 0)
    assert status == "done" and Store(ref).entry(filled["out"]).sha256 == filled["sha"]   # deterministic fill
    seen = set()
    for k in kill_points(points, 6, skip=r"\.png"):          # the plot comes after the swap
        root = tmp_path / f"k{k}"
        shutil.copytree(filled["root"], root)
        status, [where] = killer.run({**arg, "root": str(root)}, k)
        assert status == "killed"
        store = Store(root)
        if store.is_complete(filled["out"]):          # complete means whole, and what the model makes
            assert store.entry(filled["out"]).sha256 == filled["sha"] and _verify_output(store, filled["out"]), where
            seen.add("complete")
        else:
            assert replacement_pending(store, filled["out"]), f"killed at {where}: the old output is gone"
            seen.add("swap")
        assert _manifest_verify(root, capsys) == 0, where
        assert_nothing_listed_is_partial(store, "outputs")
        again = process_granule(str(root), filled["key"], _infer_cfg(root))   # the next scheduled run
        assert again.status in ("skipped", "done") and _verify_output(store, filled["out"]), where
        assert store.entry(filled["out"]).sha256 == filled["sha"] and not store.list(JOURNAL_PREFIX)
    assert seen == {"complete", "swap"}


def test_a_crash_during_a_forced_rewrite_keeps_the_old_output(filled: dict[str, Any], tmp_path: Path,
                                                              monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import errno

    from zarr.storage import LocalStore

    from bzpipe.errors import StoreError
    from bzpipe.infer.granule import process_granule

    root = tmp_path / "s"
    shutil.copytree(filled["root"], root)
    store = Store(root)
    original, calls = LocalStore.set, {"n": 0}

    async def crash(self, key, value, *a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:                            # 3 of its objects written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original(self, key, value, *a, **kw)

    monkeypatch.setattr(LocalStore, "set", crash)
    with pytest.raises(StoreError, match=r"no space left on the device; the previous output, if any, is untouched"):
        process_granule(str(root), filled["key"], _infer_cfg(root), force=True)
    monkeypatch.undo()
    assert calls["n"] == 4
    assert store.is_complete(filled["out"]) and _verify_output(store, filled["out"])
    assert _manifest_verify(root, capsys) == 0 and not hidden_leftovers(store, "outputs")
    assert process_granule(str(root), filled["key"], _infer_cfg(root)).status == "skipped"
    # a half-written store at the key (an old bzpipe's crash) is never complete, and --verify says so
    (root / filled["out"] / "mc_mean" / "c").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / filled["out"] / "mc_mean")
    assert _manifest_verify(root, capsys) == 1


def test_other_settings_never_reuse_an_output(filled: dict[str, Any], tmp_path: Path) -> None:
    from bzpipe.infer.granule import process_granule

    root = tmp_path / "s"
    shutil.copytree(filled["root"], root)
    same = _infer_cfg(root, device="auto", n_workers=3, plot=False)         # runtime only: same key
    assert same.settings_id() == _infer_cfg(root).settings_id()
    assert process_granule(str(root), filled["key"], same).status == "skipped"
    for change in ({"blind_zone_m": 900.0}, {"mc_passes": 3}, {"quantiles": (0.1, 0.9)}, {"seed": 1}):
        other = _infer_cfg(root, **change)
        res = process_granule(str(root), filled["key"], other)
        assert res.status == "done" and res.output_key != filled["out"], change
        assert other.settings_id() in res.output_key
    assert Store(root).entry(filled["out"]).sha256 == filled["sha"]


# --------------------------------------------------------------------------- damaged granules


def _height_offset(path: Path) -> int:
    """Byte offset of the (uncompressed, big-endian) Height data in a granule file."""
    from bzpipe.sources.cloudsat.hdfeos import SwathFile

    with SwathFile(path) as sw:
        raw = sw.read("Height")
    needle = raw.astype(">i2").tobytes()[:256]
    at = path.read_bytes().find(needle)
    assert at > 0
    return at


def _flip(src: Path, folder: Path, pos: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray(src.read_bytes())
    data[pos] ^= 0xFF
    dst = folder / src.name
    dst.write_bytes(bytes(data))
    return dst


def _inspect(path: Path, capsys) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    from bzpipe.cli import main

    rc = main(["inspect", str(path)])      # anything but a BzpipeError would raise here (a traceback)
    return rc, capsys.readouterr().err


def test_byte_flips_in_a_granule_are_caught_or_harmless(filled: dict[str, Any], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Flips at seeded places and in the Height data: ``bzpipe inspect`` gives one line naming the file,
    or a read that passes the plausibility checks; processing quarantines with the checksum, or fills."""
    from bzpipe.checksums import sha256_file
    from bzpipe.infer.granule import process_granule
    from bzpipe.quarantine import quarantine_record
    from bzpipe.sources.cloudsat import read_granule
    from bzpipe.sources.cloudsat.plausibility import granule_problems

    src = Path(filled["root"]) / filled["key"]
    size = src.stat().st_size
    h0 = _height_offset(src)
    rng = random.Random(SEED)
    places = sorted(rng.sample(range(size), 10)) + [rng.randrange(0, 300)]   # + one in the file header
    heights = [h0 + 2 * 125 * 40 + 20, h0 + 2 * 125 * 70 + 101]              # a high byte, a low byte
    outcomes = {}
    for pos in places + heights:
        root = tmp_path / f"p{pos}"
        shutil.copytree(filled["root"], root, ignore=shutil.ignore_patterns("outputs", "cloudsat"))
        path = _flip(src, root / "raw" / "cloudsat", pos)
        rc, err = _inspect(path, capsys)
        lines = err.strip().splitlines()
        if rc == 0:
            assert granule_problems(read_granule(path)) == [] and not err.strip()
        else:
            assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"bzpipe: error: {path}: "), err
        res = process_granule(str(root), f"raw/cloudsat/{path.name}", _infer_cfg(root, plot=False))
        assert res.status == ("done" if rc == 0 else "quarantined"), (pos, res)
        if rc:
            rec = quarantine_record(Store(root), path.name)
            assert rec["sha256"] == sha256_file(path) and rec["reason"] == lines[0].removeprefix("bzpipe: error: ")
        outcomes[pos] = (rc, lines[0] if lines else "")
    for pos in heights:                                # a flipped height never passes as weather
        assert outcomes[pos][0] == 2 and "implausible values" in outcomes[pos][1], outcomes[pos]
    assert any(rc == 2 for rc, _ in outcomes.values())


def test_the_real_granule_with_flipped_bytes(shared_data: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from bzpipe.sources.cloudsat import read_granule
    from bzpipe.sources.cloudsat.plausibility import granule_problems

    src = next((shared_data / "cloudsat").glob("*.hdf"))
    assert granule_problems(read_granule(src, require_reflectivity=False)) == []
    h0 = _height_offset(src)
    rng = random.Random(SEED)
    for pos in sorted(rng.sample(range(src.stat().st_size), 2)) + [h0 + 2 * 125 * 30000 + 4]:
        path = _flip(src, tmp_path / f"p{pos}", pos)
        rc, err = _inspect(path, capsys)
        assert rc in (0, 2) and len(err.strip().splitlines()) <= 1, err
        if rc == 2:
            assert err.startswith(f"bzpipe: error: {path}: ")
    assert rc == 2 and "implausible" in err                     # the Height flip, last


def test_a_quarantined_granule_comes_back_only_when_its_file_changes(filled: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    from bzpipe.infer.batch import list_landing, pending_granules
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.staging import stage_granule
    from bzpipe.quarantine import is_quarantined

    root = tmp_path / "s"
    shutil.copytree(filled["root"], root, ignore=shutil.ignore_patterns("outputs", "cloudsat"))
    store = Store(root)
    good = Path(filled["root"]) / filled["key"]
    landing = root / "landing" / "cloudsat"
    bad = _flip(good, landing, _height_offset(good) + 2 * 125 * 10 + 30)
    cfg = _infer_cfg(root, plot=False)
    sid = cfg.settings_id()
    files = list_landing(store, "landing/cloudsat")
    assert pending_granules(store, files, "m", sid) == files
    key = stage_granule(store, files[0].uri)
    assert process_granule(str(root), key, cfg).status == "quarantined" and is_quarantined(store, bad.name)
    assert pending_granules(store, list_landing(store, "landing/cloudsat"), "m", sid) == []   # not again
    shutil.copyfile(good, bad)                     # the fixed file, of the same size
    assert bad.stat().st_size == good.stat().st_size
    files = list_landing(store, "landing/cloudsat")
    assert [f.name for f in pending_granules(store, files, "m", sid)] == [bad.name]
    assert stage_granule(store, files[0].uri) == key and store.entry(key).sha256 == sha_of(good)
    assert process_granule(str(root), key, cfg).status == "done" and not is_quarantined(store, bad.name)


def sha_of(path: Path) -> str:
    from bzpipe.checksums import sha256_file

    return sha256_file(path)


@pytest.mark.prefect
def test_the_reprocess_flow_quarantines_a_damaged_granule_without_a_traceback(prefect_server, filled: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    from flows.reprocess import reprocess_granule

    root = tmp_path / "s"
    shutil.copytree(filled["root"], root, ignore=shutil.ignore_patterns("outputs", "cloudsat"))
    good = Path(filled["root"]) / filled["key"]
    bad = _flip(good, tmp_path / "landing", _height_offset(good) + 2 * 125 * 5 + 12)
    res = reprocess_granule(str(bad), config=_infer_cfg(root, plot=False))
    assert res["status"] == "quarantined" and res["category"] == "implausible values (damaged data)"
    assert Store(root).read_json(f"quarantine/{bad.stem}.json")["error"] == "ImplausibleDataError"


# --------------------------------------------------------------------------- rebuild after evaluation


def test_a_rebuild_after_evaluation_is_refused_unless_overridden(built: dict[str, Any], tmp_path: Path) -> None:
    """The model was trained and evaluated on ``v``; ``v`` is rebuilt with another plan (other split):
    evaluating again refuses it, naming both checksums; overridden, the report says it is no held-out test."""
    from bzpipe.config import EvalConfig, TrainConfig
    from bzpipe.errors import DatasetMismatchError
    from bzpipe.evaluate import run_evaluation
    from bzpipe.report import evaluate_and_report
    from bzpipe.train import train

    root = tmp_path / "s"
    shutil.copytree(built["root"], root)
    store = Store(root)
    train(TrainConfig(store_root=str(root), dataset="v", run_name="m", filters=(4, 8, 8, 8, 8), batch_size=4,
                      epochs=1, max_batches_per_epoch=2, lr=1e-3, device="cpu", ramp_max_rows=2))
    ev = EvalConfig(store_root=str(root), dataset="v", run_name="m", mc_passes=2, n_bootstrap=10, max_patches=4,
                    xai=False, n_cases=0, baselines=("REP",), device="cpu")
    assert run_evaluation(ev, store).summary["dataset_check"]["status"] == "match"
    _rebuild(root)                                           # overwrite=true, another plan
    assert store.entry("datasets/v.zarr").sha256 == built["sha_b"]
    with pytest.raises(DatasetMismatchError) as ei:
        run_evaluation(ev, store)
    assert built["sha_a"][:12] in str(ei.value) and built["sha_b"][:12] in str(ei.value)
    report = evaluate_and_report(ev.model_copy(update={"allow_dataset_mismatch": True}), store)
    assert report["verdict"]["headline"].startswith("NOT A HELD-OUT TEST")
    scores = store.read_json("reports/m/scores.json")
    assert scores["summary"]["dataset_check"]["overridden"] is True
    assert "NOT A HELD-OUT TEST" in store.read_bytes("reports/m/index.html").decode()


# --------------------------------------------------------------------------- retries, settings, tools


@pytest.mark.parametrize("exc, retry", [
    (FileNotFoundError(2, "No such file or directory", "/data/x.hdf"), False),
    (PermissionError(13, "Permission denied", "/proc/x"), False),
    (OSError(28, "No space left on device"), False),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (TimeoutError("read timed out"), True),
])
def test_retry_only_what_a_retry_can_fix(exc: BaseException, retry: bool) -> None:
    from bzpipe.errors import CorruptFileError, StoreError, is_retryable
    from bzpipe.store import write_error

    assert is_retryable(exc) is retry
    wrapped = write_error("/store/key", exc) if isinstance(exc, OSError) else StoreError("x")
    wrapped.__cause__ = exc
    assert is_retryable(wrapped) is retry
    assert not is_retryable(CorruptFileError("/g.hdf", "SDreaddata failure"))
    assert not is_retryable(StoreError("/store/datasets/v.zarr: dataset 'v' is missing"))


def test_missing_s3_credentials_are_permanent_and_name_the_address() -> None:
    from botocore.exceptions import NoCredentialsError

    from bzpipe.errors import StoreError, is_retryable

    assert not is_retryable(NoCredentialsError())
    store = Store("/tmp")

    class NoCreds:
        def exists(self, path: str) -> bool:
            raise NoCredentialsError()

    store.fs = NoCreds()
    with pytest.raises(StoreError, match=r"/tmp/raw/x: cannot access the store \(NoCredentialsError") as ei:
        store.exists("raw/x")
    assert not is_retryable(ei.value)


@pytest.mark.prefect
def test_permanent_errors_fail_a_task_at_once(prefect_server, tmp_path: Path) -> None:
    import time

    from prefect import flow, task

    from bzpipe.errors import StoreError
    from flows.common import retry_if_transient

    attempts: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)
    def write(root: str, fail: BaseException | None) -> None:
        attempts.append(root)
        if fail is not None and len(attempts) == 1:
            raise fail
        Store(root).write_json("x.json", {})

    @flow
    def run(root: str, fail: BaseException | None = None) -> None:
        write(root, fail)

    t0 = time.monotonic()
    with pytest.raises(StoreError, match="/proc/bzpipe-reliability/x.json"):   # a store nobody can write
        run("/proc/bzpipe-reliability")
    assert len(attempts) == 1 and time.monotonic() - t0 < 30
    attempts.clear()
    run(str(tmp_path), ConnectionResetError(104, "reset"))                    # transient: retried, then fine
    assert len(attempts) == 2


@pytest.mark.slow
def test_kill_9_of_a_flow_stops_its_temporary_prefect_server(tmp_path: Path) -> None:
    import time

    import psutil

    marker = tmp_path / "running"
    code = ("import sys, time\nimport flows.common\nfrom prefect import flow\n\n@flow\ndef idle():\n"
            f"    open({str(marker)!r}, 'w').close()\n    time.sleep(600)\n\nidle()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="0",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")   # a busy machine starts it slowly
    log = tmp_path / "flow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() - t0 < 240, \
                f"the flow did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        servers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "prefect.server.api.server:create_app" in " ".join(c.cmdline())]
        assert len(servers) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(servers, timeout=20)
        assert not alive, "the temporary server outlived its flow"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("setting, why", [
    ("infer.blind_zone_m=12000", "no observed row would be left"),
    ("infer.blind_zone_m=30000", "top of the CPR range window"),
    ("infer.blind_zone_m=3000", "trained to fill at most 16 \\+ 8"),
    ("evaluate.quantiles=[0.5,1.5]", "strictly between 0 and 1"),
    ("train.ramp_max_rows=120", "hides all 128 rows"),
    ("build.split.fractions=[0.85,0.0,0.15]", "validation fractions must be > 0"),
    ("build.cold_threshold_c=-150", "outside any surface air temperature"),
])
def test_bzpipe_config_refuses_impossible_settings(setting: str, why: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from bzpipe.cli import main

    assert main(["config", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bzpipe: error:") and re.search(why, err), err


def test_a_visible_training_ramp_trains_no_taller_hole(capsys) -> None:  # type: ignore[no-untyped-def]
    """With King et al.'s visible ramp (``train.ramp_hidden: false``) the model never fills more than the
    blind zone, so a CloudSat blind zone one row taller is refused; the hidden ramp's 8 rows allow it."""
    from bzpipe.cli import main

    assert main(["config", "--set", "infer.blind_zone_m=1300"]) == 0                # 17 rows of 78.125 m
    capsys.readouterr()
    assert main(["config", "--set", "infer.blind_zone_m=1300", "--set", "train.ramp_hidden=false"]) == 2
    assert re.search("trained to fill at most 16 \\+ 0", capsys.readouterr().err)


def test_inspect_warns_about_era5_without_q(shared_data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from bzpipe.cli import main

    assert main(["inspect", str(shared_data / "era5" / "tuv_pl.nc")]) == 0
    err = capsys.readouterr().err
    assert "without 'q' (specific humidity)" in err and "3+_5" in err
    assert main(["inspect", str(shared_data / "era5" / "pl_regular_ll.grib")]) == 0
    assert "warning" not in capsys.readouterr().err
