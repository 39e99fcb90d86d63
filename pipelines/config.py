"""Experiment configs in ``pipelines/configs/``, strictly validated.

A file is one experiment, or a *family*: a config with a ``"matrix"`` of named axes whose values
override dotted keys of the shared config, expanded into one experiment per combination, named
``<file stem>_<value>_<value>...`` in axis order (``braille.json``: ``braille_felif_fp_v0``, ...)::

    "matrix": {"network": {"felif": {"about": "FeLIF outputs", "model.output_neuron": "felif"},
                           "lif":   {"model.output_neuron": "lif"}},
               "synapses": {"fp": {}, "rram": {"model.synapse.precision": "rram"}}}

(``about`` texts are appended to the description). An experiment is resolved against the schema
below (defaults filled in) and rejected *before any work starts* when it has an unknown key, a
value of the wrong type or out of range, or an option that means nothing for its network (a
FeLIF option in a network without FeLIF neurons, LIF options without LIF neurons). The error names
every offending key path. The resolved config is what a run writes to ``config.json``.
Enumerations (neurons, algorithms, coarse gradients, fine-path backends, precisions) are the
library's own.

Top level::

    name         experiment name (defaults to the file's stem, or the family's expansion)
    description  free text
    group        the report table it belongs to (defaults to the task)
    task         "jsb" | "braille"
    seeds        list of seeds; each seed is one run, results/train/<name>_s<seed>/
    data         task-specific data options
    model        network, neuron, algorithm, synapse precision, variability
    optim        optimiser, learning rate, batch size, epochs, gradient clipping
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from bruno import algorithms, kernels
from bruno.layers import NEURON_LAYERS
from bruno.synapses import PRECISIONS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_EXPERIMENT = "jsb_felif_bruno"

NEURONS = tuple(NEURON_LAYERS)
ALGORITHMS = algorithms.names()
OPTIMISERS = ("adamax", "adam", "sgd")


class ConfigError(ValueError):
    """A config that cannot be run; the message lists every problem."""


class _Field:
    def __init__(self, kind, default, choices=None, low=None, high=None, nullable=False, doc=""):
        self.kind, self.default, self.choices = kind, default, choices
        self.low, self.high, self.nullable, self.doc = low, high, nullable, doc

    def check(self, value, path: str, errors: list[str]):
        if value is None:
            if not self.nullable:
                errors.append(f"{path}: must not be null")
            return value
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind == "seeds":
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)
                or any(s < 0 for s in value)
                or len(set(value)) != len(value)
            ):
                errors.append(f"{path}: must be a non-empty list of distinct integers >= 0")
            return value
        if kind == "fractions":
            ok = (
                isinstance(value, list)
                and len(value) == 3
                and all(isinstance(f, int | float) and f >= 0 for f in value)
                and abs(sum(value) - 1.0) < 1e-9
                and value[0] > 0
                and value[2] > 0
            )
            if not ok:
                errors.append(
                    f"{path}: must be 3 non-negative numbers summing to 1 (got {value!r})"
                )
            return value
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            errors.append(f"{path}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
            return value
        if kind is float and not math.isfinite(value):
            errors.append(f"{path}: must be finite, got {value!r}")
            return value
        if self.choices is not None and value not in self.choices:
            errors.append(f"{path}: {value!r} is not one of {list(self.choices)}")
        if self.low is not None and value < self.low:
            errors.append(f"{path}: {value!r} is below the minimum {self.low}")
        if self.high is not None and value > self.high:
            errors.append(f"{path}: {value!r} is above the maximum {self.high}")
        return value


F = _Field

SYNAPSE = {
    "precision": F(str, "fp", PRECISIONS, doc="fp | 8bit | 4bit | 3bit | rram (calibrated 3-bit)"),
    "rram_preset": F(str, None, nullable=True, doc="path of an RRAM preset; null: the calibrated"),
    "device_variability": F(bool, True, doc="rram: sample device-to-device conductance spread"),
    "read_noise": F(bool, True, doc="rram: cycle-to-cycle read noise at every forward"),
    "bias": F(bool, True, doc="a full-precision bias per output (a constant input line)"),
}

LIF = {
    "tau_mem": F(float, 20e-3, low=1e-9, high=10.0, doc="LIF/RLIF membrane time constant (s)"),
    "tau_syn": F(float, 5e-3, low=0.0, high=10.0, doc="synaptic time constant (s); 0: none"),
    "threshold": F(float, 1.0, low=1e-9, high=1e6, doc="firing threshold (units of drive)"),
    "reset": F(str, "zero", ("zero", "subtract")),
    "surrogate_slope": F(float, 25.0, low=1e-6, high=1e6, doc="= bruno LIF_SLOPE"),
}

MODEL = {
    "kind": F(str, "spiking", ("spiking", "lstm")),
    "hidden": F(int, 150, low=1, high=100_000),
    "neuron": F(str, "felif", NEURONS, doc="hidden neurons (JSB) / hidden neurons (Braille)"),
    "output_neuron": F(str, None, NEURONS, nullable=True, doc="Braille output neurons"),
    "algorithm": F(str, "bruno", ALGORITHMS, doc="how FeLIF neurons are trained"),
    "coarse_gradient": F(
        str,
        "implicit",
        algorithms.COARSE_GRADIENTS,
        doc="bruno: the coarse step whose gradient is used ('euler': the SPEC's literal form)",
    ),
    "fine_backend": F(str, "auto", kernels.BACKENDS, doc="FeLIF fine path: auto | native | torch"),
    "fine_steps": F(int, 1000, low=1, high=1_000_000),
    "coarse_dt": F(float, 1e-3, low=1e-9, high=10.0),
    "variability_sigma": F(float, 0.0, low=0.0, high=1.0),
    "current_scale": F(float, 1e-9, low=1e-15, high=1.0, doc="A per unit of drive"),
    "felif_parameters": F(str, "calibrated", doc="'calibrated', 'paper', or a preset path"),
    "input_gain": F(float, 1.0, low=0.0, high=1e6, doc="initial scale of the input synapses"),
    "output_gain": F(float, 1.0, low=0.0, high=1e6, doc="Braille: scale of the output synapses"),
    "grad_window": F(
        int, None, low=1, nullable=True, doc="truncate gradients through neuron state to N steps"
    ),
    "count_scale": F(float, 1.0, low=1e-6, high=1e6, doc="Braille: logits = scale * counts"),
    "synapse": SYNAPSE,
    "lif": LIF,
}

OPTIM = {
    "name": F(str, "adamax", OPTIMISERS),
    "lr": F(float, 2e-3, low=0.0, high=10.0),
    "weight_decay": F(float, 0.0, low=0.0, high=1.0),
    "grad_clip": F(float, 1.0, low=0.0, high=1e6, nullable=True),
    "batch_size": F(int, 16, low=1, high=100_000),
    "epochs": F(int, 10, low=1, high=100_000),
    "eval_batch_size": F(int, 64, low=1, high=100_000),
    "on_nonfinite_grad": F(
        str, "stop", ("stop", "skip"), doc="stop the run, or skip that batch's update (counted)"
    ),
    "time_budget_s": F(
        float, None, low=1.0, nullable=True, doc="start no epoch that would end past this"
    ),
}

JSB_DATA = {
    "grid": F(str, "quarter", ("quarter", "8th", "16th")),
    "max_train": F(int, None, low=1, nullable=True, doc="use the first N training chorales"),
    "max_eval": F(int, None, low=1, nullable=True, doc="use the first N valid/test chorales"),
    "max_frames": F(int, None, low=2, nullable=True, doc="crop chorales to N frames"),
}

BRAILLE_DATA = {
    "n_steps": F(int, 130, low=1, high=100_000, doc="coarse steps per 1.3 s sample"),
    "split_seed": F(int, 0, low=0),
    "fractions": F("fractions", [0.7, 0.1, 0.2]),
    "max_train": F(int, None, low=1, nullable=True, doc="a stratified subset of N train samples"),
    "max_eval": F(int, None, low=1, nullable=True, doc="subset of N valid/test samples"),
}

TOP = {
    "name": F(str, None, nullable=True),
    "description": F(str, ""),
    "group": F(str, None, nullable=True, doc="report table this experiment belongs to"),
    "task": F(str, None, ("jsb", "braille")),
    "seeds": F("seeds", [0]),
    "model": MODEL,
    "optim": OPTIM,
}


def _resolve(schema: dict, given: Any, path: str, errors: list[str]) -> dict:
    if not isinstance(given, dict):
        errors.append(f"{path or 'config'}: expected an object, got {type(given).__name__}")
        given = {}
    unknown = sorted(set(given) - set(schema))
    for key in unknown:
        errors.append(f"{path + '.' if path else ''}{key}: unknown key (allowed: {sorted(schema)})")
    out = {}
    for key, spec in schema.items():
        where = f"{path}.{key}" if path else key
        if isinstance(spec, dict):
            out[key] = _resolve(spec, given.get(key, {}), where, errors)
        elif key in given:
            out[key] = spec.check(given[key], where, errors)
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


# Options that only a FeLIF layer reads, and the LIF/RLIF layers' own section.
FELIF_OPTIONS = (
    "algorithm",
    "coarse_gradient",
    "fine_backend",
    "fine_steps",
    "felif_parameters",
    "current_scale",
)


def _meaningless_options(model: dict) -> list[str]:
    """Options written in ``model`` that no layer of the network reads (a silent no-op otherwise:
    e.g. ``algorithm`` in a network without FeLIF neurons)."""
    kind = model.get("kind", MODEL["kind"].default)
    neurons = (
        set() if kind != "spiking" else {model.get("neuron", "felif"), model.get("output_neuron")}
    )
    errors = []
    if "felif" not in neurons:
        errors += [
            f"model.{key}: only FeLIF layers use it and this network has none; remove it"
            for key in FELIF_OPTIONS
            if key in model
        ]
    if not neurons & {"lif", "rlif"} and "lif" in model:
        errors.append("model.lif: only LIF/RLIF layers use it and this network has none; remove it")
    return errors


def resolve(raw: dict, name: str | None = None) -> dict:
    """Validate ``raw`` and fill in defaults; raise :class:`ConfigError` listing every problem."""
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    task = raw.get("task")
    if task not in ("jsb", "braille"):
        errors.append(f"task: must be 'jsb' or 'braille', got {task!r}")
    schema = dict(TOP)
    schema["data"] = BRAILLE_DATA if task == "braille" else JSB_DATA
    config = _resolve(schema, raw, "", errors)
    if config["name"] is None:
        config["name"] = name
    if config["group"] is None:
        config["group"] = task
    if not config["name"] or not all(c.isalnum() or c in "-_." for c in config["name"]):
        errors.append(f"name: {config['name']!r} must be non-empty and use only [A-Za-z0-9._-]")
    model = config["model"]
    if task == "braille" and model["kind"] == "lstm":
        errors.append("model.kind: 'lstm' is only defined for the jsb task")
    if task == "braille" and model["kind"] == "spiking" and model["output_neuron"] is None:
        errors.append("model.output_neuron: required for the braille task")
    if task == "jsb" and model["output_neuron"] is not None:
        errors.append("model.output_neuron: only for the braille task (JSB outputs are sigmoids)")
    if model["kind"] == "lstm" and model["synapse"]["precision"] != "fp":
        errors.append("model.synapse.precision: the LSTM reference is full precision only")
    errors += _meaningless_options(raw.get("model") if isinstance(raw.get("model"), dict) else {})
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return config


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


def load(name_or_path: str, overrides: list[str] | None = None) -> dict:
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
    """``optim.lr=0.01`` / ``model.neuron="lif"`` / ``seeds=[1,2]`` (value parsed as JSON, or a
    bare string when it is not JSON)."""
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
