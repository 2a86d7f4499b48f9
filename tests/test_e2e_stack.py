"""The local stack end to end, as a user runs it (`bash infra/stack.sh up` ... `down`).

A real Prefect server (SQLite in a temporary PREFECT_HOME) on a free 127.0.0.1 port, the
process pool bzpipe-local with one worker, and the deployments of prefect.yaml as they are.  The
stack is switched to a tiny offline config in a temporary store the way an operator switches it
(`bash infra/stack.sh config FILE`: the Prefect Variable bzpipe_config, read by every run when it
starts; no file is edited, nothing is redeployed).  Then:

* the pipeline deployment runs on the worker (ingest -> build -> train -> evaluate -> granule);
* a granule event (`prefect event emit bzpipe.granule.arrived`) triggers granule-arrived, which
  starts reprocess-granule for it;
* a run that the scheduler created from scan-landing's schedule is brought forward and runs:
  it announces a new granule in the landing area, which is reprocessed the same way;
* every one of those flow runs is checked as Completed through the REST API, outputs exist in
  the store, bzpipe's own INFO lines are in the run logs;
* the stack is switched to a second config (another store) and the next run uses it, saying so
  in its log; a Variable that names a missing file fails the next run at once, naming it;
* last, the same deployments re-targeted at Kubernetes pools (infra/k8s) are accepted by the
  server, whose job-variable validation runs against the pools' base job templates.

Teardown runs `stack.sh down` and then checks that every process it started (server, worker, flow
runs) is gone, killing leftovers itself, also when a test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.server_watchdog import alive as _alive  # a zombie counts as gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "infra" / "stack.sh"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

TINY = {
    "sites": ["nsa"],
    "start": "2019-01-01",
    "end": "2019-01-01",
    "seed": 3,
    "ingest": {"kazr_source": "offline", "era5_source": "offline",
               "synthetic": {"hours_per_day": 3, "time_step_s": 30, "n_gates": 120, "gate_spacing_m": 40,
                             "cloudsat_profiles": 256}},
    "build": {"version": "tiny", "grid": {"n_heights": 32, "top_m": 4000, "time_step_s": 30},
              # echo_block 0: three synthetic hours hold no 10 x 10 echo block above the blind zone; this
              # test is about the stack, not about which patches the paper would keep
              "patch": {"width": 16, "blind_zone_rows": 6, "echo_block": 0}, "n_workers": 1, "dask_processes": False,
              "split": {"fractions": [0.5, 0.25, 0.25], "gap_s": 120.0, "block_hours": 1 / 3}},
    "train": {"run_name": "tiny", "filters": [2, 4, 4, 8, 8], "epochs": 1, "batch_size": 8},
    "evaluate": {"mc_passes": 2, "n_bootstrap": 10, "xai_samples": 2, "n_cases": 1},
    # as the demo: a KaZR-resolution model applied to CPR granules, said in every output
    "infer": {"mc_passes": 2, "n_workers": 1, "allow_resolution_mismatch": True},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    root: Path
    store: Path
    api: str
    env: dict[str, str]
    logs: Path
    granules: Path
    seen_pids: set[int] = field(default_factory=set)

    # ----------------------------------------------------------------- REST
    def call(self, path: str, body: Any = None, method: str | None = None) -> Any:
        """One REST call, retried the way Prefect's own client retries.

        A busy 2-core machine can stall the SQLite-backed server: it then answers 503 (or 502/429)
        for a request it did not carry out, which Prefect's client retries with backoff; so do we.
        Reads are also retried on a timeout.  Creations are made idempotent by their callers
        (``idempotency_key``), so a retried creation never makes a second run.
        """
        data = None if body is None else json.dumps(body).encode()
        read = data is None or path.endswith("/filter")
        tries = 6
        for attempt in range(tries):
            req = urllib.request.Request(self.api + path, data=data, method=method or ("POST" if data else "GET"),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as e:
                if e.code not in (429, 502, 503) or attempt == tries - 1:
                    raise
                retry_after = e.headers.get("Retry-After") if e.headers else None
                time.sleep(float(retry_after) if retry_after and retry_after.isdigit() else 2 ** attempt)
            except (TimeoutError, urllib.error.URLError):
                if not read or attempt == tries - 1:
                    raise
                time.sleep(2)

    def deployment(self, flow: str, name: str) -> dict[str, Any]:
        return self.call(f"/deployments/name/{flow}/{name}")

    def runs_of(self, deployment_id: str) -> list[dict[str, Any]]:
        return self.call("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}},
                                               "sort": "EXPECTED_START_TIME_ASC", "limit": 200})

    def run_logs(self, run_id: str, limit: int = 200) -> list[dict[str, Any]]:
        return self.call("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": limit,
                                          "sort": "TIMESTAMP_ASC"})

    def log_text(self, run_id: str, needle: str, timeout: float = 30) -> str:
        """The run's log messages, once one contains ``needle`` (logs arrive shortly after the state)."""
        deadline = time.monotonic() + timeout
        while True:
            text = "\n".join(r["message"] for r in self.run_logs(run_id, limit=200))
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(1)

    def explain(self, run: dict[str, Any]) -> str:
        lines = [f"{r['level']:>2} {r['name']}: {r['message'][:300]}" for r in self.run_logs(run["id"])[-40:]]
        worker = (self.logs / "worker.log").read_text(errors="replace")[-4000:] if (self.logs / "worker.log").exists() else ""
        return (f"flow run {run['name']} ({run['id']}) is {run['state_type']}: {run.get('state_name')}\n"
                + "\n".join(lines) + "\n--- worker log tail ---\n" + worker)

    def wait(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.call(f"/flow_runs/{run_id}")
            if run["state_type"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s\n" + self.explain(run))
            self.note_pids()
            time.sleep(2)

    def wait_for_runs(self, deployment_id: str, predicate, timeout: float) -> list[dict[str, Any]]:
        """Wait until some run of the deployment satisfies predicate(runs) and all those runs ended."""
        deadline = time.monotonic() + timeout
        while True:
            runs = [r for r in self.runs_of(deployment_id) if r["state_type"] != "SCHEDULED"]
            if predicate(runs) and all(r["state_type"] in TERMINAL for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for runs of deployment "
                                     f"{deployment_id}: {[(r['name'], r['state_type']) for r in runs]}\n"
                                     + "\n".join(self.explain(r) for r in runs[-2:]))
            self.note_pids()
            time.sleep(2)

    # ----------------------------------------------------------------- processes
    def recorded_pids(self) -> set[int]:
        pids = set()
        for f in (self.root / "stack" / "pids").glob("*.pid"):
            try:
                pids.add(int(f.read_text().split()[0]))
            except (ValueError, IndexError, OSError):
                pass
        return pids

    def note_pids(self) -> None:
        """Remember the stack's processes and all their descendants (the worker's flow runs)."""
        tree: dict[int, list[int]] = {}
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, ppid = (int(x) for x in line.split())
            tree.setdefault(ppid, []).append(pid)
        todo = list(self.recorded_pids())
        while todo:
            p = todo.pop()
            if p not in self.seen_pids:
                self.seen_pids.add(p)
                todo.extend(tree.get(p, []))

    def stack_sh(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(STACK), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefect = str(Path(sys.executable).with_name("prefect"))
        return subprocess.run([prefect, "--no-prompt", *args], env={**self.env, **self.api_env()},
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def api_env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api, "PREFECT_HOME": str(self.root / "stack" / "home")}


def _make_granule(directory: Path, hour: int) -> Path:
    from bzpipe.config import SyntheticConfig
    from bzpipe.sources.synthetic import generate_cloudsat_granule

    cfg = SyntheticConfig(**TINY["ingest"]["synthetic"])
    directory.mkdir(parents=True, exist_ok=True)
    start = datetime(2019, 1, 1, hour, tzinfo=UTC)
    return generate_cloudsat_granule(directory, start, cfg.cloudsat_profiles, TINY["seed"], cfg)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    root = tmp_path_factory.mktemp("e2e-stack")
    store = root / "store"
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"store_root": str(store), **TINY}, sort_keys=False))

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BZPIPE_"))}
    env.update({"BZPIPE_STACK_DIR": str(root / "stack"), "BZPIPE_STACK_PORT": str(port),
                "BZPIPE_VENV": sys.prefix, "BZPIPE_STACK_TIMEOUT": "240", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                # the worker asks for scheduled runs every 2 s (default 10 s): the test starts about ten
                # runs one after another, and would otherwise wait ~5 s for each to be picked up
                "PREFECT_WORKER_QUERY_SECONDS": "2"})
    st = Stack(root=root, store=store, api=f"http://127.0.0.1:{port}/api", env=env,
               logs=root / "stack" / "logs", granules=root / "incoming")
    try:
        up = st.stack_sh("up", timeout=420)
        st.note_pids()
        assert up.returncode == 0, f"stack.sh up failed ({up.returncode}):\n{up.stderr[-6000:]}"
        # the one command that switches every deployment to another config (validated first)
        switch = st.stack_sh("config", str(config), timeout=120)
        assert switch.returncode == 0, switch.stdout + switch.stderr
        assert f"runs now use: {config} (from the Prefect Variable 'bzpipe_config')" in switch.stdout
        yield st
    finally:
        st.note_pids()
        started = set(st.seen_pids)
        down = st.stack_sh("down", timeout=180)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in started):
            time.sleep(0.5)
        left = sorted(p for p in started if _alive(p))
        for p in left:   # the safety net: never leave a server or worker behind
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert down.returncode == 0, f"stack.sh down failed:\n{down.stderr}"
        assert not left, f"stack.sh down left processes running: {left}\n{down.stderr}"
        assert not list((root / "stack" / "pids").glob("*.pid")), "pid files left behind"
        shutil.rmtree(root / "stack" / "home", ignore_errors=True)


DEPLOYMENTS = {("pipeline", "pipeline"), ("ingest-new-days", "daily"), ("ingest", "ingest"),
               ("ingest-kazr", "ingest-kazr"), ("ingest-era5", "ingest-era5"), ("build-dataset", "build-dataset"),
               ("train", "train"), ("evaluate", "evaluate"), ("reprocess-granule", "reprocess-granule"),
               ("granule-arrived", "granule-arrived"), ("scan-landing", "scan-landing"),
               ("backfill-cloudsat", "backfill-cloudsat")}


def test_stack_is_up_with_pool_worker_and_deployments(stack: Stack):
    assert stack.call("/health") is True
    pool = stack.call("/work_pools/bzpipe-local")
    assert pool["type"] == "process" and pool["concurrency_limit"] == 4
    gpu = stack.call("/work_pools/bzpipe-local/queues/gpu")
    assert gpu["concurrency_limit"] == 1
    deadline = time.monotonic() + 90
    while True:
        workers = stack.call("/work_pools/bzpipe-local/workers/filter", {})
        if any(w["status"] == "ONLINE" for w in workers):
            break
        assert time.monotonic() < deadline, f"no worker online: {workers}"
        time.sleep(2)

    flows = {f["id"]: f["name"] for f in stack.call("/flows/filter", {})}
    deps = {(flows[d["flow_id"]], d["name"]): d for d in stack.call("/deployments/filter", {})}
    assert set(deps) == DEPLOYMENTS
    for key, dep in deps.items():
        assert dep["work_pool_name"] == "bzpipe-local" and "bzpipe" in dep["tags"], key
        assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                      {"directory": str(REPO)}}], key
        assert dep["global_concurrency_limit"]["limit"] >= 1, key
        assert dep["enforce_parameter_schema"] is True, key
    for key in (("train", "train"), ("reprocess-granule", "reprocess-granule"),
                ("backfill-cloudsat", "backfill-cloudsat")):
        assert deps[key]["work_queue_name"] == "gpu", key
    # schedules are live: the scheduler service has created upcoming runs
    for key in (("scan-landing", "scan-landing"), ("ingest-new-days", "daily")):
        dep = deps[key]
        deadline = time.monotonic() + 120
        while not [r for r in stack.runs_of(dep["id"]) if r["auto_scheduled"]]:
            assert time.monotonic() < deadline, f"no scheduled runs for {key}"
            time.sleep(2)
    # the event trigger is an automation that runs granule-arrived
    autos = stack.call("/automations/filter", {})
    arrived = deps[("granule-arrived", "granule-arrived")]["id"]
    [auto] = [a for a in autos if any(x.get("deployment_id") == arrived for x in a["actions"])]
    assert auto["trigger"]["expect"] == ["bzpipe.granule.arrived"] and auto["enabled"]
    # status reports the same
    st = stack.stack_sh("status", timeout=120)
    assert st.returncode == 0, st.stderr
    assert "server: running" in st.stderr and "1 worker(s) online" in st.stderr
    assert "scan-landing/scan-landing" in st.stderr and "on bzpipe.granule.arrived" in st.stderr


def test_pipeline_scheduled_scan_and_event_triggered_reprocessing(stack: Stack):
    # ------------------------------------------------------------ the pipeline deployment
    pipe = stack.deployment("pipeline", "pipeline")
    run = stack.call(f"/deployments/{pipe['id']}/create_flow_run",
                     {"tags": ["e2e"], "idempotency_key": f"e2e-pipeline-{stack.root.name}"})
    done = stack.wait(run["id"], timeout=420)
    assert done["state_type"] == "COMPLETED", stack.explain(done)
    assert done["parameters"] == {}                       # the deployment names no config: chosen at run time
    assert f"config: {stack.root / 'tiny.yaml'} (from the Prefect Variable 'bzpipe_config')" in \
        stack.log_text(run["id"], "config:")
    assert (stack.store / "datasets" / "tiny.zarr").is_dir()
    assert list((stack.store / "models" / "tiny").glob("*.pt")), "no checkpoint written"
    outputs = stack.store / "outputs" / "cloudsat"
    assert len(list(outputs.glob("*/*.zarr"))) == 1, "the pipeline fills its sample granule"

    # ------------------------------------------------------------ two new granules
    from bzpipe.store import Store

    announced = _make_granule(stack.granules, hour=3)          # announced by an event from outside
    landed = _make_granule(stack.root / "landing-src", hour=6)  # dropped into the landing area
    Store(str(stack.store)).put_file(landed, f"landing/cloudsat/{landed.name}")

    # the event, as any producer would send it
    payload = {"granule_uri": str(announced), "size": announced.stat().st_size}
    emit = stack.cli("event", "emit", "bzpipe.granule.arrived", "--resource-id",
                     f"cloudsat.granule.{announced.name}", "--payload", json.dumps(payload))
    assert emit.returncode == 0, emit.stderr

    # a run the scheduler created from scan-landing's schedule, brought forward to now
    scan = stack.deployment("scan-landing", "scan-landing")
    scan_ids = []
    for _ in range(3):
        # a scan the schedule started meanwhile would make ours collide (CANCEL_NEW): let it finish
        stack.wait_for_runs(scan["id"], lambda runs: True, timeout=300)
        upcoming = [r for r in stack.runs_of(scan["id"]) if r["auto_scheduled"] and r["state_type"] == "SCHEDULED"]
        assert upcoming, "the scheduler created no scan-landing runs"
        scheduled = upcoming[0]
        now = datetime.now(UTC) + timedelta(seconds=1)
        res = stack.call(f"/flow_runs/{scheduled['id']}/set_state",
                         {"state": {"type": "SCHEDULED", "name": "Scheduled",
                                    "state_details": {"scheduled_time": now.isoformat()}}, "force": True})
        assert res["status"] == "ACCEPT", res
        scan_done = stack.wait(scheduled["id"], timeout=300)
        if scan_done["state_type"] != "CANCELLED":     # cancelled: it met a scheduled scan; try again
            break
    assert scan_done["state_type"] == "COMPLETED", stack.explain(scan_done)
    assert scan_done["auto_scheduled"] and "auto-scheduled" in scan_done["tags"]
    # the landed granule was announced once, by this scan or by a scheduled one that ran meanwhile
    scan_ids = [r["id"] for r in stack.runs_of(scan["id"]) if r["state_type"] == "COMPLETED"]
    scan_logs = "\n".join(stack.log_text(i, "announced") for i in scan_ids)
    assert "1 pending for model" in scan_logs and "1 announced" in scan_logs, scan_logs[-3000:]

    # both granules: event -> granule-arrived (automation) -> reprocess-granule, all Completed
    arrived = stack.deployment("granule-arrived", "granule-arrived")
    reproc = stack.deployment("reprocess-granule", "reprocess-granule")
    names = {announced.name, landed.name}

    def for_both(runs):
        got = {Path(r["parameters"].get("granule_uri", "")).name for r in runs}
        return names <= got

    for dep in (arrived, reproc):
        runs = stack.wait_for_runs(dep["id"], for_both, timeout=420)
        ours = [r for r in runs if Path(r["parameters"]["granule_uri"]).name in names]
        bad = [r for r in ours if r["state_type"] != "COMPLETED"]
        assert not bad, "\n".join(stack.explain(r) for r in bad)
    arrived_runs = [r for r in stack.runs_of(arrived["id"]) if r["state_type"] != "SCHEDULED"]
    assert all(r["created_by"] and r["created_by"]["type"] == "AUTOMATION" for r in arrived_runs), \
        [r["created_by"] for r in arrived_runs]
    by_uri = {Path(r["parameters"]["granule_uri"]).name: r for r in stack.runs_of(reproc["id"])}
    assert by_uri[announced.name]["parameters"]["granule_uri"] == str(announced)
    assert len(list(outputs.glob("*/*.zarr"))) == 3, sorted(p.name for p in outputs.glob("*/*.zarr"))

    # bzpipe's own logger lines (INFO) reached the UI for the pipeline's subflow runs
    bz = stack.call("/logs/filter", {"logs": {"level": {"ge_": 20, "le_": 20}}, "limit": 200,
                                     "sort": "TIMESTAMP_ASC"})
    bz = [r for r in bz if r["name"].startswith("bzpipe.")]
    assert bz, ("no INFO line of a bzpipe.* logger in the run logs: flows must import flows.logging_setup "
                "(it sets the bzpipe logger's level; PREFECT_LOGGING_EXTRA_LOGGERS only adds the handler)")
    assert all(r["flow_run_id"] for r in bz)


def test_switching_the_config_changes_what_the_next_run_uses(stack: Stack):
    """An operator switches the stack to another config; the next run of a deployment uses it.
    A Variable that names a missing file fails the next run at once, naming what it looked for."""
    other_store = stack.root / "store-2"
    other = stack.root / "other.yaml"
    other.write_text(yaml.safe_dump({"store_root": str(other_store), **TINY}, sort_keys=False))
    try:
        switch = stack.stack_sh("config", str(other), timeout=120)
        assert switch.returncode == 0, switch.stdout + switch.stderr
        dep = stack.deployment("ingest-kazr", "ingest-kazr")
        run = stack.call(f"/deployments/{dep['id']}/create_flow_run",
                         {"idempotency_key": f"e2e-switch-{stack.root.name}"})
        done = stack.wait(run["id"], timeout=300)
        assert done["state_type"] == "COMPLETED", stack.explain(done)
        assert f"config: {other} (from the Prefect Variable 'bzpipe_config')" in stack.log_text(run["id"], "config:")
        assert list((other_store / "raw" / "kazr" / "nsa").glob("*.nc")), "the run used the new config's store"
        # a Variable that points nowhere (set by hand, past the validating command): the run fails at once
        missing = stack.root / "gone.yaml"
        res = stack.cli("variable", "set", "bzpipe_config", str(missing), "--overwrite")
        assert res.returncode == 0, res.stdout + res.stderr
        run = stack.call(f"/deployments/{dep['id']}/create_flow_run",
                         {"idempotency_key": f"e2e-missing-{stack.root.name}"})
        done = stack.wait(run["id"], timeout=300)
        assert done["state_type"] == "FAILED"
        assert f"config file '{missing}' named by the Prefect Variable 'bzpipe_config' does not exist" in \
            done["state"]["message"], stack.explain(done)
        tasks = stack.call("/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        assert tasks == [], "the run failed before any task"
    finally:
        back = stack.stack_sh("config", str(stack.root / "tiny.yaml"), timeout=120)
        assert back.returncode == 0, back.stderr


def test_kubernetes_flavour_is_accepted_by_the_server(stack: Stack):
    """Last: re-targets the deployments at two kubernetes pools made from infra/k8s/*.json."""
    for pool, template in (("bzpipe-k8s", "work-pool-cpu.json"), ("bzpipe-k8s-gpu", "work-pool-gpu.json")):
        res = stack.cli("work-pool", "create", pool, "--type", "kubernetes", "--base-job-template",
                        str(REPO / "infra" / "k8s" / template))
        assert res.returncode == 0, res.stdout + res.stderr
    rendered = stack.root / "prefect.k8s.yaml"
    subprocess.run([sys.executable, str(REPO / "infra/k8s/render_prefect_yaml.py"), "--prefect-file",
                    str(REPO / "prefect.yaml"), "--image", "reg/bzpipe:cpu", "--gpu-image", "reg/bzpipe:cuda",
                    "--config-path", "/etc/bzpipe/pipeline.yaml", "-o", str(rendered)], check=True, timeout=60)
    res = stack.cli("deploy", "--all", "--prefect-file", str(rendered), timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    train = stack.deployment("train", "train")
    assert train["work_pool_name"] == "bzpipe-k8s-gpu"
    assert train["job_variables"]["image"] == "reg/bzpipe:cuda"
    assert train["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/bzpipe"}}]
    build = stack.deployment("build-dataset", "build-dataset")
    assert build["work_pool_name"] == "bzpipe-k8s"
    assert build["job_variables"]["env"]["DASK_SCHEDULER_ADDRESS"].endswith(":8786")
    assert build["job_variables"]["env"]["BZPIPE_CONFIG"] == "/etc/bzpipe/pipeline.yaml"
    for name in ("reprocess-granule", "backfill-cloudsat"):          # CloudSat on the GPU pool
        assert stack.deployment(name, name)["work_pool_name"] == "bzpipe-k8s-gpu", name
    # the server checks job variables against the pool's template: a wrong type is refused
    bad = stack.cli("deploy", "--prefect-file", str(rendered), "--name", "train", "--job-variable",
                    '{"gpu_count": "four"}', timeout=300)
    out = (bad.stdout + bad.stderr).replace("\\", "")
    assert bad.returncode != 0 and "'four' is not of type 'integer'" in out.replace('"', "'"), out[-2000:]
