"""Write a Kubernetes flavour of the repository's prefect.yaml.

prefect.yaml targets the local process pool ``bzpipe-local`` (queue ``gpu`` for the
GPU-bound runs).  For a cluster the same deployments go to two Kubernetes work pools:
queue ``gpu`` -> the GPU pool (base job template ``work-pool-gpu.json``), everything else ->
the CPU pool (``work-pool-cpu.json``).  Every deployment also gets the image, the namespace,
``DASK_SCHEDULER_ADDRESS`` of the DaskCluster in ``dask-cluster.yaml``, and a pull step that
enters the code baked into the image; ``--config-path`` becomes ``$BZPIPE_CONFIG`` of every
flow run (the installation's default config; the Prefect Variable ``bzpipe_config`` switches it
at run time).  Names, entrypoints, parameters, schedules, triggers, concurrency limits and tags
are kept.

    python infra/k8s/render_prefect_yaml.py --image REGISTRY/bzpipe:cpu-TAG \
        --gpu-image REGISTRY/bzpipe:cuda-TAG --config-path /etc/bzpipe/pipeline.yaml > prefect.k8s.yaml
    prefect deploy --all --prefect-file prefect.k8s.yaml

Only PyYAML is needed (no Kubernetes client).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
GPU_QUEUE = "gpu"


class _PlainDumper(yaml.SafeDumper):
    """Writes shared mappings out in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(spec: dict[str, Any], *, image: str, gpu_image: str | None = None, cpu_pool: str = "bzpipe-k8s",
           gpu_pool: str = "bzpipe-k8s-gpu", namespace: str = "bzpipe",
           dask_address: str | None = "tcp://bzpipe-dask-scheduler.bzpipe.svc.cluster.local:8786",
           workdir: str = "/opt/bzpipe", config_path: str | None = None,
           extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The prefect.yaml mapping ``spec`` re-targeted at Kubernetes work pools (a new mapping)."""
    out = copy.deepcopy(spec)
    out.pop("definitions", None)  # anchors are already expanded by the YAML loader
    out["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}]
    for dep in out.get("deployments", []):
        pool = dep.get("work_pool") or {}
        on_gpu = pool.get("work_queue_name") == GPU_QUEUE
        env = dict((pool.get("job_variables") or {}).get("env") or {})
        if dask_address:
            env["DASK_SCHEDULER_ADDRESS"] = dask_address
        env.update(extra_env or {})
        job_variables = {k: v for k, v in (pool.get("job_variables") or {}).items() if k != "env"}
        job_variables.update({"image": (gpu_image or image) if on_gpu else image,
                              "namespace": namespace, "env": env})
        dep["work_pool"] = {"name": gpu_pool if on_gpu else cpu_pool, "work_queue_name": "default",
                            "job_variables": job_variables}
        if config_path is not None:
            # the installation's default config (flows/common.py: after the Prefect Variable
            # bzpipe_config, before the offline demo), read by every run when it starts
            env["BZPIPE_CONFIG"] = config_path
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefect-file", type=Path, default=REPO / "prefect.yaml")
    p.add_argument("--image", required=True, help="bzpipe image for CPU flow runs (infra/Dockerfile)")
    p.add_argument("--gpu-image", help="image for the GPU queue (VARIANT=cuda); default --image")
    p.add_argument("--cpu-pool", default="bzpipe-k8s")
    p.add_argument("--gpu-pool", default="bzpipe-k8s-gpu")
    p.add_argument("--namespace", default="bzpipe")
    p.add_argument("--dask-address", default="tcp://bzpipe-dask-scheduler.bzpipe.svc.cluster.local:8786",
                   help="scheduler of infra/k8s/dask-cluster.yaml; '' for none (LocalCluster per run)")
    p.add_argument("--workdir", default="/opt/bzpipe", help="the checkout inside the image")
    p.add_argument("--config-path", help="default config file inside the pod (e.g. a mounted ConfigMap), as "
                   "$BZPIPE_CONFIG of every flow run; the Prefect Variable bzpipe_config still overrides it")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra flow-run environment")
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    a = p.parse_args(argv)
    extra = {}
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--env {item!r}: expected KEY=VALUE")
        extra[key] = value
    spec = yaml.safe_load(a.prefect_file.read_text())
    out = render(spec, image=a.image, gpu_image=a.gpu_image, cpu_pool=a.cpu_pool, gpu_pool=a.gpu_pool,
                 namespace=a.namespace, dask_address=a.dask_address or None, workdir=a.workdir,
                 config_path=a.config_path, extra_env=extra)
    text = (f"# Generated by infra/k8s/render_prefect_yaml.py from {a.prefect_file.name}; do not edit.\n"
            + yaml.dump(out, Dumper=_PlainDumper, sort_keys=False, width=110))
    if a.output:
        a.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
