"""Switch every deployment of a Prefect server to another config, without editing a file.

    python -m flows.config_switch                                   # show what runs use now
    python -m flows.config_switch flows/configs/paper-nsa-oli.yaml  # validate it, then use it
    python -m flows.config_switch FILE --set store_root=s3://bucket/bzpipe   # with overrides
    python -m flows.config_switch --demo                            # back to the offline demo

(``bash infra/stack.sh config ...`` runs this against the local stack.)  The file is loaded and
validated as a whole-pipeline config first (with the overrides); only then is the Prefect
Variable ``bzpipe_config`` set, so a typo never reaches the runs.  Every run started afterwards
(scheduled, event-triggered or by hand) reads the Variable when it starts (:mod:`flows.common`);
runs already going keep the config they started with.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bzpipe.config import load_pipeline_config
from bzpipe.errors import ConfigError
from flows.common import CONFIG_ENV, CONFIG_VARIABLE, REPO, choose_config


def variable_value_for(path: str, overrides: Sequence[str] = ()) -> tuple[Any, str]:
    """The Variable value for ``path`` (+ overrides) and the file it names, after validating both.

    A file inside the checkout is stored relative to it (it resolves in every copy of the
    checkout: the local stack, the images' /opt/bzpipe); another file by its absolute path.
    """
    p = Path(path).expanduser()
    found = next((c for c in ([p] if p.is_absolute() else [Path.cwd() / p, REPO / p]) if c.is_file()), None)
    if found is None:
        raise ConfigError(f"config file {path!r} does not exist")
    found = found.resolve()
    load_pipeline_config(found, list(overrides))          # raises ConfigError naming the bad field
    try:
        stored = str(found.relative_to(REPO))
    except ValueError:
        stored = str(found)
    value: Any = {"path": stored, "overrides": list(overrides)} if overrides else stored
    return value, str(found)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.config_switch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?",
                   help="config file (YAML/JSON/TOML), relative to the checkout or absolute")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value for every run, e.g. --set store_root=s3://bucket/bzpipe")
    p.add_argument("--demo", action="store_true",
                   help=f"remove the Variable {CONFIG_VARIABLE}: back to the default")
    a = p.parse_args(argv)
    from prefect.variables import Variable

    try:
        if a.demo:
            Variable.unset(CONFIG_VARIABLE)
        elif a.path:
            value, found = variable_value_for(a.path, a.overrides)
            Variable.set(CONFIG_VARIABLE, value, overwrite=True)
            print(f"Prefect Variable {CONFIG_VARIABLE} = {value!r} (validated: {found})")
        elif a.overrides:
            p.error("--set needs a config file")
        print(f"runs now use: {choose_config().describe()}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.path and not a.demo:
        print(f"(order: a run's own config / config_path parameter, the Prefect Variable {CONFIG_VARIABLE}, "
              f"${CONFIG_ENV} of the worker, the offline demo)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
