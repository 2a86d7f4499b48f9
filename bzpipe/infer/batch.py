"""Many granules: the Dask cluster, the batch run, and the landing-area bookkeeping.

* The Dask cluster: :func:`bzpipe.cluster.dask_client` with ``InferConfig.dask_address`` (or
  ``$DASK_SCHEDULER_ADDRESS``), else a LocalCluster of ``n_workers`` processes; each worker
  loads the model once (:func:`~bzpipe.infer.predict.cached_model`).
* :func:`run_batch` maps :func:`~bzpipe.infer.granule.process_granule` over
  granule keys; a failing granule becomes a ``failed`` result, the rest go on.
* :func:`pending_granules` lists landing files that still need work for a model and
  settings (no complete output; not quarantined, unless the file changed since),
  :func:`should_emit` / :func:`record_emitted` keep the scanner from announcing one
  twice within a dedupe window (a changed file is announced at once).
"""

from __future__ import annotations

import logging
import posixpath
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from bzpipe.config import InferConfig
from bzpipe.errors import InputFileError
from bzpipe.infer.granule import GranuleResult, process_granule
from bzpipe.infer.staging import granule_id_of, landing_store
from bzpipe.quarantine import quarantine_record, unchanged_since
from bzpipe.store import Store, file_version
from bzpipe.store.layout import CLOUDSAT_RAW_PREFIX, emitted_key, output_key

log = logging.getLogger(__name__)


def process_safely(store_root: str, key: str, cfg_json: dict[str, Any], model_id: str | None,
                   era5_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`process_granule` that turns any error into a ``failed`` result (for Dask maps)."""
    cfg = InferConfig.model_validate(cfg_json)
    try:
        return process_granule(store_root, key, cfg, model_id=model_id, era5_keys=era5_keys).to_dict()
    except Exception as e:  # noqa: BLE001 - one granule must not stop the batch
        res = GranuleResult(granule=posixpath.basename(key), status="failed", model_id=model_id or "",
                            reason=f"{type(e).__name__}: {e}", category=type(e).__name__)
        log.error("granule %s failed:\n%s", key, traceback.format_exc())
        return res.to_dict()


def run_batch(client: Any, store_root: str, keys: Sequence[str], cfg: InferConfig,
              model_id: str | None = None) -> list[dict[str, Any]]:
    """Process granules in parallel on a Dask ``client``; one result dict per key, in order.

    ``client=None`` runs them one after the other in this process.
    """
    cfg_json = cfg.model_dump(mode="json")
    if client is None:
        return [process_safely(store_root, k, cfg_json, model_id) for k in keys]
    futures = client.map(process_safely, [store_root] * len(keys), list(keys), [cfg_json] * len(keys),
                         [model_id] * len(keys), pure=False, key=[f"granule-{posixpath.basename(k)}"
                                                                  for k in keys])
    return client.gather(futures)


# --------------------------------------------------------------------------- landing area


@dataclass(frozen=True)
class LandingFile:
    """A granule file found in the landing area."""

    uri: str
    name: str
    granule_id: str
    size: int
    version: str = ""       # changes with the content (bzpipe.store.file_version)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_landing(store: Store, landing: str) -> list[LandingFile]:
    """CloudSat granule files (``*.hdf`` with a CloudSat name) under the landing prefix, sorted; the
    ECMWF-AUX companions that arrive beside them are not granules to fill (they are staged with them)."""
    from bzpipe.infer.companion import is_companion

    ls, prefix = landing_store(store, landing)
    out = []
    for key in ls.list(prefix, suffix=".hdf"):
        name = posixpath.basename(key)
        if is_companion(name):
            continue
        try:
            gid = granule_id_of(name)
        except InputFileError:
            gid = ""
        try:
            version = file_version(ls.uri(key))
            size = int(version.split(":", 1)[0])
        except (OSError, ValueError):
            version, size = "", -1
        out.append(LandingFile(uri=ls.uri(key), name=name, granule_id=gid, size=size, version=version))
    return out


def pending_granules(store: Store, files: Sequence[LandingFile], model_id: str,
                     settings_id: str) -> list[LandingFile]:
    """Files without a complete output for ``model_id`` and ``settings_id`` and not quarantined.

    A quarantined granule is pending again once its file changed (another version than the one
    that was quarantined).  A file whose name is not a CloudSat granule name is pending
    (processing it quarantines it).
    """
    out = []
    for f in files:
        rec = quarantine_record(store, f.name)
        if rec is not None and unchanged_since(rec, f.version):
            continue
        if f.granule_id and store.is_complete(output_key(model_id, settings_id, f.granule_id)):
            continue
        out.append(f)
    return out


def idempotency_key(name: str, output_id: str, version: str | int | None = None) -> str:
    """Key of one unit of work: the granule file (name, version) with one model and its settings
    (``output_id`` = ``<model id>-<settings id>``)."""
    return f"cloudsat:{name}:{version if version is not None else ''}:{output_id}"


def should_emit(store: Store, output_id: str, name: str, dedupe_s: float, now: datetime | None = None,
                version: str = "") -> bool:
    """False if this granule file (``version``) was announced for ``output_id`` less than ``dedupe_s`` ago."""
    try:
        rec = store.read_json(emitted_key(output_id, name))
    except FileNotFoundError:
        return True
    if version and rec.get("version") and rec["version"] != version:
        return True
    now = now or datetime.now(UTC)
    last = datetime.fromisoformat(rec["emitted_at"])
    return (now - last).total_seconds() >= dedupe_s


def record_emitted(store: Store, output_id: str, f: LandingFile, event_id: str = "",
                   now: datetime | None = None) -> None:
    """Remember that ``f`` was announced (for :func:`should_emit`)."""
    now = now or datetime.now(UTC)
    store.write_json(emitted_key(output_id, f.name), {**f.to_dict(), "output_id": output_id,
                                                      "event_id": event_id, "emitted_at": now.isoformat()},
                     manifest=False)


def select_by_date(files: Sequence[LandingFile], start: date | None, end: date | None) -> list[LandingFile]:
    """Files whose granule start day lies in ``[start, end]`` (inclusive; None = open)."""
    from bzpipe.sources.cloudsat import granule_info

    out = []
    for f in files:
        try:
            day = granule_info(f.name).start.date()
        except InputFileError:
            continue
        if (start is None or day >= start) and (end is None or day <= end):
            out.append(f)
    return out


def backfill_uris(store: Store, landing: str, granules: Sequence[str] | None = None,
                  start: date | None = None, end: date | None = None) -> list[str]:
    """The granule URIs a backfill fills: each of ``granules`` (a URI, a store key, or a bare file
    name looked up in the landing area and ``raw/cloudsat/``), or without a list every granule of
    the landing area and ``raw/cloudsat/`` that starts within ``[start, end]``."""
    known = {f.name: f.uri for f in list_landing(store, landing)}
    known.update({f.name: f.uri for f in list_landing(store, CLOUDSAT_RAW_PREFIX)})
    if granules:
        return [known.get(g, g) if "/" not in g else (store.uri(g) if store.exists(g) else g)
                for g in granules]
    files = [LandingFile(uri=u, name=n, granule_id="", size=-1) for n, u in sorted(known.items())]
    return [f.uri for f in select_by_date(files, start, end)]
