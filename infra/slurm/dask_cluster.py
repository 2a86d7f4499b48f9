"""Start the bzpipe Dask cluster on SLURM (dask-jobqueue) and keep it up until Ctrl-C.

    python infra/slurm/dask_cluster.py --adapt 1 16            # workers follow the load
    python infra/slurm/dask_cluster.py --jobs 4                # a fixed number of worker jobs
    python infra/slurm/dask_cluster.py --print-job-script      # show the sbatch script, submit nothing
    python infra/slurm/dask_cluster.py --gpu --jobs 4          # GPU workers for backfill-cloudsat

Settings come from ``infra/slurm/dask-jobqueue.yaml`` (``--config``), overridable with
``--set key=value`` (keys of ``jobqueue.slurm``, or of ``jobqueue.slurm-gpu`` with ``--gpu``,
e.g. ``--set queue=gpu --set cores=16``).
Once the scheduler is up, the script prints ``DASK_SCHEDULER_ADDRESS=tcp://host:port`` and
writes it to ``--address-file``; export it for the Prefect worker (or set ``dask_address``
in the build / infer config) so build-dataset and backfill-cloudsat use this cluster.
On exit the worker jobs are cancelled.  Needs ``pip install -e ".[slurm]"`` (dask-jobqueue).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import dask.config
import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "dask-jobqueue.yaml"


def load_settings(path: Path, overrides: list[str] | None = None, section: str = "slurm") -> dict[str, Any]:
    """The ``jobqueue`` mapping of ``path`` with ``key=value`` overrides applied to ``jobqueue.<section>``."""
    data = yaml.safe_load(path.read_text()) or {}
    own = dict((data.get("jobqueue") or {}).get(section) or {})
    if not own:
        raise SystemExit(f"{path}: no jobqueue.{section} section")
    slurm = own
    if section != "slurm":
        # another section (slurm-gpu) starts from dask-jobqueue's SLURM defaults and the file's slurm section
        import dask_jobqueue  # noqa: F401  (loads the package's jobqueue.slurm defaults)

        slurm = {**dask.config.get("jobqueue.slurm", {}),
                 **((data.get("jobqueue") or {}).get("slurm") or {}), **own}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected key=value")
        slurm[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return {"jobqueue": {section: slurm}}


def make_cluster(settings: dict[str, Any], section: str = "slurm"):
    """A ``SLURMCluster`` configured from ``settings``' section (submits nothing until scaled)."""
    from dask_jobqueue import SLURMCluster

    dask.config.update(dask.config.config, settings, priority="new")
    return SLURMCluster(config_name=section)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--jobs", type=int, help="submit this many worker jobs")
    size.add_argument("--adapt", type=int, nargs=2, metavar=("MIN", "MAX"), help="adaptive, MIN..MAX jobs")
    p.add_argument("--print-job-script", action="store_true", help="print the worker sbatch script and exit")
    p.add_argument("--gpu", action="store_true",
                   help="GPU workers (section slurm-gpu: one GPU per job, Dask resource GPU=1) for backfill-cloudsat")
    p.add_argument("--address-file", type=Path, help="write the scheduler address here")
    a = p.parse_args(argv)

    section = "slurm-gpu" if a.gpu else "slurm"
    cluster = make_cluster(load_settings(a.config, a.overrides, section), section)
    try:
        if a.print_job_script:
            print(cluster.job_script())
            return 0
        if a.jobs is not None:
            cluster.scale(jobs=a.jobs)
        else:
            lo, hi = a.adapt or (1, 8)
            cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
        address = cluster.scheduler_address
        print(f"DASK_SCHEDULER_ADDRESS={address}", flush=True)
        print(f"dashboard: {cluster.dashboard_link}", file=sys.stderr, flush=True)
        if a.address_file:
            a.address_file.write_text(address + "\n")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    raise SystemExit(main())
