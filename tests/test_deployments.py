"""Static checks of prefect.yaml and infra/: every deployment loads, its parameters validate.

Nothing here starts a server except the two ``prefect``-marked flow tests at the end
(``ingest-new-days`` and the logging setup), which use the session test server.
The stack itself (server, worker, deploy, runs, events) is exercised by
tests/test_e2e_stack.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "prefect.yaml"
POOL = "bzpipe-local"

# (flow name, deployment name) -> entrypoint: what the issue asks for, and what the stack docs name
EXPECTED = {
    ("pipeline", "pipeline"): "flows/pipeline.py:pipeline",
    ("ingest-new-days", "daily"): "flows/daily.py:ingest_new_days",
    ("ingest", "ingest"): "flows/ingest.py:ingest",
    ("ingest-kazr", "ingest-kazr"): "flows/ingest.py:ingest_kazr",
    ("ingest-era5", "ingest-era5"): "flows/ingest.py:ingest_era5",
    ("build-dataset", "build-dataset"): "flows/build_dataset.py:build_dataset",
    ("train", "train"): "flows/train.py:train",
    ("evaluate", "evaluate"): "flows/evaluate.py:evaluate",
    ("reprocess-granule", "reprocess-granule"): "flows/reprocess.py:reprocess_granule",
    ("granule-arrived", "granule-arrived"): "flows/reprocess.py:granule_arrived",
    ("scan-landing", "scan-landing"): "flows/reprocess.py:scan_landing",
    ("backfill-cloudsat", "backfill-cloudsat"): "flows/backfill.py:backfill",
}
GPU_BOUND = {"pipeline", "train", "evaluate", "reprocess-granule", "backfill-cloudsat"}


def _spec() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_FILE.read_text())


def _deployments() -> list[dict[str, Any]]:
    return _spec()["deployments"]


def _by_name() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _deployments()}


_FLOWS: dict[str, Any] = {}


def _flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    if entrypoint not in _FLOWS:
        _FLOWS[entrypoint] = load_flow_from_entrypoint(entrypoint)
    return _FLOWS[entrypoint]


# --------------------------------------------------------------------------- prefect.yaml


#: the keys of a prefect.yaml file, of one deployment in it and of its work pool (Prefect's
#: "prefect.yaml" reference); checked here with Prefect's public models, not its CLI's private ones
_TOP_KEYS = {"prefect-version", "name", "build", "push", "pull", "deployments", "definitions"}
_DEPLOYMENT_KEYS = {"name", "version", "version_type", "tags", "description", "schedule", "schedules", "paused",
                    "concurrency_limit", "flow_name", "entrypoint", "parameters", "enforce_parameter_schema",
                    "build", "push", "pull", "work_pool", "triggers", "sla"}
_WORK_POOL_KEYS = {"name", "work_queue_name", "job_variables"}


def _schedule(item: dict[str, Any]) -> Any:
    """A prefect.yaml schedule entry as Prefect's public schedule (prefect.schedules)."""
    from prefect.schedules import Cron, Interval

    extra = {k: item[k] for k in ("slug", "parameters", "active") if k in item}
    if "cron" in item:
        return Cron(item["cron"], timezone=item.get("timezone"), **extra)
    assert set(item) <= {"interval", "anchor_date", "timezone", *extra}, item
    return Interval(item["interval"], timezone=item.get("timezone"), **extra)


def _trigger(item: dict[str, Any]) -> Any:
    """A prefect.yaml trigger entry as Prefect's public event trigger."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(**item)


def _check_prefect_yaml(spec: dict[str, Any]) -> None:
    """What `prefect deploy` reads from a prefect.yaml, checked with Prefect's public models."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    assert set(spec) <= _TOP_KEYS, set(spec) - _TOP_KEYS
    for dep in spec["deployments"]:
        assert set(dep) <= _DEPLOYMENT_KEYS, (dep.get("name"), set(dep) - _DEPLOYMENT_KEYS)
        assert isinstance(dep["name"], str) and isinstance(dep["entrypoint"], str)
        assert set(dep.get("work_pool") or {}) <= _WORK_POOL_KEYS, dep["name"]
        for item in dep.get("schedules") or []:
            _schedule(item)
        for item in dep.get("triggers") or []:
            _trigger(item)
        if isinstance(dep.get("concurrency_limit"), dict):
            ConcurrencyLimitConfig(**dep["concurrency_limit"])


def test_prefect_yaml_parses_with_prefects_public_models():
    spec = _spec()
    _check_prefect_yaml(spec)
    assert len(spec["deployments"]) == len(EXPECTED)
    names = [d["name"] for d in spec["deployments"]]
    assert len(set(names)) == len(names), f"duplicate deployment names: {names}"


def test_every_flow_has_its_deployment_with_the_expected_entrypoint():
    found = {d["name"]: d["entrypoint"] for d in _deployments()}
    for (_, dep), entry in EXPECTED.items():
        assert found.get(dep) == entry, f"deployment {dep}: entrypoint {found.get(dep)!r}, expected {entry!r}"


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}/{k[1]}")
def test_entrypoint_imports_and_parameters_validate(key):
    """What `prefect deploy` and the server do: load the flow, build its schema, validate the defaults."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    flow_name, dep_name = key
    dep = _by_name()[dep_name]
    path, _, func = dep["entrypoint"].partition(":")
    assert (REPO / path).is_file(), f"{dep['entrypoint']}: no such file"
    flow = _flow(dep["entrypoint"])
    assert flow.name == flow_name, f"{dep['entrypoint']} is flow {flow.name!r}, not {flow_name!r}"

    params = dep.get("parameters") or {}
    schema = parameter_schema(flow).model_dump_for_openapi()
    validate(params, schema, raise_on_error=True, ignore_required=True)
    # a parameter without a default must come from the trigger (granule-arrived) or from the
    # caller (reprocess-granule is started by granule-arrived with the event's granule_uri)
    missing = set(schema.get("required") or []) - set(params)
    assert missing <= {"granule_uri"}, f"{dep_name}: required parameters without a value: {missing}"
    if dep.get("triggers"):
        assert missing <= {k for t in dep["triggers"] for k in t["parameters"]}
    full = {**params, **{k: "/landing/cloudsat/x.hdf" for k in missing}}
    validate(full, schema, raise_on_error=True)
    bound = flow.validate_parameters(full)            # pydantic validation, as at run time
    assert set(full) <= set(bound)
    for sched in dep.get("schedules") or []:          # every schedule's own parameters too
        merged = {**full, **(sched.get("parameters") or {})}
        validate(merged, schema, raise_on_error=True)
        flow.validate_parameters(merged)


@pytest.mark.parametrize("dep_name", sorted(d for _, d in EXPECTED))
def test_config_is_chosen_at_run_time_not_in_the_deployment(dep_name, monkeypatch):
    """No deployment names a config (or a config): every run chooses it when it starts; with nothing
    set, that is the offline demo, valid for the config type of the flow's `config` parameter."""
    import typing

    from bzpipe import config as bc
    from flows import common

    dep = _by_name()[dep_name]
    assert not {"config", "config_path"} & set(dep.get("parameters") or {}), dep_name
    for sched in dep.get("schedules") or []:
        assert not {"config", "config_path"} & set(sched.get("parameters") or {}), dep_name
    monkeypatch.setattr(common, "variable_value", lambda name=common.CONFIG_VARIABLE: None)
    monkeypatch.delenv(common.CONFIG_ENV, raising=False)
    choice = common.choose_config()
    assert choice.path == str(REPO / common.DEMO_CONFIG) and "offline demo" in choice.source
    hint = typing.get_type_hints(_flow(dep["entrypoint"]).fn)["config"]
    [model] = [a for a in typing.get_args(hint) if a is not type(None)]
    if model is bc.PipelineConfig:
        cfg = common.resolve_pipeline_config()
        assert cfg.train.dataset == cfg.build.version and cfg.infer.run_name == cfg.train.run_name
    else:
        assert isinstance(common.resolve_config(model), model)


def test_tags_concurrency_and_work_pools():
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    for dep in _deployments():
        name = dep["name"]
        assert "bzpipe" in dep["tags"], name
        limit = dep["concurrency_limit"]
        assert isinstance(limit, dict) and limit["limit"] >= 1, f"{name}: concurrency_limit {limit!r}"
        ConcurrencyLimitStrategy(limit["collision_strategy"])
        pool = dep["work_pool"]
        assert pool["name"] == POOL, name
        assert pool["work_queue_name"] == ("gpu" if name in GPU_BOUND else "default"), name
        env = pool["job_variables"]["env"]
        assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "bzpipe", name
    by = _by_name()
    # one build / train at a time; overlapping scans are dropped rather than queued
    assert by["build-dataset"]["concurrency_limit"]["limit"] == 1
    assert by["train"]["concurrency_limit"]["limit"] == 1
    assert by["scan-landing"]["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"


def test_pull_step_enters_the_checkout():
    pull = _spec()["pull"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BZPIPE_REPO }}"}}]


def test_schedules_daily_ingest_and_frequent_scanner():
    import itertools
    from zoneinfo import ZoneInfo

    from cronsim import CronSim  # Prefect's own cron engine

    by = _by_name()
    [daily] = by["daily"]["schedules"]
    sched = _schedule(daily)
    start = datetime(2024, 3, 1, tzinfo=ZoneInfo(sched.timezone or "UTC"))
    fires = list(itertools.islice(CronSim(sched.cron, start), 3))
    assert [f.astimezone(UTC).isoformat() for f in fires] == [f"2024-03-0{d}T06:30:00+00:00" for d in (1, 2, 3)]

    [scan] = by["scan-landing"]["schedules"]
    interval = _schedule(scan).interval
    assert 60 <= interval.total_seconds() <= 900, "the scanner runs every few minutes"
    unscheduled = {d["name"] for d in _deployments() if not d.get("schedules")}
    assert unscheduled == {d for _, d in EXPECTED} - {"daily", "scan-landing"}


def test_granule_trigger_matches_what_scan_landing_emits():
    import jinja2.sandbox
    from prefect.events.schemas.events import Resource, ResourceSpecification

    from flows import reprocess

    dep = _by_name()["granule-arrived"]
    [spec] = dep["triggers"]
    trigger = _trigger(dict(spec))
    assert trigger.expect == {reprocess.GRANULE_EVENT} == {"bzpipe.granule.arrived"}
    assert trigger.posture.value == "Reactive" and trigger.threshold == 1 and trigger.enabled
    name = "2019001120000_67532_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf"
    match = ResourceSpecification(spec["match"])
    assert match.matches(Resource({"prefect.resource.id": f"cloudsat.granule.{name}"}))
    assert not match.matches(Resource({"prefect.resource.id": f"prefect.flow-run.{name}"}))
    # the automation renders the parameters from the event with Jinja
    uri = f"/data/landing/cloudsat/{name}"
    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    rendered = env.from_string(spec["parameters"]["granule_uri"]).render(
        event={"payload": {"granule_uri": uri}, "resource": {"prefect.resource.id": f"cloudsat.granule.{name}"}})
    assert rendered == uri
    # granule-arrived starts the deployment named in prefect.yaml
    target = _flow(dep["entrypoint"]).parameters.properties["deployment"]["default"]
    assert target == f"{reprocess.PROCESS_FLOW}/{reprocess.PROCESS_DEPLOYMENT}"
    assert target.split("/") == ["reprocess-granule", _by_name()["reprocess-granule"]["name"]]


# --------------------------------------------------------------------------- infra


def _placeholders(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    if isinstance(node, str):
        return set(re.findall(r"{{\s*([\w.]+)\s*}}", node))
    return set()


@pytest.mark.parametrize("name", ["work-pool-cpu.json", "work-pool-gpu.json"])
def test_k8s_base_job_templates(name):
    template = json.loads((REPO / "infra" / "k8s" / name).read_text())
    variables = template["variables"]["properties"]
    used = _placeholders(template["job_configuration"])
    assert used <= set(variables), f"{name}: undeclared variables {used - set(variables)}"
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "prefect-job" and container["args"] == "{{ command }}"
    # S3 and service credentials reach flow pods from Secrets (optional: absent ones add nothing)
    assert container["envFrom"] == [{"secretRef": {"name": "{{ store_secret }}", "optional": True}},
                                    {"secretRef": {"name": "{{ credentials_secret }}", "optional": True}}]
    assert variables["store_secret"]["default"] == "bzpipe-store"
    assert variables["credentials_secret"]["default"] == "bzpipe-credentials"
    assert variables["service_account_name"]["default"] == "bzpipe-flow"   # infra/k8s/rbac.yaml
    if "gpu" in name:
        for part in ("requests", "limits"):
            assert container["resources"][part]["nvidia.com/gpu"] == "{{ gpu_count }}"
        assert variables["gpu_count"]["type"] == "integer" and variables["gpu_count"]["default"] >= 1
        assert variables["image"]["default"] == "bzpipe:cuda"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/dev/shm" in mounts
    else:
        assert "nvidia.com/gpu" not in json.dumps(container)


def test_k8s_job_templates_render_with_prefect_kubernetes():
    """With prefect-kubernetes installed (extra `k8s`): the worker's own rendering of a GPU job."""
    pytest.importorskip("prefect_kubernetes", reason="prefect-kubernetes not installed (pip install -e '.[k8s]')")
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "infra" / "k8s" / "work-pool-gpu.json").read_text())
    cfg = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, {"gpu_count": 4}))
    cfg.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="x", flow_id=uuid.uuid4()))
    res = cfg.job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 4 and res["requests"]["nvidia.com/gpu"] == 4


def test_render_prefect_yaml_for_kubernetes():
    sys.path.insert(0, str(REPO / "infra" / "k8s"))
    try:
        import render_prefect_yaml as rk
    finally:
        sys.path.pop(0)
    out = rk.render(_spec(), image="reg/bzpipe:cpu-1", gpu_image="reg/bzpipe:cuda-1",
                    config_path="/etc/bzpipe/pipeline.yaml", extra_env={"X": "1"})
    _check_prefect_yaml(out)
    assert out["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/bzpipe"}}]
    by = {d["name"]: d for d in out["deployments"]}
    assert set(by) == set(_by_name())
    for name, dep in by.items():
        pool = dep["work_pool"]
        gpu = name in GPU_BOUND
        assert pool["name"] == ("bzpipe-k8s-gpu" if gpu else "bzpipe-k8s"), name
        assert pool["job_variables"]["image"] == ("reg/bzpipe:cuda-1" if gpu else "reg/bzpipe:cpu-1")
        env = pool["job_variables"]["env"]
        assert env["DASK_SCHEDULER_ADDRESS"] == "tcp://bzpipe-dask-scheduler.bzpipe.svc.cluster.local:8786"
        assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "bzpipe" and env["X"] == "1"
        # the installation's default config, read at run time (the Variable bzpipe_config overrides it)
        assert env["BZPIPE_CONFIG"] == "/etc/bzpipe/pipeline.yaml"
        src = _by_name()[name]
        for key in ("entrypoint", "parameters", "schedules", "triggers", "concurrency_limit", "tags"):
            assert dep.get(key) == src.get(key), f"{name}.{key} changed"
    # the generated file round-trips through YAML without anchors
    text = subprocess.run([sys.executable, str(REPO / "infra/k8s/render_prefect_yaml.py"), "--image", "r/b:1"],
                          check=True, capture_output=True, text=True).stdout
    assert "&id" not in text and "*id" not in text
    assert len(yaml.safe_load(text)["deployments"]) == len(EXPECTED)


def test_dask_cluster_manifest_matches_the_rendered_scheduler_address():
    docs = list(yaml.safe_load_all((REPO / "infra/k8s/dask-cluster.yaml").read_text()))
    cluster, autoscaler, gpu = docs
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["kind"] == "DaskCluster"
    assert autoscaler["kind"] == "DaskAutoscaler" and autoscaler["spec"]["cluster"] == cluster["metadata"]["name"]
    assert autoscaler["spec"]["minimum"] <= autoscaler["spec"]["maximum"]
    # the operator names the scheduler Service "<cluster>-scheduler"
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    address = f"tcp://{cluster['metadata']['name']}-scheduler.bzpipe.svc.cluster.local:{ports['tcp-comm']}"
    import inspect

    sys.path.insert(0, str(REPO / "infra" / "k8s"))
    try:
        import render_prefect_yaml as rk
    finally:
        sys.path.pop(0)
    assert inspect.signature(rk.render).parameters["dask_address"].default == address
    images = {c["image"] for part in ("scheduler", "worker") for c in cluster["spec"][part]["spec"]["containers"]}
    assert images == {"bzpipe:cpu"}, "scheduler and workers must run the same image"
    # the GPU worker group of the same cluster: one GPU per pod, advertised as the Dask resource GPU
    from bzpipe.cluster import GPU_RESOURCE

    assert gpu["kind"] == "DaskWorkerGroup" and gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    [ctr] = gpu["spec"]["worker"]["spec"]["containers"]
    assert ctr["image"] == "bzpipe:cuda"
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == ctr["resources"]["requests"]["nvidia.com/gpu"] == "1"
    args = ctr["args"]
    assert args[args.index("--resources") + 1] == f"{GPU_RESOURCE}=1"
    # every worker reaches the Prefect API (the granule task runs report their states)
    for c in [*cluster["spec"]["worker"]["spec"]["containers"], ctr]:
        refs = [e.get("configMapRef", {}).get("name") for e in c["envFrom"]]
        assert "bzpipe-prefect" in refs


def test_rbac_allows_exactly_what_the_train_flow_calls():
    """flows/kube.py's API calls are covered by the Role the flow pods run under, and nothing more."""
    import inspect

    from flows import kube

    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "infra/k8s/rbac.yaml").read_text())}
    assert docs["RoleBinding"]["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"] == "bzpipe-flow"
    allowed = {(g, r, v) for rule in docs["Role"]["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    src = inspect.getsource(kube)
    needed = {"create_namespaced_job": ("batch", "jobs", "create"),
              "read_namespaced_job_status": ("batch", "jobs/status", "get"),
              "delete_namespaced_job": ("batch", "jobs", "delete"),
              "create_namespaced_service": ("", "services", "create"),
              "list_namespaced_pod": ("", "pods", "list"),
              "read_namespaced_pod_log": ("", "pods/log", "get")}
    for call, perm in needed.items():
        assert call in src, call
        assert perm in allowed, f"{call} needs {perm}"
    assert not any(v in ("*", "update", "patch") for _, _, v in allowed)


def test_training_job_gets_secrets_and_an_elastic_rendezvous(tmp_path):
    from bzpipe.config import TrainConfig
    from flows.settings import TrainLaunch
    from flows.train import MAX_RESTARTS, render_k8s_job

    cfg = TrainConfig(store_root="s3://b/x", run_name="big", nnodes=2, nproc_per_node=4)
    launch = TrainLaunch(image="reg/bzpipe:cuda", k8s_namespace="bzpipe")
    job, svc = render_k8s_job(cfg, "s3://b/x/models/big/train-config.json", launch)
    [ctr] = job["spec"]["template"]["spec"]["containers"]
    assert ctr["image"] == "reg/bzpipe:cuda" and job["metadata"]["namespace"] == "bzpipe"
    assert ctr["envFrom"] == [{"secretRef": {"name": "bzpipe-store", "optional": True}},
                              {"secretRef": {"name": "bzpipe-credentials", "optional": True}}]
    cmd = ctr["args"][-1]
    name = job["metadata"]["name"]
    for part in ("--nnodes=2:2", "--rdzv_backend=c10d", f"--rdzv_endpoint={name}-0.{name}:29500",
                 f"--rdzv_id={name}", f"--max_restarts={MAX_RESTARTS}"):
        assert part in cmd, part
    assert "--master_addr" not in cmd and "--node_rank" not in cmd   # a static rendezvous cannot be rejoined
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"] == name
    # the manifests are what the Kubernetes API accepts: the client's own models take every field
    client = pytest.importorskip("kubernetes.client", reason="kubernetes client not installed (extra k8s)")
    api = client.ApiClient()
    for doc, kind in ((job, "V1Job"), (svc, "V1Service")):
        model = api._ApiClient__deserialize(json.loads(json.dumps(doc)), kind)
        assert api.sanitize_for_serialization(model) == json.loads(json.dumps(doc)), kind


def test_images_pin_dask_and_distributed_together():
    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "infra/constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = spec.version
    assert pins["dask"] == pins["distributed"], pins
    deps = {Requirement(d).name: Requirement(d) for d in _pyproject()["project"]["dependencies"]}
    assert deps["dask"].specifier.contains(pins["dask"]), "the pinned dask must satisfy pyproject.toml"
    text = (REPO / "infra/Dockerfile").read_text()
    assert "COPY infra/constraints.txt" in text and "pip install -c /opt/bzpipe-constraints.txt -r" in text
    assert "dask.__version__ == distributed.__version__" in text


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dependency_floors_and_no_unused_dependencies():
    from packaging.requirements import Requirement

    deps = {Requirement(d).name.lower(): Requirement(d) for d in _pyproject()["project"]["dependencies"]}
    # np.dtypes.StringDType is NumPy 2; ecmwf.datastores (the new CDS client) arrives with cdsapi 0.7.6
    assert not deps["numpy"].specifier.contains("1.26.4") and deps["numpy"].specifier.contains("2.0.0")
    assert not deps["cdsapi"].specifier.contains("0.7.5") and deps["cdsapi"].specifier.contains("0.7.6")
    assert "prefect-dask" in deps                     # the backfill's Dask task runner
    # no longer imported anywhere: the ARM Live download makes its own saveData request
    for gone in ("h5netcdf", "act-atmos"):
        assert gone not in deps, gone
    code = "\n".join(p.read_text() for d in ("bzpipe", "flows") for p in (REPO / d).rglob("*.py"))
    assert not re.search(r"^\s*(import|from) (act|h5netcdf)\b", code, re.M)
    assert "engine=\"h5netcdf\"" not in code and "engine='h5netcdf'" not in code


def test_slurm_gpu_workers_advertise_the_gpu_resource():
    pytest.importorskip("dask_jobqueue")
    from bzpipe.cluster import GPU_RESOURCE

    res = subprocess.run([sys.executable, str(REPO / "infra/slurm/dask_cluster.py"), "--gpu", "--print-job-script",
                          "--set", "queue=gpu"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    script = res.stdout
    assert "#SBATCH -p gpu" in script and "#SBATCH --gpus-per-task=1" in script
    assert f"--resources {GPU_RESOURCE}=1" in script
    sbatch = (REPO / "infra/slurm/train.sbatch").read_text()
    assert "--rdzv_backend c10d" in sbatch and "--max_restarts" in sbatch


def test_compose_file_wires_server_worker_and_dask():
    compose = yaml.safe_load((REPO / "infra/compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "deploy", "worker", "dask-scheduler", "dask-worker"} <= set(services)
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    pg = services["postgres"]["environment"]
    assert url == (f"postgresql+asyncpg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
                   f"@postgres:5432/{pg['POSTGRES_DB']}")
    assert "4200" in server["command"]
    for name in ("worker", "deploy", "dask-worker"):
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert env["DASK_SCHEDULER_ADDRESS"] == "tcp://dask-scheduler:8786", name
    assert f"--pool {POOL}" in services["worker"]["command"]
    assert "8786" in services["dask-scheduler"]["command"]
    assert "tcp://dask-scheduler:8786" in services["dask-worker"]["command"]
    images = {services[n]["image"] for n in ("prefect-server", "deploy", "worker", "dask-scheduler", "dask-worker")}
    assert len(images) == 1, f"one image for all bzpipe services, got {images}"
    mounts = {n: services[n].get("volumes") for n in ("worker", "dask-worker")}
    assert mounts["worker"] == mounts["dask-worker"] == ["store:/opt/bzpipe/bzpipe-data"]
    assert services["worker"]["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
    # GPU profile: a worker for queue gpu (train, evaluate, pipeline, CloudSat) and a GPU Dask worker
    from bzpipe.cluster import GPU_RESOURCE

    gw = services["dask-worker-gpu"]
    assert gw["profiles"] == ["gpu"] and gw["command"][gw["command"].index("--resources") + 1] == f"{GPU_RESOURCE}=1"
    assert "tcp://dask-scheduler:8786" in gw["command"]
    assert services["worker-gpu"]["command"][services["worker-gpu"]["command"].index("--work-queue") + 1] == "gpu"
    # credentials and the default config come from the host's environment, never from a file
    env = compose["x-flow-env"]
    for key in ("BZPIPE_CONFIG", "ARM_USERNAME", "ARM_TOKEN", "CDSAPI_URL", "CDSAPI_KEY", "AWS_ACCESS_KEY_ID"):
        assert key in env and env[key] is None, key


def test_dockerfile_paths_agree_with_the_deployments():
    text = (REPO / "infra/Dockerfile").read_text()
    assert "BZPIPE_REPO=/opt/bzpipe" in text and "WORKDIR /opt/bzpipe" in text
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "cpu)" in text and "cuda)" in text
    # the torch pinned in the image is the one infra/run.sh installs
    run_sh = (REPO / "infra/run.sh").read_text()
    pinned = re.search(r"TORCH_SPEC=\$\{BZPIPE_TORCH:-torch==([\d.]+)\}", run_sh)
    assert pinned and f"ARG TORCH_VERSION={pinned.group(1)}" in text


def test_slurm_dask_cluster_job_script():
    pytest.importorskip("dask_jobqueue")
    res = subprocess.run([sys.executable, str(REPO / "infra/slurm/dask_cluster.py"), "--print-job-script",
                          "--set", "queue=cpu", "--set", "account=proj42", "--set", "cores=16"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    script = res.stdout
    for line in ("#SBATCH -p cpu", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=16", "#SBATCH --mem=32G",
                 "#SBATCH -t 04:00:00", "#SBATCH --output=bzpipe-dask-%j.out"):
        assert line in script, f"{line!r} not in\n{script}"
    assert "--nthreads 16" in script and "export OMP_NUM_THREADS=1" in script
    assert sys.executable in script, "workers use the interpreter that started the cluster"


def test_stack_script_usage_and_status_without_a_stack(tmp_path):
    sh = REPO / "infra/stack.sh"
    subprocess.run(["bash", "-n", str(sh)], check=True)
    bad = subprocess.run(["bash", str(sh), "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BZPIPE_STACK_DIR": str(tmp_path / "stack"),
           "BZPIPE_STACK_PORT": "1"}
    st = subprocess.run(["bash", str(sh), "status"], capture_output=True, text=True, env=env, timeout=120)
    assert st.returncode == 3, st.stderr
    assert "server: not running" in st.stderr and "worker: not running" in st.stderr
    # `down` with nothing started stops nothing and succeeds
    down = subprocess.run(["bash", str(sh), "down"], capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 0 and "stopping" not in down.stderr


# --------------------------------------------------------------------------- flows of this area


def test_new_days_window():
    from flows.daily import new_days_window

    assert new_days_window(date(2024, 3, 10), days=3, lag_days=6) == (date(2024, 3, 2), date(2024, 3, 4))
    assert new_days_window(date(2024, 3, 1), days=1, lag_days=1) == (date(2024, 2, 29), date(2024, 2, 29))
    assert new_days_window(date(2025, 1, 2), days=2, lag_days=0) == (date(2025, 1, 1), date(2025, 1, 2))
    with pytest.raises(ValueError):
        new_days_window(date(2024, 1, 1), days=0, lag_days=1)


@pytest.mark.prefect
def test_ingest_new_days_fetches_exactly_the_window(prefect_server, store_root):
    from bzpipe.config import IngestConfig, SyntheticConfig
    from flows.daily import ingest_new_days

    tiny = SyntheticConfig(time_step_s=120.0, hours_per_day=1.0, n_gates=48)
    cfg = IngestConfig(store_root=str(store_root), sites=["nsa"], start=date(2000, 1, 1), end=date(2000, 1, 1),
                       synthetic=tiny, fetch_met=False)
    out = ingest_new_days(config=cfg, days=2, lag_days=3, day=date(2019, 1, 5))
    assert out["counts"]["failed"] == 0 and out["counts"]["fetched"] >= 2
    kazr = sorted(p.name for p in (store_root / "raw" / "kazr" / "nsa").iterdir() if p.is_file())
    assert len(kazr) == 2 and all(".20190101." in n or ".20190102." in n for n in kazr), kazr
    era5 = sorted(p.name for p in (store_root / "raw" / "era5" / "nsa").iterdir())
    assert era5 == ["era5_nsa_201901.nc"]


@pytest.mark.prefect
def test_bzpipe_info_lines_reach_the_prefect_api(prefect_server):
    import logging

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.logging_setup import configure_bzpipe_logging

    logger = configure_bzpipe_logging()
    assert logger.getEffectiveLevel() == logging.INFO
    assert any(isinstance(h, APILogHandler) for h in logger.handlers)

    @flow
    def says_hello() -> str:
        logging.getLogger("bzpipe.test_deployments").info("hello from the bzpipe logger")
        from prefect.runtime import flow_run

        return flow_run.id

    run_id = says_hello()

    async def logs():
        await APILogHandler.aflush()
        async with get_client() as client:
            return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))

    records = asyncio.run(logs())
    mine = [r for r in records if r.name == "bzpipe.test_deployments"]
    assert [(r.level, r.message) for r in mine] == [(logging.INFO, "hello from the bzpipe logger")]
