"""What every flow shares: turning (config, config_path, overrides) into one typed config."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

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
