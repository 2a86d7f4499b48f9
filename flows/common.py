"""What every flow shares: choosing the config file at run time, and turning (config, config_path,
overrides) into one typed config.

The deployments carry no config path: each run chooses its config when it starts, from the
first of

1. the run's own parameters: ``config`` (a typed config) or ``config_path``;
2. the Prefect Variable ``bzpipe_config`` (:data:`CONFIG_VARIABLE`): what an operator sets to
   switch the whole stack, e.g. ``prefect variable set bzpipe_config
   flows/configs/paper-nsa-oli.yaml --overwrite`` (or ``bash infra/stack.sh config FILE``);
3. the environment variable ``BZPIPE_CONFIG`` (:data:`CONFIG_ENV`) of the worker / pod: an
   installation's default (a path inside the image, a mounted ConfigMap);
4. the offline demo, ``flows/configs/offline-demo.yaml`` (:data:`DEMO_CONFIG`).

A value is a path (YAML/JSON/TOML; relative paths are taken from the working directory,
then from the checkout), or a JSON object ``{"path": "...", "overrides": ["store_root=s3://..."]}``.
A value that names no file fails the run at once, with the name it looked for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prefect.cache_policies import NO_CACHE as _NO_CACHE
from pydantic import BaseModel

import flows.logging_setup  # noqa: F401  (bzpipe.* log lines into the Prefect UI; the one import of it)
from bzpipe.config import (
    PipelineConfig,
    apply_overrides,
    load_pipeline_config,
    load_stage_config,
    override_config,
    read_config_file,
)
from bzpipe.errors import ConfigError, is_retryable
from flows import server_watchdog
from flows.settings import FlowSettings, merge_settings, split_overrides, split_settings

#: every task's cache policy: Prefect's result cache is off, because repeat-safety is the store's
#: (a complete output is found by its manifest entry and skipped), not a cached task result
NO_CACHE = _NO_CACHE

server_watchdog.install()   # a flow killed with SIGKILL does not leave its temporary Prefect server running

C = TypeVar("C", bound=BaseModel)

REPO = Path(__file__).resolve().parents[1]
CONFIG_VARIABLE = "bzpipe_config"
CONFIG_ENV = "BZPIPE_CONFIG"
DEMO_CONFIG = "flows/configs/offline-demo.yaml"


@dataclass(frozen=True)
class ConfigChoice:
    """The config file a run uses, the overrides that came with it, and where the choice came from."""

    path: str
    source: str
    overrides: list[str] = field(default_factory=list)

    def describe(self) -> str:
        extra = f" with {self.overrides}" if self.overrides else ""
        return f"{self.path}{extra} (from {self.source})"


def _existing(path: str, source: str) -> str:
    """``path`` made absolute (working directory first, then the checkout), or a ConfigError."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO / p]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(f"config file {path!r} named by {source} does not exist (looked for {looked})")


def _parse_choice(value: Any, source: str) -> ConfigChoice:
    """A Variable / environment value: a path, or ``{"path": ..., "overrides": [...]}`` (also as JSON
    text)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"{source}: not a path and not valid JSON: {e}") from None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"path", "overrides"})
        path, overrides = value.get("path"), value.get("overrides") or []
        if unknown or not isinstance(path, str) or not path.strip() or not isinstance(overrides, list):
            raise ConfigError(f"{source}: expected a path or {{\"path\": \"...\", \"overrides\": [...]}}, "
                              f"got {json.dumps(value)[:200]}")
        return ConfigChoice(_existing(path.strip(), source), source, [str(o) for o in overrides])
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source} is set but empty or not a path: {value!r}")
    return ConfigChoice(_existing(value.strip(), source), source)


def variable_value(name: str = CONFIG_VARIABLE) -> Any:
    """The value of the Prefect Variable ``name`` (None when it does not exist)."""
    from prefect.variables import Variable

    return Variable.get(name)


def choose_config(config_path: str | None = None) -> ConfigChoice:
    """Which config file this run uses (see the module docstring for the order)."""
    if config_path:
        return ConfigChoice(_existing(config_path, "the parameter config_path"), "the parameter config_path")
    value = variable_value(CONFIG_VARIABLE)
    if value is not None:                # set, even to something blank: it must name a file
        return _parse_choice(value, f"the Prefect Variable {CONFIG_VARIABLE!r}")
    env = os.environ.get(CONFIG_ENV, "")
    if env.strip():
        return _parse_choice(env, f"the environment variable {CONFIG_ENV}")
    return ConfigChoice(str(REPO / DEMO_CONFIG), "the default: the offline demo")


def _log_choice(choice: ConfigChoice) -> None:
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger("bzpipe.flows")
    logger.info("config: %s", choice.describe())


def _for_stage(model: type[BaseModel], overrides: list[str]) -> list[str]:
    """The overrides that concern ``model``'s stage: those addressed to other stages of a pipeline
    file (``train.epochs=3`` for the ingest flow) are left out."""
    others = {name for name, f in PipelineConfig.model_fields.items() if f.annotation is not model}
    return [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in others]


def _stage_of(model: type[BaseModel]) -> str | None:
    return next((n for n, f in PipelineConfig.model_fields.items() if f.annotation is model), None)


def _in_file_form(overrides: list[str], stage: str | None, pipeline_file: bool) -> list[str]:
    """One stage's overrides, addressed as the file holds its keys: ``train.epochs=3`` in a pipeline
    file, ``epochs=3`` in a file of the stage alone."""
    stages = set(PipelineConfig.model_fields)
    out = []
    for o in overrides:
        head = o.partition("=")[0].strip().split(".")[0]
        if stage is None:
            out.append(o)
        elif pipeline_file:
            out.append(o if head in stages else f"{stage}.{o}")
        else:
            out.append(o.removeprefix(f"{stage}.") if head == stage else o)
    return out


def resolve_stage(model: type[C], config: C | dict[str, Any] | None = None, config_path: str | None = None,
                  overrides: list[str] | None = None,
                  settings: FlowSettings | dict[str, Any] | None = None) -> tuple[C, FlowSettings]:
    """The stage config a flow runs with, and the flows' infrastructure settings (:mod:`flows.settings`)
    from the same file sections.

    ``config`` (a model or a dict, as Prefect passes parameters) wins; without it the file
    comes from :func:`choose_config`.  ``settings`` (a flow parameter) wins over the file's.
    ``overrides`` (``key.path=value``) apply on top of both.
    """
    stage = _stage_of(model)
    if config is None:
        choice = choose_config(config_path)
        _log_choice(choice)
        data = read_config_file(choice.path)
        pipeline_file = any(s in data for s in PipelineConfig.model_fields)
        ovs = _in_file_form([*_for_stage(model, choice.overrides), *(overrides or [])], stage, pipeline_file)
        data, found = split_settings(apply_overrides(data, ovs), None if pipeline_file else stage)
        cfg = load_stage_config(model, choice.path, data=data)
    else:
        keep, found = split_overrides(overrides, stage)
        if isinstance(config, model):
            base, file_found = config, FlowSettings()
        else:
            data, file_found = split_settings(apply_overrides({}, config), stage)
            base = load_stage_config(model, None, data)
        cfg, found = override_config(base, keep), merge_settings(file_found, found)
    if settings is not None:
        given = settings if isinstance(settings, FlowSettings) else FlowSettings.model_validate(settings)
        found = merge_settings(given, split_overrides(overrides, stage)[1])
    return cfg, found


def resolve_config(model: type[C], config: C | dict[str, Any] | None = None,
                   config_path: str | None = None, overrides: list[str] | None = None) -> C:
    """The stage config a flow runs with (:func:`resolve_stage` without the flow settings)."""
    return resolve_stage(model, config, config_path, overrides)[0]


def resolve_pipeline(config: PipelineConfig | dict[str, Any] | None = None, config_path: str | None = None,
                     overrides: list[str] | None = None) -> tuple[PipelineConfig, FlowSettings]:
    """:func:`resolve_stage` for the whole-pipeline config."""
    if config is None:
        choice = choose_config(config_path)
        _log_choice(choice)
        data = apply_overrides(read_config_file(choice.path), [*choice.overrides, *(overrides or [])])
        data, found = split_settings(data)
        return load_pipeline_config(choice.path, data=data), found
    keep, found = split_overrides(overrides)
    if isinstance(config, PipelineConfig):
        return override_config(config, keep), found
    data, file_found = split_settings(json.loads(json.dumps(config, default=str)))
    return override_config(PipelineConfig.model_validate(data), keep), merge_settings(file_found, found)


def resolve_pipeline_config(config: PipelineConfig | dict[str, Any] | None = None,
                            config_path: str | None = None,
                            overrides: list[str] | None = None) -> PipelineConfig:
    """:func:`resolve_pipeline` without the flow settings."""
    return resolve_pipeline(config, config_path, overrides)[0]


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn`` of the flows' tasks: retry only what a retry can fix
    (:func:`bzpipe.errors.is_retryable`); a permanent error (a missing path, a full or read-only store,
    no credentials, a corrupt file, an unfinished model) fails the task at once, naming the path."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_retryable(exc)
    return True


def cli_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """``python -m flows.<module>`` argument parser with the shared ``--config`` / ``--set`` options.

    Parsed values land in ``config_path`` and ``overrides`` (the flows' parameter names).
    """
    p = argparse.ArgumentParser(prog=f"python -m flows.{module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", dest="config_path",
                   help="YAML/JSON/TOML file (a stage section or a whole pipeline file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    return p


def artifact_slug(text: str) -> str:
    """Prefect artifact keys (and job names): lower-case letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "run"
