"""Experiment configs in ``pipelines/configs/``: files, families, overrides; the schema is
:mod:`pipelines.schema`.

A file is one experiment, or a *family*: a config with a ``"matrix"`` of named axes whose values
override dotted keys of the shared config, expanded into one experiment per combination, named
``<file stem>_<value>_<value>...`` in axis order (``braille.json``: ``braille_felif_fp_v0``, ...)::

    "matrix": {"network": {"felif": {"about": "FeLIF outputs",
                                     "model.output.neuron": {"kind": "felif"}},
                           "lif":   {"model.output.neuron": {"kind": "lif"}}},
               "synapses": {"fp": {}, "rram": {"model.synapse.precision": "rram"}}}

(``about`` texts are appended to the description; later axes may set keys inside objects an
earlier axis wrote). An experiment is validated against the schema (defaults filled in) and
rejected *before any work starts*, the error naming every offending key path. The resolved
config (:class:`pipelines.schema.Experiment`) is what a run writes to ``config.json``
(:func:`dump`) and what a resumed run compares.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pydantic

from pipelines.schema import EXPERIMENTS, AnyExperiment

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_EXPERIMENT = "jsb_felif_bruno"


class ConfigError(ValueError):
    """A config that cannot be run; the message lists every problem."""


# unions tagged by "kind": the field, and its tags (pydantic puts the tag in an error's location)
_TAGGED = {"neuron": ("felif", "lif", "rlif"), "model": ("spiking", "lstm", "gru")}


def _errors(error: pydantic.ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        # a tagged union's tag (model.hidden.neuron.<felif>.x) is not a key the user wrote
        loc = [p for k, p in enumerate(loc) if not (k and p in _TAGGED.get(loc[k - 1], ()))]
        where = ".".join(loc) or "config"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key here (a misspelling, or an option of another kind of layer)"
        lines.append(f"{where}: {message}")
    return lines


def resolve(raw: dict, name: str | None = None) -> AnyExperiment:
    """Validate ``raw`` and fill in defaults; raise :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    task = raw.get("task")
    if task not in EXPERIMENTS:
        raise ConfigError(
            f"invalid config:\n  task: must be one of {list(EXPERIMENTS)}, got {task!r}"
        )
    raw = dict(raw)
    raw["name"] = raw.get("name") or name
    raw["group"] = raw.get("group") or task
    try:
        return EXPERIMENTS[task].model_validate(raw)
    except pydantic.ValidationError as error:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_errors(error))) from None


def use_device(config: AnyExperiment) -> AnyExperiment:
    """Make the config's device (else ``$BRUNO_DEVICE``, else the shipped one) this process's
    device (:mod:`bruno.devices`) and return the config naming it, so the run records what it
    used. A device that is not a usable directory raises :class:`bruno.devices.DeviceError`."""
    import os

    from bruno import devices

    spec = config.device or os.environ.get(devices.ENV)
    directory = devices.use(spec) if spec else None
    return config.model_copy(update={"device": devices.recorded(directory)})


def dump(config: AnyExperiment) -> dict[str, Any]:
    """The resolved config as JSON data (``config.json``); :func:`resolve` reads it back."""
    return config.model_dump(mode="json")


def what_runs(dumped: dict[str, Any]) -> dict[str, Any]:
    """A dumped config without its ``description``: what decides the run. Two runs are of the same
    experiment when these are equal (rewording a family's description changes no run)."""
    return {k: v for k, v in dumped.items() if k != "description"}


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a JSON object")
    return raw


def expand(raw: dict, stem: str, where: str = "config") -> dict[str, dict]:
    """The experiments of one config file: itself, or every combination of its ``matrix``."""
    if "matrix" not in raw:
        return {stem: raw}
    matrix = raw["matrix"]
    if (
        not isinstance(matrix, dict)
        or not matrix
        or not all(
            isinstance(values, dict)
            and values
            and all(isinstance(v, dict) for v in values.values())
            for values in matrix.values()
        )
    ):
        raise ConfigError(
            f"{where}: 'matrix' must map each axis to {{value name: {{dotted.key: value}}}}"
        )
    base = {key: value for key, value in raw.items() if key != "matrix"}
    combinations: list[tuple[list[str], list[dict]]] = [([], [])]
    for values in matrix.values():
        combinations = [
            (labels + [label], chosen + [changes])
            for labels, chosen in combinations
            for label, changes in values.items()
        ]
    experiments = {}
    for labels, chosen in combinations:
        config = copy.deepcopy(base)
        about = [config.get("description", "")]
        for changes in chosen:
            for key, value in changes.items():
                if key == "about":
                    about.append(value)
                else:
                    set_path(config, key, copy.deepcopy(value), where)
        config["description"] = " ".join(text for text in about if text)
        experiments["_".join([stem, *labels])] = config
    return experiments


def experiments() -> dict[str, tuple[Path, dict]]:
    """Every shipped experiment (families expanded): name -> (its file, raw config)."""
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        for name, raw in expand(_read_json(path), path.stem, str(path)).items():
            if name in found:
                raise ConfigError(f"experiment {name} is defined by {found[name][0]} and {path}")
            found[name] = (path, raw)
    return found


def find(name_or_path: str) -> tuple[Path, str, dict]:
    """(file, experiment name, raw config) of an experiment name or a config path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"no such config file: {path}")
        members = expand(_read_json(path), path.stem, str(path))
        if len(members) != 1:
            raise ConfigError(
                f"{path} is a family of {len(members)} experiments; name one: " + ", ".join(members)
            )
        ((name, raw),) = members.items()
        return path, name, raw
    known = experiments()
    if name_or_path not in known:
        raise ConfigError(f"unknown experiment '{name_or_path}'; known: {', '.join(known)}")
    path, raw = known[name_or_path]
    return path, name_or_path, raw


def load(name_or_path: str, overrides: list[str] | None = None) -> AnyExperiment:
    """Read, apply ``key.path=value`` overrides (JSON values), validate and resolve a config."""
    path, name, raw = find(name_or_path)
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return resolve(raw, name=name)
    except ConfigError as error:
        raise ConfigError(f"{path} ({name}): {error}") from None


def set_path(raw: dict, key: str, value: Any, where: str = "override") -> None:
    """Set the dotted ``key`` (``optim.lr``) of ``raw`` to ``value``."""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {key}: {part} is not an object")
    node[parts[-1]] = value


def apply_override(raw: dict, item: str) -> None:
    """``optim.lr=0.01`` / ``model.hidden.neuron.kind=lif`` / ``seeds=[1,2]`` (value parsed as
    JSON, or a bare string when it is not JSON)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key.path=value")
    key, text = item.split("=", 1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    set_path(raw, key, value, f"override '{item}'")


def list_experiments() -> list[str]:
    return sorted(experiments())
