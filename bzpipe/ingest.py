"""Ingest raw files into the store: plan the items of a site list and date range, fetch one item.

An item is one file: a KaZR or surface-met file of one ARM datastream, or one
ERA-5 site-month.  Fetching one item follows the same path whatever the
source (``offline`` = the synthetic generator, ``arm`` = ARM Live, ``cds`` =
the Copernicus CDS):

1. skip it if the store already holds it with a manifest entry whose checksum
   matches the stored bytes;
2. fetch it into a private temporary folder;
3. verify it: non-empty, and readable by bzpipe's reader for its kind (a
   truncated or garbled file fails here);
4. put it into the store atomically and record its checksum, size and
   provenance in the manifest.

A failure anywhere leaves the store as it was: no partial file under the key,
no manifest entry.  Store layout: ``raw/<kazr|met>/<site>/<ARM file name>``,
``raw/era5/<site>/era5_<site>_<YYYYMM>.nc`` (:mod:`bzpipe.store.layout`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from bzpipe import errors
from bzpipe.checksums import sha256_file
from bzpipe.config import IngestConfig, Site, SyntheticConfig, resolve_site
from bzpipe.credentials import ArmCredentials, CdsCredentials
from bzpipe.errors import (
    AuthenticationError,
    BzpipeError,
    ConfigError,
    DownloadError,
    EmptyDataError,
    InputFileError,
)
from bzpipe.provenance import provenance_record
from bzpipe.store import Store
from bzpipe.store.layout import cds_job_key, era5_file_name, raw_key

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("kazr", "met", "era5")

#: netCDF-C / HDF5 are not thread-safe: generating and decoding files is serialized within a
#: process (flows run tasks in threads); network transfers are not.
NETCDF_LOCK = threading.Lock()


class IngestFailedError(BzpipeError):
    """Some items could not be ingested; ``failed`` maps each store key to its error message."""

    def __init__(self, failed: dict[str, str], total: int) -> None:
        self.failed = dict(failed)
        lines = "\n".join(f"  {k}: {m}" for k, m in sorted(self.failed.items()))
        super().__init__(f"{len(self.failed)} of {total} ingest item(s) failed:\n{lines}")


class IngestBatchError(BzpipeError):
    """Items of an :func:`ingest_batch` failed (``failed``: key -> error), ``done`` were stored."""

    def __init__(self, failed: dict[str, str], done: list[dict[str, Any]], retryable: bool) -> None:
        self.failed, self.done, self.retryable = dict(failed), list(done), bool(retryable)
        lines = "".join(f"\n  {k}: {m}" for k, m in sorted(self.failed.items()))
        super().__init__(f"{len(self.failed)} of {len(failed) + len(done)} of the batch failed:{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.failed, self.done, self.retryable)


@dataclass(frozen=True)
class IngestItem:
    """One file to ingest.  Plain strings only, so that it travels as a task parameter."""

    kind: str
    site: str
    name: str
    source: str
    datastream: str = ""
    day: str = ""
    month: str = ""

    @property
    def key(self) -> str:
        return raw_key(self.kind, self.name, self.site)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | IngestItem) -> IngestItem:
        return d if isinstance(d, IngestItem) else cls(**d)


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one item: ``fetched`` or ``skipped`` (already complete)."""

    key: str
    kind: str
    site: str
    source: str
    status: Literal["fetched", "skipped"]
    sha256: str
    size: int
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- sites, names


def site_for(cfg: IngestConfig, site: str | Site) -> Site:
    """The site with the config's KaZR datastream / level overrides applied."""
    s = resolve_site(site)
    pairs = (("kazr_datastream", cfg.kazr_datastream), ("kazr_level", cfg.kazr_level))
    update = {k: v for k, v in pairs if v}
    return s.model_copy(update=update) if update else s


def arm_datastream(cfg: IngestConfig, site: str | Site, kind: str) -> str:
    """Full ARM datastream of ``kind`` (kazr, met) at ``site``, e.g. ``nsaarsclkazr1kolliasC1.c0``."""
    return site_for(cfg, site).datastream("kazr" if kind == "kazr" else "met")


def months(cfg: IngestConfig) -> list[tuple[int, int]]:
    return sorted({(d.year, d.month) for d in cfg.days()})


def arm_kinds(cfg: IngestConfig, kinds: Iterable[str]) -> list[str]:
    return [k for k in ("kazr", "met") if k in kinds and (k == "kazr" or cfg.fetch_met)]


# --------------------------------------------------------------------------- planning


def plan_era5(cfg: IngestConfig) -> list[IngestItem]:
    """One item per site-month of the date range (the file always holds the whole month)."""
    return [IngestItem(kind="era5", site=s.name, name=era5_file_name(s.name, y, m), source=cfg.era5_source,
                       month=f"{y:04d}-{m:02d}")
            for s in cfg.site_objects() for (y, m) in months(cfg)]


def plan_arm_offline(cfg: IngestConfig, kind: str) -> list[IngestItem]:
    """One item per site-day: the names the synthetic generator writes (real ARM naming)."""
    from bzpipe.sources import synthetic

    name_of = synthetic.kazr_file_name if kind == "kazr" else synthetic.met_file_name
    sites = [(site_for(cfg, s), arm_datastream(cfg, s, kind)) for s in cfg.site_objects()]
    return [IngestItem(kind=kind, site=site.name, name=name_of(site, d), source="offline", datastream=ds,
                       day=d.isoformat()) for site, ds in sites for d in cfg.days()]


def offline_batches(items: Iterable[IngestItem]) -> dict[str, list[IngestItem]]:
    """Offline items by ``<kind>-<site>-<YYYY-MM>``: a flow runs one :func:`ingest_batch` task per group,
    as a file takes about as long to generate as a task costs (0.12 s on the 2-core VM)."""
    groups: dict[str, list[IngestItem]] = {}
    for it in items:
        if it.source != "offline":
            raise ValueError(f"{it.key}: only offline items are batched, not {it.source!r} ones")
        groups.setdefault(f"{it.kind}-{it.site}-{(it.day or it.month)[:7]}", []).append(it)
    return groups


def plan_arm_remote(cfg: IngestConfig, site: str, kind: str, creds: ArmCredentials) -> list[IngestItem]:
    """Ask ARM Live which files of the site's ``kind`` datastream exist in the date range (its months)."""
    from bzpipe.sources.arm.download import list_arm_files, parse_arm_name

    ds, days = arm_datastream(cfg, site, kind), set(cfg.days())
    names = list_arm_files(creds, ds, cfg.start, cfg.end, base_url=cfg.arm_live_url,
                           timeout_s=cfg.request_timeout_s)
    return [IngestItem(kind=kind, site=resolve_site(site).name, name=n, source="arm", datastream=ds,
                       day=d.isoformat()) for n in names if (d := parse_arm_name(n).day) in days]


def plan(cfg: IngestConfig, kinds: Iterable[str] = KINDS, *,
         arm: ArmCredentials | None = None) -> list[IngestItem]:
    """Every item of the config's sites and date range (queries ARM Live for the ``arm`` source)."""
    kinds = list(kinds)
    items: list[IngestItem] = []
    for kind in arm_kinds(cfg, kinds):
        if cfg.kazr_source == "offline":
            items += plan_arm_offline(cfg, kind)
        else:
            if arm is None:
                raise AuthenticationError("ARM Live credentials are needed for kazr_source='arm' "
                                          "(ARM_USERNAME, ARM_TOKEN)")
            for s in cfg.site_objects():
                items += plan_arm_remote(cfg, s.name, kind, arm)
    if "era5" in kinds:
        items += plan_era5(cfg)
    return items


# --------------------------------------------------------------------------- one item


def is_present(store: Store, key: str) -> bool:
    """True if ``key`` is in the store with a manifest entry whose checksum matches its bytes."""
    if not store.is_complete(key):
        return False
    if store.verify(key):
        return True
    log.warning("%s: stored bytes do not match the manifest checksum; fetching again", store.uri(key))
    return False


def verify_file(kind: str, path: Path) -> None:
    """Raise :class:`InputFileError` unless ``path`` is a non-empty file bzpipe's reader can load.

    A complete file that only holds missing values (a clear-sky radar day, an outage) is kept:
    it is what the service has, and later stages skip it.
    """
    if not path.is_file() or path.stat().st_size == 0:
        raise InputFileError(path, "downloaded file is missing or empty")
    if kind == "kazr":
        from bzpipe.sources.arm.reader import read_kazr as reader
    elif kind == "met":
        from bzpipe.sources.arm.reader import read_met as reader
    elif kind == "era5":
        from bzpipe.sources.era5.reader import read_era5 as reader
    else:
        raise ValueError(f"unknown ingest kind {kind!r}")
    try:
        with NETCDF_LOCK:
            ds = reader(path)
            try:
                ds.load()
            finally:
                ds.close()
    except EmptyDataError as e:
        log.warning("%s: complete but without usable data (%s); stored as delivered", path.name, e.problem)
    except InputFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is not usable
        raise InputFileError(path, f"not readable as {kind} ({type(e).__name__}: {e})") from e


class StoreJobBook:
    """A :class:`bzpipe.sources.era5.download.CdsJobBook` kept as ``work/cds-jobs/<key>.json`` in the store
    (:func:`bzpipe.store.layout.cds_job_key`).

    Outside the manifest (it is bookkeeping, not data); written atomically.
    """

    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = cds_job_key(key)

    def load(self) -> dict[str, Any] | None:
        try:
            rec = self.store.read_json(self.key)
        except (FileNotFoundError, ValueError):  # none, or unreadable bookkeeping: submit anew
            return None
        return rec if isinstance(rec, dict) else None

    def save(self, record: dict[str, Any]) -> None:
        self.store.write_json(self.key, record, manifest=False)

    def clear(self) -> None:
        self.store.remove(self.key)


def fetch(item: IngestItem, cfg: IngestConfig, dest_dir: Path, *, arm: ArmCredentials | None = None,
          cds: CdsCredentials | None = None, store: Store | None = None) -> tuple[Path, dict[str, Any]]:
    """Fetch ``item`` into ``dest_dir``; return the local file and what to record about its source.

    ``store``: where a submitted CDS job is remembered, so that a retry resumes it.
    """
    site = site_for(cfg, item.site)
    if item.source == "offline":
        args = (item.kind, dest_dir, site, item.month if item.kind == "era5" else item.day, cfg)
        if cfg.offline_processes:
            try:
                path = offline_pool(cfg.offline_processes).submit(generate_offline, *args).result()
            except BrokenProcessPool as e:     # a worker died (killed, out of memory): a new pool next time
                drop_offline_pool()
                raise DownloadError(f"offline generator process for {item.name} died ({e})") from e
        else:
            path = generate_offline(*args)
        path = Path(path)
        if path.name != item.name:
            raise DownloadError(f"offline generator wrote {path.name}, expected {item.name}")
        return path, {"source": "offline", "generator": "bzpipe.sources.synthetic"}
    if item.source == "arm":
        from bzpipe.sources.arm.download import download_arm_file

        if arm is None:
            raise AuthenticationError("ARM Live credentials are missing (ARM_USERNAME, ARM_TOKEN)")
        path = download_arm_file(arm, item.name, dest_dir, base_url=cfg.arm_live_url,
                                 timeout_s=cfg.request_timeout_s)
        return path, {"source": "arm", "service": cfg.arm_live_url, "datastream": item.datastream}
    if item.source == "cds":
        from bzpipe.sources.era5.download import DATASET, download_era5_month

        if cds is None:
            raise AuthenticationError("CDS credentials are missing (CDSAPI_URL/CDSAPI_KEY or ~/.cdsapirc)")
        y, m = (int(x) for x in item.month.split("-"))
        path, request = download_era5_month(cds, site, y, m, cfg.era5_levels_hpa, cfg.era5_box_deg,
                                            dest_dir / item.name, timeout_s=cfg.request_timeout_s,
                                            poll_max_s=cfg.cds_poll_max_s,
                                            job_book=StoreJobBook(store, item.key) if store else None)
        return path, {"source": "cds", "service": cds.url, "dataset": DATASET, "request": request}
    raise ConfigError(f"unknown source {item.source!r} for {item.key}")


def generate_offline(kind: str, dest_dir: Path, site: Site, when: str, cfg: IngestConfig) -> Path:
    """Write the synthetic file of one item (``when``: its ISO day, or ``YYYY-MM`` for ERA-5) into
    ``dest_dir`` and return its path (top-level, so a worker process can run it)."""
    from bzpipe.sources import synthetic

    with NETCDF_LOCK:
        if kind == "era5":
            y, m = (int(x) for x in when.split("-"))
            return Path(synthetic.write_era5_month(dest_dir, site, y, m, cfg.era5_levels_hpa,
                                                   cfg.era5_box_deg, cfg.seed, layout="cds"))
        writer = synthetic.write_kazr_day if kind == "kazr" else synthetic.write_met_day
        return Path(writer(dest_dir, site, date.fromisoformat(when), cfg.synthetic, cfg.seed))


_POOL: tuple[int, ProcessPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def offline_pool(processes: int) -> ProcessPoolExecutor:
    """This process's pool of ``processes`` spawned workers for :func:`generate_offline` (made on first
    use, replaced when the size changes, shut down at exit).  Spawned, not forked: flows run tasks in
    threads, and a fork copies their locks mid-use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != processes:
            if _POOL is not None:
                _POOL[1].shutdown(wait=True)
            spawn = multiprocessing.get_context("spawn")
            _POOL = (processes, ProcessPoolExecutor(processes, mp_context=spawn))
        return _POOL[1]


@atexit.register
def drop_offline_pool() -> None:
    """Shut this process's offline pool down (its queued items are cancelled)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL[1].shutdown(wait=False, cancel_futures=True)
            _POOL = None


def _generated_with(entry_producer: dict[str, Any], cfg: IngestConfig, day: str = "") -> bool:
    """Whether a stored offline file was generated with ``cfg``'s seed and synthetic settings for its
    ``day`` (its content is a function of them; its name is not: 16 h and 6 h of a day share a name)."""
    old = (entry_producer.get("config") or {}).get("values") or {}
    try:                # none recorded, or settings of another code version: generate again
        was = SyntheticConfig.model_validate(old["synthetic"])
    except (KeyError, TypeError, ValueError):
        return False
    return old.get("seed") == cfg.seed and was.file_settings(day) == cfg.synthetic.file_settings(day)


def present_outcome(item: IngestItem, store: Store, cfg: IngestConfig | None = None) -> IngestOutcome | None:
    """A ``skipped`` outcome if the item is already complete in the store, else None.

    With ``cfg``, an ``offline`` item also needs to have been generated with its seed and synthetic
    settings; one made with others is generated again (and replaced atomically).
    """
    if not is_present(store, item.key):
        return None
    e = store.entry(item.key)
    assert e is not None
    if item.source == "offline" and cfg is not None and not _generated_with(e.producer or {}, cfg, item.day):
        log.info("%s: generated with other synthetic settings; generating it again", item.key)
        return None
    log.info("%s: already present (sha256 %s), skipped", item.key, e.sha256[:12])
    return IngestOutcome(item.key, item.kind, item.site, item.source, "skipped", e.sha256, e.size,
                         "already present with matching checksum")


def ingest_item(item: IngestItem | dict[str, Any], cfg: IngestConfig, store: Store | None = None, *,
                arm: ArmCredentials | None = None, cds: CdsCredentials | None = None,
                force: bool = False,
                fetch_slot: Callable[[], AbstractContextManager[Any]] | None = None) -> IngestOutcome:
    """Skip, or fetch + verify + atomically store one item (see the module docstring).

    ``fetch_slot``: a context manager held around the fetch alone (not the checks or the
    upload), e.g. a slot of a per-service concurrency limit.
    """
    item = IngestItem.from_dict(item)
    store = store or Store(cfg.store_root)
    key = item.key
    if not force and (done := present_outcome(item, store, cfg)) is not None:
        return done
    tmp_parent = cfg.tmp_dir
    if tmp_parent:
        Path(tmp_parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bzpipe-dl-", dir=tmp_parent) as d:
        with fetch_slot() if fetch_slot else contextlib.nullcontext():
            path, source_info = fetch(item, cfg, Path(d), arm=arm, cds=cds, store=store)
        verify_file(item.kind, path)
        digest = sha256_file(path)
        producer = provenance_record(cfg, stage="ingest", kind=item.kind, site=item.site, **source_info)
        entry = store.put_file(path, key, producer=producer, sha256=digest)
    log.info("%s: stored (%d bytes, sha256 %s)", key, entry.size, entry.sha256[:12])
    return IngestOutcome(key, item.kind, item.site, item.source, "fetched", entry.sha256, entry.size)


def ingest_batch(items: Iterable[IngestItem | dict[str, Any]], cfg: IngestConfig,
                 store: Store | None = None) -> list[IngestOutcome]:
    """:func:`ingest_item` for each item (present ones are skipped); a failure does not stop the others,
    :class:`IngestBatchError` names them all at the end, and a retry redoes only what is missing."""
    store = store or Store(cfg.store_root)
    done: list[IngestOutcome] = []
    errors: dict[str, BaseException] = {}
    for raw in items:
        item = IngestItem.from_dict(raw)
        try:
            done.append(ingest_item(item, cfg, store))
        except Exception as e:  # noqa: BLE001 - every item is tried; the batch fails once, naming all
            errors[item.key] = e
            log.error("%s failed: %s: %s", item.key, type(e).__name__, e)
    if errors:
        raise IngestBatchError({k: f"{type(e).__name__}: {e}" for k, e in errors.items()},
                               [o.to_dict() for o in done], any(is_retryable(e) for e in errors.values()))
    return done


# --------------------------------------------------------------------------- retry policy


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying a download can help (:func:`bzpipe.errors.is_retryable`; a retry fetches the
    file again, so a file that arrived unreadable may come back whole)."""
    return errors.is_retryable(exc, input_refetched=True)
