"""The store's layout: every key under a store root is built here, and nowhere else.

Keys are relative to the root (a local folder or ``s3://bucket/prefix``), always ``/``-separated::

    raw/kazr/<site>/<ARM file>                      raw/met/<site>/<ARM file>
    raw/era5/<site>/era5_<site>_<YYYYMM>.nc         raw/cloudsat/<granule>.hdf (+ its ECMWF-AUX companion)
    raw/era5/track/<granule id>/era5_track_<k>.nc   (ERA-5 boxes along a CloudSat track)
    work/colocated/<site>/<YYYY-MM-DD>.zarr         (one colocated site-day, an intermediate)
    work/build/<version>/plan.json, progress.json   (a dataset build's plan and progress)
    work/cds-jobs/<job>.json                        (CDS requests in flight: bookkeeping, no manifest entry)
    datasets/<version>.zarr
    models/<run>/checkpoint-{last,best}.pt, metrics.jsonl, final.json, train-config.json, loss-curve.png
    reports/<run>/index.html, scores.json, <figure>.png, overpass.json, overpass.png
    outputs/cloudsat/<model id>-<settings id>/<granule id>.zarr (+ .png, the curtain plot)
    quarantine/<granule>.json                       (a granule that cannot be used, with the reason)
    manifests/<key>.json                            (one manifest entry per complete object)
    state/replacing/<key>.json                      (a swap under way, see :mod:`bzpipe.store.replace`)
    state/emitted/<model id>-<settings id>/<granule file>.json  (a granule announced to the reprocess flow)

A new version of a Zarr store is written to a hidden sibling, :func:`aside_key`
(``.<name>.tmp-<tag>``), which listings never show.
"""

from __future__ import annotations

import posixpath
import uuid
from datetime import date

from bzpipe.errors import StoreError

RAW = "raw"
CLOUDSAT_RAW_PREFIX = "raw/cloudsat"
ERA5_TRACK_PREFIX = "raw/era5/track"
COLOCATED_PREFIX = "work/colocated"
BUILD_WORK_PREFIX = "work/build"
CDS_JOBS_PREFIX = "work/cds-jobs"
DATASETS_PREFIX = "datasets"
MODELS_PREFIX = "models"
REPORTS_PREFIX = "reports"
OUTPUTS_PREFIX = "outputs/cloudsat"
QUARANTINE_PREFIX = "quarantine"
MANIFEST_PREFIX = "manifests"
JOURNAL_PREFIX = "state/replacing"
EMITTED_PREFIX = "state/emitted"

CHECKPOINTS = ("last", "best")


# --------------------------------------------------------------------------- raw inputs


def raw_key(kind: str, name: str, site: str | None = None) -> str:
    """``raw/<kind>/<site>/<name>``, or ``raw/<kind>/<name>`` without a site."""
    return f"{RAW}/{kind}/{site}/{name}" if site else f"{RAW}/{kind}/{name}"


def raw_prefix(kind: str, site: str | None = None) -> str:
    """``raw/<kind>/<site>/``: the folder of one kind of raw file at one site (``raw/<kind>/``: all)."""
    return f"{RAW}/{kind}/{site}/" if site else f"{RAW}/{kind}/"


def era5_file_name(site: str, year: int, month: int) -> str:
    """``era5_<site>_<YYYYMM>.nc``: one month of ERA-5 around a site."""
    return f"era5_{site}_{year:04d}{month:02d}.nc"


def era5_key(site: str, yyyymm: str) -> str:
    """``raw/era5/<site>/era5_<site>_<YYYYMM>.nc`` (``yyyymm`` as ``201901`` or ``2019-01``)."""
    yyyymm = yyyymm.replace("-", "")
    return raw_key("era5", era5_file_name(site, int(yyyymm[:4]), int(yyyymm[4:6])), site)


def cloudsat_raw_key(name: str) -> str:
    """``raw/cloudsat/<name>``: a staged CloudSat granule (or its ECMWF-AUX companion)."""
    return f"{CLOUDSAT_RAW_PREFIX}/{posixpath.basename(str(name).rstrip('/'))}"


def era5_track_prefix(granule_id: str) -> str:
    """``raw/era5/track/<granule id>/``: the ERA-5 boxes requested along one granule's track."""
    return f"{ERA5_TRACK_PREFIX}/{granule_id}/"


def era5_track_key(granule_id: str, k: int) -> str:
    """``raw/era5/track/<granule id>/era5_track_<k>.nc``: the ``k``-th box along the track."""
    return f"{era5_track_prefix(granule_id)}era5_track_{k:03d}.nc"


def cds_job_key(job: str) -> str:
    """``work/cds-jobs/<job>.json``: a CDS request in flight (bookkeeping)."""
    return f"{CDS_JOBS_PREFIX}/{job}.json"


# --------------------------------------------------------------------------- datasets


def is_dataset_version(version_or_uri: str) -> bool:
    """True for a plain dataset version (``v1``), False for a path or URI of a Zarr store."""
    s = str(version_or_uri)
    return "/" not in s and "://" not in s and not s.endswith(".zarr")


def dataset_key(version: str) -> str:
    """``datasets/<version>.zarr``."""
    return f"{DATASETS_PREFIX}/{version}.zarr"


def colocated_key(site: str, day: date) -> str:
    """``work/colocated/<site>/<YYYY-MM-DD>.zarr``: one colocated site-day."""
    return f"{COLOCATED_PREFIX}/{site}/{day.isoformat()}.zarr"


def build_work_key(version: str, name: str) -> str:
    """``work/build/<version>/<name>``: a dataset build's bookkeeping."""
    return f"{BUILD_WORK_PREFIX}/{version}/{name}"


def build_plan_key(version: str) -> str:
    """``work/build/<version>/plan.json``."""
    return build_work_key(version, "plan.json")


def build_progress_key(version: str) -> str:
    """``work/build/<version>/progress.json``."""
    return build_work_key(version, "progress.json")


# --------------------------------------------------------------------------- models


def model_key(run: str, name: str = "") -> str:
    """``models/<run>/<name>`` (the run's folder without ``name``)."""
    return f"{MODELS_PREFIX}/{run}/{name}".rstrip("/")


def checkpoint_key(run: str, which: str = "last") -> str:
    """``models/<run>/checkpoint-<which>.pt``, ``which`` one of :data:`CHECKPOINTS`."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {CHECKPOINTS}, got {which!r}")
    return model_key(run, f"checkpoint-{which}.pt")


def metrics_key(run: str) -> str:
    """``models/<run>/metrics.jsonl``: one JSON row per epoch."""
    return model_key(run, "metrics.jsonl")


def final_key(run: str) -> str:
    """``models/<run>/final.json``: written when the run ends."""
    return model_key(run, "final.json")


def train_config_key(run: str) -> str:
    """``models/<run>/train-config.json``: the config a run was launched with."""
    return model_key(run, "train-config.json")


def loss_curve_key(run: str) -> str:
    """``models/<run>/loss-curve.png``."""
    return model_key(run, "loss-curve.png")


# --------------------------------------------------------------------------- reports


def report_key(run: str, name: str = "") -> str:
    """``reports/<run>/<name>`` (the run's folder without ``name``)."""
    return f"{REPORTS_PREFIX}/{run}/{name}".rstrip("/")


# --------------------------------------------------------------------------- CloudSat outputs


def output_id(model_id: str, settings_id: str) -> str:
    """``<model id>-<settings id>``: what one set of outputs was made with."""
    return f"{model_id}-{settings_id}"


def output_prefix(model_id: str, settings_id: str) -> str:
    """``outputs/cloudsat/<model id>-<settings id>``."""
    return f"{OUTPUTS_PREFIX}/{output_id(model_id, settings_id)}"


def output_key(model_id: str, settings_id: str, granule_id: str) -> str:
    """Key of a filled granule: the model (checkpoint hash) AND the settings that change the numbers
    (:meth:`bzpipe.config.InferConfig.settings_id`), so other settings never find an output made
    with the old ones."""
    if not (model_id and settings_id and granule_id):
        raise StoreError(f"output key needs a model id, a settings id and a granule id, got "
                         f"{model_id!r}, {settings_id!r}, {granule_id!r}")
    return f"{output_prefix(model_id, settings_id)}/{granule_id}.zarr"


def png_key(output_key: str) -> str:
    """``outputs/cloudsat/<model>-<settings>/<granule>.png`` beside ``<granule>.zarr``."""
    return posixpath.splitext(output_key)[0] + ".png"


def granule_stem(name_or_uri: str) -> str:
    """``2019...F03`` from a granule name, path or URI (the file name without ``.hdf``)."""
    base = posixpath.basename(str(name_or_uri).rstrip("/"))
    return base[:-4] if base.lower().endswith(".hdf") else base


def quarantine_key(name_or_uri: str) -> str:
    """``quarantine/<granule stem>.json``."""
    return f"{QUARANTINE_PREFIX}/{granule_stem(name_or_uri)}.json"


def emitted_key(output_id: str, name: str) -> str:
    """``state/emitted/<output id>/<granule file>.json``: when a granule was last announced."""
    return f"{EMITTED_PREFIX}/{output_id}/{name}.json"


# --------------------------------------------------------------------------- bookkeeping of the store


def clean_key(key: str) -> str:
    r"""``key`` with ``\\`` as ``/``, no empty or ``.`` parts; a key with ``..`` is refused."""
    key = str(key).replace("\\", "/").strip("/")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StoreError(f"store key {key!r} must not contain '..'")
    return "/".join(parts)


def manifest_key(key: str) -> str:
    """``manifests/<key>.json``: the manifest entry of ``key``."""
    return f"{MANIFEST_PREFIX}/{clean_key(key)}.json"


def journal_key(key: str) -> str:
    """``state/replacing/<key>.json``: the journal of a swap into ``key``."""
    return f"{JOURNAL_PREFIX}/{key.strip('/')}.json"


def aside_name_prefix(key: str) -> str:
    """``.<name>.tmp-``: how the names of the hidden siblings of ``key`` begin."""
    return f".{posixpath.basename(key.strip('/'))}.tmp-"


def aside_key(key: str, tag: str = "") -> str:
    """A hidden sibling of ``key`` to write a new version into (not listed, not complete)."""
    parent = posixpath.dirname(key.strip("/"))
    return posixpath.join(parent, f"{aside_name_prefix(key)}{tag or uuid.uuid4().hex[:12]}")


def is_temp(key: str) -> bool:
    """A temporary file or anything inside a hidden aside folder (``.<name>.tmp-...``): never listed."""
    return (any(part.startswith(".") and ".tmp-" in part for part in key.split("/"))
            or "/bzpipe-w-" in key or key.startswith("bzpipe-w-"))
