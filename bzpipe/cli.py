"""``bzpipe`` command line: library-level helpers that need no Prefect.

    bzpipe config   [--config FILE] [--set key=value ...]     print the resolved pipeline config
    bzpipe generate OUT [--config FILE] [--set ...]          write offline sample files (real formats)
    bzpipe inspect  FILE [FILE ...]                          open files with bzpipe's readers
    bzpipe manifest ROOT [--prefix P] [--verify]             list (and re-checksum) a store's manifest

The pipeline itself runs through the Prefect flows: ``python -m flows.pipeline``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
            written.append(synthetic.write_kazr_day(out / "kazr" / site.name, site, day, cfg.synthetic, cfg.seed))
            written.append(synthetic.write_met_day(out / "met" / site.name, site, day, cfg.synthetic, cfg.seed))
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
    return 0


def _cmd_manifest(a: argparse.Namespace) -> int:
    from bzpipe.store import Store

    store = Store(a.root)
    bad = 0
    for key, e in sorted(store.manifest(a.prefix).items()):
        status = ""
        if a.verify:
            ok = store.verify(key) if not key.endswith(".zarr") else store.exists(key)
            status = "  ok" if ok else "  MISMATCH"
            bad += not ok
        print(f"{e.sha256[:16]}  {e.size:>12}  {key}{status}")
    return 1 if bad else 0


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
    a = parser.parse_args(argv)
    try:
        return int(a.func(a))
    except BzpipeError as e:
        print(f"bzpipe: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
