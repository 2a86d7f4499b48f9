"""The scheduled ingest of new days: ``ingest-new-days``.

A deployment's schedule carries fixed parameters, but "the newest days" moves
every day.  This flow takes the day its run was *scheduled* for (so a run that
starts late, or one re-run from the UI, fetches the same days), steps back
``lag_days`` (ARM and ERA-5 publish with a delay; ERA-5T lags about five days)
and ingests the ``days`` UTC days ending there, through the ``ingest`` flow.
Files already in the store with a matching checksum are skipped, so the
overlapping windows of consecutive days cost nothing.

    python -m flows.daily [--config FILE] [--set key=value ...] [--days N] [--lag-days N] [--day YYYY-MM-DD]
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from prefect import flow, get_run_logger
from pydantic import Field

from bzpipe.config import IngestConfig, override_config
from flows.common import cli_parser, resolve_stage
from flows.ingest import ingest


def new_days_window(reference: date, days: int, lag_days: int) -> tuple[date, date]:
    """``(start, end)``, inclusive: the ``days`` days ending ``lag_days`` before ``reference``.

    >>> new_days_window(date(2024, 3, 10), days=3, lag_days=5)
    (datetime.date(2024, 3, 3), datetime.date(2024, 3, 5))
    """
    if days < 1 or lag_days < 0:
        raise ValueError(f"need days >= 1 and lag_days >= 0, got days={days}, lag_days={lag_days}")
    end = reference - timedelta(days=lag_days)
    return end - timedelta(days=days - 1), end


def scheduled_day() -> date:
    """UTC day this flow run was scheduled for (today outside a flow run)."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    if not isinstance(when, datetime):
        when = datetime.now(UTC)
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.date()


@flow(name="ingest-new-days")
def ingest_new_days(config: IngestConfig | None = None, config_path: str | None = None,
                    overrides: list[str] | None = None,
                    days: Annotated[int, Field(ge=1, le=366)] = 3,
                    lag_days: Annotated[int, Field(ge=0, le=366)] = 6,
                    day: date | None = None) -> dict[str, Any]:
    """Ingest the ``days`` days ending ``lag_days`` before the scheduled day (or ``day``).

    The config's ``start`` / ``end`` are replaced by that window; everything else
    (sites, sources, store) comes from ``config`` / ``config_path`` / ``overrides``.
    """
    logger = get_run_logger()
    reference = day or scheduled_day()
    start, end = new_days_window(reference, days, lag_days)
    cfg, settings = resolve_stage(IngestConfig, config, config_path, overrides)
    cfg = override_config(cfg, {"start": start.isoformat(), "end": end.isoformat()})
    logger.info("ingesting %s..%s (%d day(s), %d day(s) before %s) for %s into %s",
                start, end, days, lag_days, reference, [getattr(s, "name", s) for s in cfg.sites],
                cfg.store_root)
    return ingest(config=cfg, settings=settings)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("daily", __doc__)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--lag-days", type=int, default=6)
    p.add_argument("--day", type=date.fromisoformat)
    a = p.parse_args(argv)
    state = ingest_new_days(config_path=a.config_path, overrides=a.overrides or None, days=a.days,
                            lag_days=a.lag_days, day=a.day, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
