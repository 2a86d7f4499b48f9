"""What every flow shares: turning (config, config_path, overrides) into one typed config."""

from __future__ import annotations

import argparse
import re
from typing import Any, TypeVar

from pydantic import BaseModel

import flows.logging_setup  # noqa: F401  (bzpipe.* log lines into the Prefect UI)
from bzpipe.config import load_stage_config, override_config

C = TypeVar("C", bound=BaseModel)


def resolve_config(model: type[C], config: C | dict[str, Any] | None = None,
                   config_path: str | None = None, overrides: list[str] | None = None) -> C:
    """The stage config a flow runs with.

    ``config`` (a model or a dict, as Prefect passes parameters) wins over
    ``config_path``; ``overrides`` (``key.path=value``) apply on top of either.
    """
    if config is None:
        return load_stage_config(model, config_path, overrides)
    base = config if isinstance(config, model) else load_stage_config(model, None, config)
    return override_config(base, overrides)


def cli_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """``python -m flows.<module>`` argument parser with the shared ``--config`` / ``--set`` options.

    Parsed values land in ``config_path`` and ``overrides`` (the flows' parameter names).
    """
    p = argparse.ArgumentParser(prog=f"python -m flows.{module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", dest="config_path", help="YAML/JSON/TOML file (a stage section or a whole pipeline file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    return p


def artifact_slug(text: str) -> str:
    """Prefect artifact keys (and job names): lower-case letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "run"
