"""Loading configs: files, dotted-key overrides, the pipeline config that holds every stage."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bzpipe.config.base import check_blind_zone
from bzpipe.config.build import BuildConfig
from bzpipe.config.evaluate import EvalConfig
from bzpipe.config.infer import InferConfig
from bzpipe.config.ingest import ERA5_INGEST_KEYS, IngestConfig
from bzpipe.config.train import TrainConfig, seed_runs
from bzpipe.errors import ConfigError


class PipelineConfig(BaseModel):
    """All stages of one end-to-end run."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    infer: InferConfig = Field(default_factory=InferConfig)

    @model_validator(mode="after")
    def _stages_fit_the_grid(self) -> PipelineConfig:
        """What one stage asks of the grid and patches the build makes must fit them."""
        g, p, t = self.build.grid, self.build.patch, self.train
        rows = p.blind_zone_rows
        for where, extra in (("train.ramp_max_rows", t.ramp_max_rows),
                             ("train.val_ramp_rows", t.val_ramp_rows),
                             ("evaluate.ramp_rows", self.evaluate.ramp_rows)):
            if rows + extra >= g.n_heights:
                raise ValueError(f"{where}={extra}: the blind zone ({rows} rows) plus {extra} ramp rows "
                                 f"hides all {g.n_heights} rows of the grid")
        check_blind_zone(self.infer.blind_zone_m, g.n_heights, g.top_m, trained_rows=rows,
                         ramp_rows=t.ramp_max_rows if t.ramp_hidden else 0)   # a visible ramp hides no row
        return self


_SHARED_KEYS = ("store_root", "sites", "start", "end", "months", "seed")
_STAGES = ("ingest", "build", "train", "evaluate", "infer")

C = TypeVar("C", bound=BaseModel)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML file into a plain mapping."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror})") from e
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.') or 'yaml'}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, _, raw = item.partition("=")
    path = [k for k in key.strip().split(".") if k]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
    return path, value


def _str_keys(x: Any) -> Any:
    if isinstance(x, dict):
        return {(k if isinstance(k, str) else str(k)): _str_keys(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_str_keys(v) for v in x]
    return x


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-key overrides applied (YAML's date keys, e.g. of
    ``hours_per_day_from``, become ISO strings, which the config fields parse back)."""
    out = json.loads(json.dumps(_str_keys(data), default=str))
    if not overrides:
        return out
    items = ([parse_override(o) for o in overrides] if isinstance(overrides, list)
             else [(k.split("."), v) for k, v in overrides.items()])
    for path, value in items:
        node = out
        for k in path[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {k} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _hand_down(data: dict[str, Any]) -> dict[str, Any]:
    shared = {k: data.pop(k) for k in _SHARED_KEYS if k in data}
    for stage in _STAGES:
        section = data.setdefault(stage, {})
        if not isinstance(section, dict):
            raise ConfigError(f"section {stage!r} must be a mapping")
        fields = _stage_model(stage).model_fields
        for k, v in shared.items():
            if k in fields:
                section.setdefault(k, v)
    # later stages read what earlier ones wrote: link their names unless set explicitly
    version = data["build"].get("version")
    run = data["train"].get("run_name")
    for stage, key, value in (("train", "dataset", version), ("evaluate", "dataset", version),
                              ("evaluate", "run_name", run), ("infer", "run_name", run)):
        if value is not None:
            data[stage].setdefault(key, value)
    # the evaluation scores every seed the training trains
    seeds = data["train"].get("seeds")
    if isinstance(seeds, list) and len(seeds) > 1:
        names = [r for r, _ in seed_runs(str(data["train"].get("run_name", "unet3p")), seeds)][1:]
        data["evaluate"].setdefault("seed_runs", names)
    # ERA-5 months fetched at inference are requested as the ingest stage requests them
    era5 = {k: data["ingest"][k] for k in ERA5_INGEST_KEYS if k in data["ingest"]}
    if era5 and isinstance(data["infer"].get("era5_ingest", {}), dict):
        data["infer"]["era5_ingest"] = {**era5, **data["infer"].get("era5_ingest", {})}
    return data


def _stage_model(stage: str) -> type[BaseModel]:
    return PipelineConfig.model_fields[stage].annotation  # type: ignore[return-value]


def _validate(model: type[C], data: dict[str, Any], origin: str) -> C:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}".removeprefix(": ")
                 for err in e.errors()]   # removeprefix: a whole-config check
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_pipeline_config(path: str | Path | None = None,
                         overrides: list[str] | dict[str, Any] | None = None, *,
                         data: dict[str, Any] | None = None) -> PipelineConfig:
    """Load the whole-pipeline configuration from ``path`` (optional) plus overrides.

    ``data``: the file's mapping, read already (by a caller that set some keys aside); then
    ``path`` only names the origin in error messages.
    """
    data = dict(data) if data is not None else read_config_file(path) if path else {}
    data = apply_overrides(data, overrides)
    return _validate(PipelineConfig, _hand_down(data), str(path or "<defaults>"))


def load_stage_config(model: type[C], path: str | Path | None = None,
                      overrides: list[str] | dict[str, Any] | None = None, *,
                      data: dict[str, Any] | None = None) -> C:
    """Load one stage's config.

    ``path`` may hold either that stage's fields at top level or a whole
    pipeline file (then the stage's section, with the shared keys handed down,
    is used).  ``data``: the file's mapping, read already (as in :func:`load_pipeline_config`).
    """
    data = dict(data) if data is not None else read_config_file(path) if path else {}
    stage = next((s for s in _STAGES if _stage_model(s) is model), None)
    if stage and (stage in data or any(s in data for s in _STAGES)):
        data = _hand_down(data).get(stage, {})
        if overrides:
            stripped: list[str] | dict[str, Any]
            if isinstance(overrides, list):
                stripped = [o[len(stage) + 1:] if o.startswith(stage + ".") else o for o in overrides]
            else:
                stripped = {(k[len(stage) + 1:] if k.startswith(stage + ".") else k): v
                            for k, v in overrides.items()}
            overrides = stripped
    data = apply_overrides(data, overrides)
    return _validate(model, data, str(path or "<defaults>"))


def config_record(config: BaseModel) -> dict[str, Any]:
    """The JSON-able record of a config that every output stores."""
    return {"type": type(config).__name__, "values": config.model_dump(mode="json")}


def override_config(config: C, overrides: list[str] | dict[str, Any] | None) -> C:
    """A copy of ``config`` with dotted-key overrides applied and validated."""
    if not overrides:
        return config
    data = apply_overrides(config.model_dump(mode="json"), overrides)
    return _validate(type(config), data, "<overrides>")
