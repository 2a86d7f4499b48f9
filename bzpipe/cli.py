"""``bzpipe`` command line: library-level helpers that need no Prefect.

    bzpipe config   [--config FILE] [--set key=value ...]     print the resolved pipeline config
                                                             (refuses impossible settings)
    bzpipe generate OUT [--config FILE] [--set ...]          write offline sample files (real formats)
    bzpipe inspect  FILE [FILE ...]                          open files with bzpipe's readers (a damaged
                                                             file: one line naming it and the problem)
    bzpipe manifest ROOT [--prefix P] [--verify]             list (and re-check) a store's manifest
    bzpipe export   GRANULE.zarr OUT.nc [--complevel N]       a filled granule as compressed CF netCDF-4

The pipeline itself runs through the Prefect flows: ``python -m flows.pipeline``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr
import yaml

from bzpipe.config import load_pipeline_config
from bzpipe.errors import BzpipeError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON/TOML pipeline config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def _cmd_config(a: argparse.Namespace) -> int:
    cfg = load_pipeline_config(a.config, a.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def _cmd_generate(a: argparse.Namespace) -> int:
    from bzpipe.ingest import months
    from bzpipe.sources import synthetic

    cfg = load_pipeline_config(a.config, a.overrides).ingest
    out = Path(a.out)
    written: list[Path] = []
    for site in cfg.site_objects():
        for day in cfg.days():
            written.append(synthetic.write_kazr_day(out / "kazr" / site.name, site, day,
                                                    cfg.synthetic, cfg.seed))
            written.append(synthetic.write_met_day(out / "met" / site.name, site, day,
                                                   cfg.synthetic, cfg.seed))
        for year, month in months(cfg):
            written.append(synthetic.write_era5_month(out / "era5" / site.name, site, year, month,
                                                      cfg.era5_levels_hpa, cfg.era5_box_deg, cfg.seed))
    written.append(synthetic.generate_cloudsat_granule(out / "cloudsat", cfg.start_datetime(),
                                                       cfg.synthetic.cloudsat_profiles,
                                                       cfg.seed, cfg.synthetic))
    for p in written:
        print(p)
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from bzpipe.sources.detect import open_any

    for f in a.files:
        ds = open_any(f)
        print(f"== {f}")
        print(ds)
        for w in inspect_warnings(ds):
            print(f"bzpipe: warning: {f}: {w}", file=sys.stderr)
    return 0


def inspect_warnings(ds: xr.Dataset) -> list[str]:
    """What a file that reads fine still lacks for the pipeline (e.g. ERA-5 without ``q``)."""
    from bzpipe.schema import ERA5_VARIABLES

    names = set(map(str, ds.data_vars))
    levels = {"pressure_level", "level"} & set(map(str, ds.dims))
    if not levels or not names & set(ERA5_VARIABLES):
        return []
    missing = [v for v in ERA5_VARIABLES if v not in names]
    if not missing:
        return []
    long = {"t": "temperature", "q": "specific humidity", "u": "eastward wind", "v": "northward wind"}
    what = ", ".join(f"{v!r} ({long.get(v, v)})" for v in missing)
    return [f"ERA-5 file without {what}: the 5-channel model (3+_5) needs {', '.join(ERA5_VARIABLES)}, so it "
            "cannot use this file; the build refuses it, only the reflectivity-only model (3+_1) could do "
            "without it"]


def _cmd_manifest(a: argparse.Namespace) -> int:
    from bzpipe.store import Store

    store = Store(a.root)
    bad = 0
    for key, e in sorted(store.manifest(a.prefix).items()):
        status = ""
        if a.verify:
            ok = store.verify(key) if not key.endswith(".zarr") else verify_zarr(store, key)
            status = "  ok" if ok else "  MISMATCH"
            bad += not ok
        print(f"{e.sha256[:16]}  {e.size:>12}  {key}{status}")
    return 1 if bad else 0


def verify_zarr(store: Any, key: str) -> bool:
    """A CloudSat output: its content checksum is recomputed.  A dataset: every chunk of ``x`` of every
    split is stored (an interrupted write leaves some missing).  Any other Zarr store: it opens."""
    import zarr

    from bzpipe.errors import BzpipeError
    from bzpipe.store.layout import DATASETS_PREFIX, OUTPUTS_PREFIX

    try:
        if key.startswith(OUTPUTS_PREFIX + "/"):
            from bzpipe.infer.output import content_sha256, open_output

            entry = store.entry(key)
            with open_output(store, key) as ds:
                return entry is not None and content_sha256(ds.load()) == entry.sha256
        opts = store.storage_options or None
        root = zarr.open_group(store.uri(key), mode="r", storage_options=opts) if opts else \
            zarr.open_group(store.uri(key), mode="r")
        if key.startswith(DATASETS_PREFIX + "/"):
            for split in root.group_keys():
                x = root[split]["x"]
                if x.nchunks_initialized != x.nchunks:
                    print(f"bzpipe: {store.uri(key)}/{split}/x: {x.nchunks_initialized} of {x.nchunks} "
                          "chunks stored", file=sys.stderr)
                    return False
        return True
    except (OSError, ValueError, KeyError, BzpipeError) as e:
        print(f"bzpipe: {store.uri(key)}: {type(e).__name__}: {e}", file=sys.stderr)
        return False


def _cmd_export(a: argparse.Namespace) -> int:
    from bzpipe.infer.cf import export_netcdf
    from bzpipe.store import s3_storage_options

    src = str(a.granule).rstrip("/")
    if not src.startswith("s3://") and not Path(src).exists():
        raise BzpipeError(f"{src}: no such Zarr store")
    opts = s3_storage_options() if src.startswith("s3://") else None
    try:
        out = export_netcdf(src, a.out, complevel=a.complevel, storage_options=opts)
    except (OSError, ValueError, KeyError) as e:
        raise BzpipeError(f"{src}: cannot export as netCDF-4 ({type(e).__name__}: {e})") from e
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bzpipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("config", help="print the resolved pipeline config")
    _config_args(p)
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("generate", help="write offline sample files in the real formats")
    p.add_argument("out")
    _config_args(p)
    p.set_defaults(func=_cmd_generate)
    p = sub.add_parser("inspect", help="open files with bzpipe's readers and print them")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser("manifest", help="list a store's manifest")
    p.add_argument("root")
    p.add_argument("--prefix", default="")
    p.add_argument("--verify", action="store_true", help="re-checksum files against the manifest")
    p.set_defaults(func=_cmd_manifest)
    p = sub.add_parser("export", help="write a filled granule (Zarr) as compressed CF netCDF-4")
    p.add_argument("granule", help="outputs/cloudsat/<model>-<settings>/<granule>.zarr (path or s3:// URI)")
    p.add_argument("out", help="the netCDF-4 file to write")
    p.add_argument("--complevel", type=int, default=4, choices=range(1, 10), metavar="1-9",
                   help="zlib compression level (default 4)")
    p.set_defaults(func=_cmd_export)
    a = parser.parse_args(argv)
    try:
        return int(a.func(a))
    except BzpipeError as e:
        print(f"bzpipe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
