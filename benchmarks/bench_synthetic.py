"""Speed and memory of the offline sample-data generator (prints figures; not a test).

    python benchmarks/bench_synthetic.py [--days 2]

Reports seconds per full KaZR day (4 s x 400 gates), per ERA-5 month, and per
CloudSat granule of ~37,000 profiles, with peak RSS, on this machine.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

from bzpipe.config import KNOWN_SITES, IngestConfig, SyntheticConfig
from bzpipe.sources.synthetic import generate_cloudsat_granule, write_era5_month, write_kazr_day


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=2)
    p.add_argument("--profiles", type=int, default=37000)
    a = p.parse_args()
    cfg, site = SyntheticConfig(), KNOWN_SITES["nsa"]
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        for i in range(a.days):
            write_kazr_day(Path(d), site, date(2019, 1, 1 + i), cfg, seed=0)
        dt = (time.perf_counter() - t0) / a.days
        print(f"KaZR day (21600 profiles x {cfg.n_gates} gates, written as netCDF): {dt:.2f} s/day, "
              f"{21600 / dt:,.0f} profiles/s; peak RSS {_rss_mb():,.0f} MB")
        t0 = time.perf_counter()
        write_era5_month(Path(d), site, 2019, 1, IngestConfig().era5_levels_hpa, 0.75, seed=0)
        print(f"ERA-5 month (hourly, 20 levels, 7x7 box): {time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        generate_cloudsat_granule(Path(d), datetime(2019, 1, 1, 12, tzinfo=timezone.utc), a.profiles, 0, cfg)
        print(f"CloudSat granule ({a.profiles} profiles x 125 bins, HDF-EOS2): {time.perf_counter() - t0:.2f} s; "
              f"peak RSS {_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
