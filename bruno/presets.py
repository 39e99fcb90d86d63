"""Calibrated device presets: one loader per device (committed preset, a user file, or defaults).

Schemas (written by ``calibration``; the major version must match, minor additions are accepted):

* ``bruno.felif-preset/1``: ``{"schema", "device": "felif", "parameters": {<FeLIFParameters field>:
  float, ... (a subset; the rest keep their defaults)}, "uncertainties", "variability": {"sigma",
  "fields"}, "fit", "provenance"}``
* ``bruno.rram-preset/1``: ``{"schema", "device": "rram", "read_voltage_V", "levels": [{
  "programming_current_A", "conductance_mean_S", "conductance_std_S", "conductance_samples_S"}, x8,
  strictly increasing means], "cycle_to_cycle_read_noise_rel", "conductance_law", "provenance"}``

``path=None`` means ``$BRUNO_PRESETS_DIR/<device>.json`` (an error when missing there) or else the
committed preset ``calibration/presets/<device>.json`` when it exists, else the defaults: SPEC §3
for FeLIF, and :data:`FALLBACK_RRAM_LEVELS_S` for RRAM (clearly marked ``provenance.source =
"fallback"``) so that everything runs before calibration."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from bruno.felif import FeLIFParameters

FELIF_SCHEMA = "bruno.felif-preset"
RRAM_SCHEMA = "bruno.rram-preset"
SUPPORTED_MAJOR = 1

# SPEC §3: the FeLIF fields drawn per neuron for device-to-device variability.
DEFAULT_VARIABILITY_FIELDS = (
    "area",
    "activation_field",
    "saturation_polarization",
    "leak_current_density",
    "ferroelectric_thickness",
    "interlayer_thickness",
    "input_gain",
)
DEFAULT_VARIABILITY_SIGMA = 0.1

# Uncalibrated stand-in for the eight 3-bit RRAM levels (S): read at 0.2 V, programming currents
# 50–400 µA, conductance roughly proportional to the compliance current (the usual filamentary
# behaviour), 5 % relative device-to-device spread, 2 % read noise. Replaced by
# calibration/presets/rram.json once `make calibrate` has run.
FALLBACK_RRAM_CURRENTS_A = tuple(50e-6 * (k + 1) for k in range(8))
FALLBACK_RRAM_LEVELS_S = tuple(20e-6 * (k + 1) for k in range(8))
FALLBACK_RRAM_REL_STD = 0.05
FALLBACK_RRAM_READ_NOISE = 0.02


def presets_dir() -> Path:
    """``$BRUNO_PRESETS_DIR`` or the repository's ``calibration/presets``."""
    override = os.environ.get("BRUNO_PRESETS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "calibration" / "presets"


class PresetError(ValueError):
    """A preset file that cannot be used (wrong schema, version, device or values)."""


def _require_if_chosen(path: Path) -> None:
    """A preset directory the user chose ($BRUNO_PRESETS_DIR) must hold the preset: falling back
    to defaults there would train on devices nobody calibrated without saying so."""
    if os.environ.get("BRUNO_PRESETS_DIR"):
        raise PresetError(
            f"{path}: no such preset in $BRUNO_PRESETS_DIR; calibrate into that directory "
            f"(python -m calibration calibrate {path.stem} --presets {path.parent}) or unset "
            "BRUNO_PRESETS_DIR to use the committed presets"
        )


def _read(path: Path, schema: str, device: str) -> dict[str, Any]:
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PresetError(f"{path}: no such preset file") from None
    except (OSError, ValueError) as error:
        raise PresetError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(payload, dict):
        raise PresetError(f"{path}: a preset is a JSON object")
    found = payload.get("schema")
    if not isinstance(found, str) or "/" not in found:
        raise PresetError(
            f"{path}: missing or malformed 'schema' (expected '{schema}/{SUPPORTED_MAJOR}')"
        )
    name, _, version = found.partition("/")
    if name != schema:
        raise PresetError(f"{path}: schema '{found}' is not a {device} preset ('{schema}/...')")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise PresetError(f"{path}: unreadable schema version '{version}'") from None
    if major != SUPPORTED_MAJOR:
        raise PresetError(
            f"{path}: schema version {version} is not supported by this bruno "
            f"(reads {schema}/{SUPPORTED_MAJOR}.x); recalibrate or upgrade"
        )
    if payload.get("device", device) != device:
        raise PresetError(f"{path}: device is {payload.get('device')!r}, expected {device!r}")
    return payload


def _finite(path: Path, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PresetError(f"{path}: {name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class FeLIFPreset:
    """A FeLIF preset: parameters plus the variability and provenance that came with it."""

    parameters: FeLIFParameters
    variability_sigma: float = DEFAULT_VARIABILITY_SIGMA
    variability_fields: tuple[str, ...] = DEFAULT_VARIABILITY_FIELDS
    source: str = "defaults"
    uncertainties: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)


def validate_felif_parameters(p: FeLIFParameters, where: str = "FeLIF parameters") -> None:
    """Refuse non-finite values and non-positive physical magnitudes."""
    import torch

    positive = {
        "area",
        "ferroelectric_thickness",
        "interlayer_thickness",
        "ferroelectric_permittivity",
        "interlayer_permittivity",
        "activation_field",
        "saturation_polarization",
        "switching_time_constant",
        "switching_exponent",
        "leak_thermal_voltage",
        "soft_field",
    }
    non_negative = {"leak_current_density", "parasitic_capacitance", "discharge_current"}
    for name in p.field_names():
        value = torch.as_tensor(getattr(p, name))
        if not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{where}: {name} must be a number or a float tensor")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} contains NaN or Inf")
        if name in positive and not bool((value > 0).all()):
            raise ValueError(f"{where}: {name} must be > 0")
        if name in non_negative and not bool((value >= 0).all()):
            raise ValueError(f"{where}: {name} must be >= 0")


def load_felif_preset(path: str | Path | None = None) -> FeLIFPreset:
    """The full FeLIF preset (see the module docstring for which file ``path=None`` reads)."""
    if path is None:
        path = presets_dir() / "felif.json"
        if not path.exists():
            _require_if_chosen(path)
            return FeLIFPreset(parameters=FeLIFParameters())
    path = Path(path)
    payload = _read(path, FELIF_SCHEMA, "felif")
    values = payload.get("parameters", {})
    if not isinstance(values, dict):
        raise PresetError(f"{path}: 'parameters' must be an object")
    known = set(FeLIFParameters().field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise PresetError(f"{path}: unknown FeLIF parameter(s) {unknown}; known: {sorted(known)}")
    parameters = FeLIFParameters(**{k: _finite(path, k, v) for k, v in values.items()})
    try:
        validate_felif_parameters(parameters, str(path))
    except (TypeError, ValueError) as error:
        raise PresetError(str(error)) from None
    variability = payload.get("variability") or {}
    sigma = _finite(path, "variability.sigma", variability.get("sigma", DEFAULT_VARIABILITY_SIGMA))
    if sigma < 0:
        raise PresetError(f"{path}: variability.sigma must be >= 0")
    fields = tuple(variability.get("fields", DEFAULT_VARIABILITY_FIELDS))
    bad = sorted(set(fields) - known)
    if bad:
        raise PresetError(f"{path}: variability.fields has unknown name(s) {bad}")
    return FeLIFPreset(
        parameters=parameters,
        variability_sigma=sigma,
        variability_fields=fields,
        source=str(path),
        uncertainties=dict(payload.get("uncertainties") or {}),
        provenance=dict(payload.get("provenance") or {}),
    )


def load_felif_parameters(path: str | Path | None = None) -> FeLIFParameters:
    """FeLIF parameters from ``path``, the committed calibrated preset, or SPEC defaults."""
    return load_felif_preset(path).parameters


@dataclasses.dataclass(frozen=True)
class RRAMLevel:
    programming_current_A: float
    conductance_mean_S: float
    conductance_std_S: float
    conductance_samples_S: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class RRAMPreset:
    """Eight (3-bit) programmable conductance levels of the RRAM synapse and its read noise."""

    levels: tuple[RRAMLevel, ...]
    read_voltage_V: float = 0.2
    cycle_to_cycle_read_noise_rel: float = FALLBACK_RRAM_READ_NOISE
    conductance_law: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)
    source: str = "fallback"

    @property
    def means(self) -> tuple[float, ...]:
        return tuple(level.conductance_mean_S for level in self.levels)

    @property
    def stds(self) -> tuple[float, ...]:
        return tuple(level.conductance_std_S for level in self.levels)


def fallback_rram_preset() -> RRAMPreset:
    levels = tuple(
        RRAMLevel(current, g, FALLBACK_RRAM_REL_STD * g)
        for current, g in zip(FALLBACK_RRAM_CURRENTS_A, FALLBACK_RRAM_LEVELS_S, strict=True)
    )
    return RRAMPreset(
        levels=levels,
        provenance={"source": "fallback", "note": "uncalibrated stand-in; run `make calibrate`"},
    )


def load_rram_preset(path: str | Path | None = None) -> RRAMPreset:
    """RRAM levels from ``path``, the committed calibrated preset, or the documented fallback."""
    if path is None:
        path = presets_dir() / "rram.json"
        if not path.exists():
            _require_if_chosen(path)
            return fallback_rram_preset()
    path = Path(path)
    payload = _read(path, RRAM_SCHEMA, "rram")
    raw_levels = payload.get("levels")
    if not isinstance(raw_levels, list) or len(raw_levels) < 2:
        raise PresetError(f"{path}: 'levels' must be a list of at least 2 levels (3-bit: 8)")
    levels = []
    for k, level in enumerate(raw_levels):
        if not isinstance(level, dict):
            raise PresetError(f"{path}: levels[{k}] must be an object")
        try:
            mean = _finite(path, f"levels[{k}].conductance_mean_S", level["conductance_mean_S"])
            std = _finite(
                path, f"levels[{k}].conductance_std_S", level.get("conductance_std_S", 0.0)
            )
            current = _finite(
                path, f"levels[{k}].programming_current_A", level.get("programming_current_A", 0.0)
            )
        except KeyError as error:
            raise PresetError(f"{path}: levels[{k}] lacks {error}") from None
        samples = tuple(
            _finite(path, f"levels[{k}].conductance_samples_S", s)
            for s in level.get("conductance_samples_S", []) or []
        )
        if mean <= 0 or std < 0 or any(s <= 0 for s in samples):
            raise PresetError(f"{path}: levels[{k}] needs a positive mean/samples and std >= 0")
        levels.append(RRAMLevel(current, mean, std, samples))
    means = [level.conductance_mean_S for level in levels]
    if any(b <= a for a, b in zip(means, means[1:], strict=False)):
        raise PresetError(f"{path}: level means must be strictly increasing, got {means}")
    noise = _finite(
        path, "cycle_to_cycle_read_noise_rel", payload.get("cycle_to_cycle_read_noise_rel", 0.0)
    )
    if noise < 0:
        raise PresetError(f"{path}: cycle_to_cycle_read_noise_rel must be >= 0")
    return RRAMPreset(
        levels=tuple(levels),
        read_voltage_V=_finite(path, "read_voltage_V", payload.get("read_voltage_V", 0.2)),
        cycle_to_cycle_read_noise_rel=noise,
        conductance_law=dict(payload.get("conductance_law") or {}),
        provenance=dict(payload.get("provenance") or {}),
        source=str(path),
    )
