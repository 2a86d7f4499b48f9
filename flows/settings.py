"""Infrastructure settings of the flows: where credentials live in Prefect, where training jobs run.

They are not the library's (:mod:`bzpipe.config` holds what a stage computes); they stay in
the same YAML sections and answer to the same keys as before, so a config file reads::

    ingest:
      kazr_source: arm
      arm_token_secret: my-arm-token        # a Prefect Secret block name: IngestSecrets
    train:
      epochs: 40
      backend: slurm
      slurm_partition: gpu                  # a SLURM field: TrainLaunch

and ``--set train.slurm_partition=gpu`` works as it always did.  :func:`split_settings` takes
these keys out of a config mapping before the library validates the rest; the flows get them
as one :class:`FlowSettings`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bzpipe.errors import ConfigError


class IngestSecrets(BaseModel):
    """Names of the Prefect Secret blocks the flows read a credential from when the environment
    has none (section ``ingest``)."""

    model_config = ConfigDict(extra="forbid")

    arm_username_secret: str = Field("arm-username", description="Prefect Secret block: ARM Live user name")
    arm_token_secret: str = Field("arm-token", description="Prefect Secret block: ARM Live token")
    cds_key_secret: str = Field("cds-api-key", description="Prefect Secret block: CDS API key")


class TrainLaunch(BaseModel):
    """Where and how the cluster backends of the train flow start a training job (section ``train``)."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field("bzpipe:latest", description="container image (kubernetes backend)")
    k8s_namespace: str = Field("default", description="namespace of the training Job (kubernetes backend)")
    slurm_partition: str | None = Field(None, description="sbatch --partition (slurm backend)")
    slurm_time: str = Field("24:00:00", description="sbatch --time (slurm backend)")
    wait: bool = Field(True, description="cluster backends: block until the job ends")
    max_wait_h: float = Field(72.0, gt=0, description=(
        "cluster backends with wait: give up following the job after this many hours"))


class FlowSettings(BaseModel):
    """Every infrastructure setting of one run, by config section."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestSecrets = Field(default_factory=IngestSecrets)
    train: TrainLaunch = Field(default_factory=TrainLaunch)


#: the section of FlowSettings each config section's flow keys belong to
_SECTIONS: dict[str, type[BaseModel]] = {"ingest": IngestSecrets, "train": TrainLaunch}


def _pop(section: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return {k: section.pop(k) for k in list(section) if k in model.model_fields}


def _era5_secret(section: dict[str, Any]) -> dict[str, Any]:
    """``infer.era5_ingest.cds_key_secret``: the CDS key block of the ERA-5 that inference fetches."""
    era5 = section.get("era5_ingest")
    if isinstance(era5, dict) and "cds_key_secret" in era5:
        return {"cds_key_secret": era5.pop("cds_key_secret")}
    return {}


def split_settings(data: dict[str, Any], stage: str | None = None) -> tuple[dict[str, Any], FlowSettings]:
    """Take the flows' keys out of ``data`` (changed in place, and returned) and return them as
    :class:`FlowSettings`.

    ``data`` is a whole pipeline mapping (``stage`` None: sections ``ingest``, ``train``, ...) or
    the mapping of the one stage ``stage`` (``"ingest"``, ``"train"``, ``"infer"``, ...).
    """
    found: dict[str, dict[str, Any]] = {"ingest": {}, "train": {}}
    sections = ({s: data.get(s) for s in ("ingest", "train", "infer")} if stage is None else {stage: data})
    for name, section in sections.items():
        if not isinstance(section, dict):
            continue
        if name in _SECTIONS:
            found[name].update(_pop(section, _SECTIONS[name]))
        if name == "infer":
            for k, v in _era5_secret(section).items():
                found["ingest"].setdefault(k, v)
    try:
        return data, FlowSettings.model_validate(found)
    except ValueError as e:
        raise ConfigError(f"invalid flow settings: {e}") from None


def _is_flow_key(section: str, rest: list[str]) -> bool:
    if section in _SECTIONS and len(rest) == 1:
        return rest[0] in _SECTIONS[section].model_fields
    return section == "infer" and rest == ["era5_ingest", "cds_key_secret"]


def split_overrides(overrides: list[str] | None, stage: str | None = None) -> tuple[list[str], FlowSettings]:
    """Overrides (``key.path=value``) split into the library's and the flows' settings: of a whole
    pipeline (``stage`` None: ``train.image=...``) or of one stage (``image=...`` or
    ``train.image=...`` for the train flow)."""
    from bzpipe.config import apply_overrides, parse_override

    keep, mine = [], []
    for o in overrides or []:
        path, _ = parse_override(o)
        if stage is None:
            section, rest = path[0], path[1:]
        else:
            section, rest = stage, (path[1:] if len(path) > 1 and path[0] == stage else path)
        if _is_flow_key(section, rest):
            mine.append(f"{section}.{'.'.join(rest)}={o.partition('=')[2]}")
        else:
            keep.append(o)
    return keep, split_settings(apply_overrides({}, mine))[1]


def merge_settings(base: FlowSettings, top: FlowSettings) -> FlowSettings:
    """``base`` with the fields ``top`` sets explicitly put on top."""
    update = {name: getattr(base, name).model_copy(update=getattr(top, name).model_dump(
        exclude_unset=True)) for name in FlowSettings.model_fields}
    return FlowSettings(**update)
