"""Calibrated device presets: the one module that owns their schema, validation, write and read.

Calibration (:mod:`calibration`) builds a :class:`FeLIFPreset` / :class:`RRAMPreset` and writes it
with :func:`write_preset`; the trainer's layers read it with :func:`load_felif_preset` /
:func:`load_rram_preset`. ``to_payload`` and the loaders are symmetric: what is written reads back
to an equal object (a test pins this).

Schemas (the major version must match; minor additions are accepted)::

    bruno.felif-preset/1  {"schema", "device": "felif",
                           "parameters": {<FeLIFParameters field>: float, ...},
                           "variability": {"sigma", "fields"},   # what the layers draw per neuron
                           "fit": {...},         # optional: the lmfit record (below)
                           "provenance": {...}}
    bruno.rram-preset/1.1 {"schema", "device": "rram", "read_voltage_V",
                           "levels": [{"programming_current_A", "conductance_mean_S",
                                       "conductance_std_S", "conductance_samples_S"}, ...],
                           "cycle_to_cycle_read_noise_rel", "conductance_law",
                           "reads": [{"read_voltage_V", "levels", "conductance_law"}, ...],
                           "provenance"}

An RRAM preset's ``levels`` and ``conductance_law`` are those read at ``read_voltage_V`` (the
default 0.2 V); ``reads`` (added in 1.1) holds them at every supported read voltage, increasing,
with the Monte-Carlo devices in the same order at each, and :meth:`RRAMPreset.at_read_voltage`
gives the preset read at another voltage. A 1.0 preset (no ``reads``) reads as before and supports
its one read voltage; asking it for another is an error that says to recalibrate.

The FeLIF fit is stored once: ``fit.lmfit_params`` is lmfit's ``Parameters.dumps()`` (values,
standard errors and correlations in fit units, read back with ``Parameters.loads``) and
``fit.variables`` maps each FeLIF field to its lmfit name and unit; :attr:`FeLIFPreset.
uncertainties` and :attr:`FeLIFPreset.correlations` are derived from them.

Where presets live (:func:`presets_dir`): ``$BRUNO_PRESETS_DIR`` when set (a preset missing there
is an error), else a chosen device directory's ``presets/`` (:mod:`bruno.devices`; missing there
is an error too), else this package's directory, which holds the calibrated presets of the shipped
device (package data, written by ``make calibrate``). Without a preset file the defaults apply:
SPEC §3 for FeLIF and :data:`FALLBACK_RRAM_LEVELS_S` for RRAM (``source = "fallback"``), so that
everything runs before calibration."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from bruno import devices
from bruno.felif import FeLIFParameters

FELIF_SCHEMA = "bruno.felif-preset"
RRAM_SCHEMA = "bruno.rram-preset"
SUPPORTED_MAJOR = 1
#: The RRAM schema's minor version this bruno writes (1.1: ``reads``, the per-read-voltage levels).
RRAM_SCHEMA_MINOR = 1
#: The schema string an RRAM preset this bruno writes carries.
RRAM_SCHEMA_WRITTEN = f"{RRAM_SCHEMA}/{SUPPORTED_MAJOR}.{RRAM_SCHEMA_MINOR}"

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
# bruno/presets/rram.json once `make calibrate` has run.
FALLBACK_RRAM_CURRENTS_A = tuple(50e-6 * (k + 1) for k in range(8))
FALLBACK_RRAM_LEVELS_S = tuple(20e-6 * (k + 1) for k in range(8))
FALLBACK_RRAM_REL_STD = 0.05
FALLBACK_RRAM_READ_NOISE = 0.02


#: The calibrated presets of the shipped device: this package's data.
COMMITTED_DIR = Path(__file__).resolve().parent


def presets_dir() -> Path:
    """``$BRUNO_PRESETS_DIR``, else the chosen device directory's ``presets/``
    (:mod:`bruno.devices`), else :data:`COMMITTED_DIR` (module docstring)."""
    override = os.environ.get("BRUNO_PRESETS_DIR")
    if override:
        return Path(override)
    return devices.presets_dir() or COMMITTED_DIR


def _default_path(device: str) -> Path:
    """The preset ``path=None`` reads: in :func:`presets_dir`; but a device directory that takes
    every ``device`` netlist from the shipped device and has no preset of its own takes the
    committed one (the same circuit calibrates to the same preset)."""
    path = presets_dir() / f"{device}.json"
    chosen = devices.presets_dir()
    if not path.exists() and path.parent == chosen and not devices.owns(device):
        return COMMITTED_DIR / path.name
    return path


class PresetError(ValueError):
    """A preset file that cannot be used (wrong schema, version, device or values)."""


def _require_if_chosen(path: Path) -> None:
    """A preset directory the user chose ($BRUNO_PRESETS_DIR) must hold the preset: falling back
    to defaults there would train on devices nobody calibrated without saying so. So must a
    chosen device directory."""
    if devices.device_dir() is not None and not os.environ.get("BRUNO_PRESETS_DIR"):
        raise PresetError(devices.not_calibrated(path))
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
        chosen = devices.device_dir()
        if chosen is not None and Path(path).parent == chosen / "presets":
            raise PresetError(devices.not_calibrated(path)) from None
        raise PresetError(
            f"{path}: no such preset file; create it with `make calibrate` "
            "(python -m calibration calibrate <device> --presets DIR)"
        ) from None
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


def _section(path: Path, payload: dict, name: str, required: bool = False) -> dict:
    if required and name not in payload:
        raise PresetError(f"{path}: the '{name}' section is missing (where the preset came from)")
    value = payload.get(name, {})
    if not isinstance(value, dict):
        raise PresetError(f"{path}: '{name}' must be an object")
    return dict(value)


def _finite(path: Path, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PresetError(f"{path}: {name} must be a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class FeLIFPreset:
    """A FeLIF preset: compact-model parameters, the device-to-device variability the layers draw
    (``variability_sigma`` over ``variability_fields``), the fit record and provenance."""

    parameters: FeLIFParameters
    variability_sigma: float = DEFAULT_VARIABILITY_SIGMA
    variability_fields: tuple[str, ...] = DEFAULT_VARIABILITY_FIELDS
    fit: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)
    source: str = "defaults"

    def _fit_parameters(self):
        """The fit's lmfit ``Parameters`` (fit units), or None without a fit record."""
        dumped = self.fit.get("lmfit_params")
        if not dumped:
            return None
        import lmfit

        return lmfit.Parameters().loads(dumped)

    @property
    def uncertainties(self) -> dict[str, float | None]:
        """1-sigma standard errors of the fitted fields (SI): from the fit's lmfit Parameters, and
        for the leak from its own fit to the clamped membrane (``fit.leak.stderr_SI``)."""
        params = self._fit_parameters()
        out: dict[str, float | None] = {
            field: float(error) if isinstance(error, int | float) and math.isfinite(error) else None
            for field, error in ((self.fit.get("leak") or {}).get("stderr_SI") or {}).items()
        }
        for field, var in (self.fit.get("variables") or {}).items():
            par = None if params is None else params.get(var["lmfit_name"])
            if par is None or par.stderr is None or not math.isfinite(par.stderr):
                out[field] = None
            elif var.get("log10"):  # d(10^x) = 10^x ln(10) dx
                out[field] = float(10.0**par.value * math.log(10.0) * par.stderr)
            else:
                out[field] = float(par.stderr * var["unit_SI"])
        return out

    @property
    def correlations(self) -> dict[str, dict[str, float]]:
        """Correlation coefficients between fitted fields (lmfit's, by FeLIF field name)."""
        params = self._fit_parameters()
        variables = self.fit.get("variables") or {}
        field_of = {var["lmfit_name"]: field for field, var in variables.items()}
        out = {}
        for field, var in variables.items():
            par = None if params is None else params.get(var["lmfit_name"])
            correl = (par.correl or {}) if par is not None else {}
            out[field] = {field_of[k]: float(v) for k, v in correl.items() if k in field_of}
        return out

    def to_payload(self) -> dict[str, Any]:
        """The JSON document of this preset (:func:`load_felif_preset` reads it back)."""
        return {
            "schema": f"{FELIF_SCHEMA}/{SUPPORTED_MAJOR}",
            "device": "felif",
            "parameters": {
                name: float(getattr(self.parameters, name))
                for name in self.parameters.field_names()
            },
            "variability": {
                "sigma": self.variability_sigma,
                "fields": list(self.variability_fields),
            },
            "fit": self.fit,
            "provenance": self.provenance,
        }


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
        path = _default_path("felif")
        if not path.exists():
            _require_if_chosen(path)
            return FeLIFPreset(parameters=FeLIFParameters())
    path = Path(path)
    return felif_preset_from_payload(_read(path, FELIF_SCHEMA, "felif"), path)


def felif_preset_from_payload(payload: dict[str, Any], path: Path) -> FeLIFPreset:
    """Check a felif preset document (``path`` names it in errors) and build the preset."""
    values = payload.get("parameters")
    if not isinstance(values, dict) or not values:
        raise PresetError(f"{path}: 'parameters' must be a non-empty object of field: value")
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
        fit=_section(path, payload, "fit"),
        provenance=_section(path, payload, "provenance", required=True),
        source=str(path),
    )


def load_felif_parameters(path: str | Path | None = None) -> FeLIFParameters:
    """FeLIF parameters from ``path``, the committed calibrated preset, or SPEC defaults."""
    return load_felif_preset(path).parameters


@dataclasses.dataclass(frozen=True)
class RRAMLevel:
    """One programmable conductance state; ``details`` keeps the calibration's per-level record."""

    programming_current_A: float
    conductance_mean_S: float
    conductance_std_S: float
    conductance_samples_S: tuple[float, ...] = ()
    details: dict = dataclasses.field(default_factory=dict)


_LEVEL_KEYS = ("programming_current_A", "conductance_mean_S", "conductance_std_S")
_RRAM_KEYS = ("schema", "device", "levels", "read_voltage_V", "cycle_to_cycle_read_noise_rel")
_RRAM_KEYS += ("conductance_law", "reads", "provenance")
#: Two read voltages (V) closer than this are the same one.
_VOLTAGE_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class RRAMRead:
    """The levels and conductance law of an RRAM preset as read at one calibrated read voltage."""

    read_voltage_V: float
    levels: tuple[RRAMLevel, ...]
    conductance_law: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RRAMPreset:
    """Eight (3-bit) programmable conductance levels of the RRAM synapse and its read noise, as
    read at ``read_voltage_V`` (V); ``reads`` the levels at every supported read voltage
    (:meth:`at_read_voltage`). ``record`` keeps the calibration's other sections (sweep,
    Monte-Carlo, programming, read disturb)."""

    levels: tuple[RRAMLevel, ...]
    read_voltage_V: float = 0.2
    cycle_to_cycle_read_noise_rel: float = FALLBACK_RRAM_READ_NOISE
    conductance_law: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)
    source: str = "fallback"
    reads: tuple[RRAMRead, ...] = ()

    @property
    def means(self) -> tuple[float, ...]:
        return tuple(level.conductance_mean_S for level in self.levels)

    @property
    def stds(self) -> tuple[float, ...]:
        return tuple(level.conductance_std_S for level in self.levels)

    @property
    def read_voltages_V(self) -> tuple[float, ...]:
        """The supported read voltages (V), increasing: the calibrated ones, or the preset's one
        read voltage when it has no per-voltage reads (a fallback or schema 1.0 preset)."""
        return tuple(read.read_voltage_V for read in self.reads) or (self.read_voltage_V,)

    def at_read_voltage(self, v: float) -> RRAMPreset:
        """This preset as read at ``v`` (V): its levels, samples and law at that read voltage.

        Exact at a calibrated voltage. Between two, linear in the read voltage: every level's
        samples (one per Monte-Carlo device, the same devices at every voltage) and the law's
        conductances; the means and stds are those of the interpolated samples (validated by
        ``python -m calibration validate rram`` at the midpoints). A voltage outside the supported
        range (:attr:`read_voltages_V`) is a :class:`PresetError` naming it."""
        voltage = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
        voltages = self.read_voltages_V
        if not self.reads and math.isclose(
            voltage, self.read_voltage_V, abs_tol=_VOLTAGE_TOLERANCE
        ):
            return self
        if not self.reads:
            raise PresetError(
                f"{self.source}: read voltage {v!r} V is not supported: this preset has levels at "
                f"{self.read_voltage_V:g} V only (a fallback, or schema 1.0 from before per-read-"
                "voltage levels); recalibrate (make calibrate) for the supported read voltages"
            )
        if not voltages[0] - _VOLTAGE_TOLERANCE <= voltage <= voltages[-1] + _VOLTAGE_TOLERANCE:
            raise PresetError(
                f"{self.source}: read voltage {v!r} V is outside the supported range "
                f"[{voltages[0]:g}, {voltages[-1]:g}] V (calibrated at "
                f"{', '.join(f'{x:g}' for x in voltages)} V; reads above it disturb the state or "
                "were not calibrated)"
            )
        upper = next(k for k, x in enumerate(voltages) if x >= voltage - _VOLTAGE_TOLERANCE)
        above = self.reads[upper]
        if math.isclose(above.read_voltage_V, voltage, abs_tol=_VOLTAGE_TOLERANCE):
            return dataclasses.replace(
                self,
                levels=above.levels,
                read_voltage_V=above.read_voltage_V,
                conductance_law=above.conductance_law,
            )
        below = self.reads[upper - 1]
        weight = (above.read_voltage_V - voltage) / (above.read_voltage_V - below.read_voltage_V)
        levels = tuple(
            _interpolate_level(a, b, weight)
            for a, b in zip(below.levels, above.levels, strict=True)
        )
        law = {
            "model": "linear interpolation in read voltage between two calibrated laws",
            "read_voltages_V": [below.read_voltage_V, above.read_voltage_V],
            "weights": [weight, 1.0 - weight],
            "interpolated_between": [below.conductance_law, above.conductance_law],
        }
        return dataclasses.replace(self, levels=levels, read_voltage_V=voltage, conductance_law=law)

    def to_payload(self) -> dict[str, Any]:
        """The JSON document of this preset (:func:`load_rram_preset` reads it back)."""
        return {
            "schema": RRAM_SCHEMA_WRITTEN,
            "device": "rram",
            "read_voltage_V": self.read_voltage_V,
            "levels": [_level_payload(level) for level in self.levels],
            "cycle_to_cycle_read_noise_rel": self.cycle_to_cycle_read_noise_rel,
            "conductance_law": self.conductance_law,
            "reads": [
                {
                    "read_voltage_V": read.read_voltage_V,
                    "levels": [_level_payload(level) for level in read.levels],
                    "conductance_law": read.conductance_law,
                }
                for read in self.reads
            ],
            **self.record,
            "provenance": self.provenance,
        }


def _level_payload(level: RRAMLevel) -> dict[str, Any]:
    return {
        **level.details,
        "programming_current_A": level.programming_current_A,
        "conductance_mean_S": level.conductance_mean_S,
        "conductance_std_S": level.conductance_std_S,
        "conductance_samples_S": list(level.conductance_samples_S),
    }


def _interpolate_level(below: RRAMLevel, above: RRAMLevel, weight: float) -> RRAMLevel:
    """``weight`` x ``below`` + (1 - ``weight``) x ``above``, sample by sample (same devices)."""
    import statistics

    samples = tuple(
        weight * a + (1.0 - weight) * b
        for a, b in zip(below.conductance_samples_S, above.conductance_samples_S, strict=True)
    )
    mean = weight * below.conductance_mean_S + (1.0 - weight) * above.conductance_mean_S
    std = weight * below.conductance_std_S + (1.0 - weight) * above.conductance_std_S
    if len(samples) >= 2:
        mean, std = statistics.fmean(samples), statistics.stdev(samples)
    return RRAMLevel(below.programming_current_A, mean, std, samples)


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
        path = _default_path("rram")
        if not path.exists():
            _require_if_chosen(path)
            return fallback_rram_preset()
    path = Path(path)
    return rram_preset_from_payload(_read(path, RRAM_SCHEMA, "rram"), path)


def _rram_levels(path: Path, raw_levels: Any, where: str) -> tuple[RRAMLevel, ...]:
    """Check one list of levels (``where`` names it in errors) and build the levels."""
    if not isinstance(raw_levels, list) or len(raw_levels) < 2:
        raise PresetError(f"{path}: '{where}' must be a list of at least 2 levels (3-bit: 8)")
    levels = []
    for k, level in enumerate(raw_levels):
        name = f"{where}[{k}]"
        if not isinstance(level, dict):
            raise PresetError(f"{path}: {name} must be an object")
        try:
            mean = _finite(path, f"{name}.conductance_mean_S", level["conductance_mean_S"])
            std = _finite(path, f"{name}.conductance_std_S", level.get("conductance_std_S", 0.0))
            current = _finite(
                path, f"{name}.programming_current_A", level.get("programming_current_A", 0.0)
            )
        except KeyError as error:
            raise PresetError(f"{path}: {name} lacks {error}") from None
        samples = tuple(
            _finite(path, f"{name}.conductance_samples_S", s)
            for s in level.get("conductance_samples_S", []) or []
        )
        if mean <= 0 or std < 0 or any(s <= 0 for s in samples):
            raise PresetError(f"{path}: {name} needs a positive mean/samples and std >= 0")
        details = {k: v for k, v in level.items() if k not in _LEVEL_KEYS}
        details.pop("conductance_samples_S", None)
        levels.append(RRAMLevel(current, mean, std, samples, details))
    means = [level.conductance_mean_S for level in levels]
    if any(b <= a for a, b in zip(means, means[1:], strict=False)):
        raise PresetError(f"{path}: {where} means must be strictly increasing, got {means}")
    return tuple(levels)


def _rram_reads(path: Path, payload: dict, levels: tuple[RRAMLevel, ...]) -> tuple[RRAMRead, ...]:
    """Check the per-read-voltage levels (schema 1.1; absent in 1.0) against ``levels``: the same
    states and Monte-Carlo devices at increasing read voltages that include ``read_voltage_V``'s
    range."""
    raw = payload.get("reads", [])
    if not isinstance(raw, list):
        raise PresetError(f"{path}: 'reads' must be a list of per-read-voltage levels")
    reads = []
    for k, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise PresetError(f"{path}: reads[{k}] must be an object")
        voltage = _finite(path, f"reads[{k}].read_voltage_V", entry.get("read_voltage_V"))
        read_levels = _rram_levels(path, entry.get("levels"), f"reads[{k}].levels")
        shape = [(lv.programming_current_A, len(lv.conductance_samples_S)) for lv in read_levels]
        if shape != [(lv.programming_current_A, len(lv.conductance_samples_S)) for lv in levels]:
            raise PresetError(
                f"{path}: reads[{k}] ({voltage:g} V) must hold the same states (programming "
                "currents) and Monte-Carlo devices (sample counts) as 'levels'"
            )
        law = entry.get("conductance_law", {})
        if not isinstance(law, dict):
            raise PresetError(f"{path}: reads[{k}].conductance_law must be an object")
        reads.append(RRAMRead(voltage, read_levels, dict(law)))
    voltages = [read.read_voltage_V for read in reads]
    if any(v <= 0 for v in voltages) or any(
        b <= a for a, b in zip(voltages, voltages[1:], strict=False)
    ):
        raise PresetError(
            f"{path}: reads' read voltages must be positive and increasing: {voltages}"
        )
    return tuple(reads)


def rram_preset_from_payload(payload: dict[str, Any], path: Path) -> RRAMPreset:
    """Check a rram preset document (``path`` names it in errors) and build the preset."""
    levels = _rram_levels(path, payload.get("levels"), "levels")
    noise = _finite(
        path, "cycle_to_cycle_read_noise_rel", payload.get("cycle_to_cycle_read_noise_rel", 0.0)
    )
    if noise < 0:
        raise PresetError(f"{path}: cycle_to_cycle_read_noise_rel must be >= 0")
    read_voltage = _finite(path, "read_voltage_V", payload.get("read_voltage_V", 0.2))
    reads = _rram_reads(path, payload, levels)
    if reads and not (
        reads[0].read_voltage_V - _VOLTAGE_TOLERANCE
        <= read_voltage
        <= reads[-1].read_voltage_V + _VOLTAGE_TOLERANCE
    ):
        raise PresetError(
            f"{path}: read_voltage_V {read_voltage:g} V lies outside its calibrated reads "
            f"[{reads[0].read_voltage_V:g}, {reads[-1].read_voltage_V:g}] V"
        )
    return RRAMPreset(
        levels=levels,
        read_voltage_V=read_voltage,
        cycle_to_cycle_read_noise_rel=noise,
        conductance_law=_section(path, payload, "conductance_law"),
        provenance=_section(path, payload, "provenance", required=True),
        record={k: v for k, v in payload.items() if k not in _RRAM_KEYS},
        source=str(path),
        reads=reads,
    )


def write_preset(preset: FeLIFPreset | RRAMPreset, path: str | Path) -> Path:
    """Write ``preset`` to ``path`` atomically, after checking that it reads back (a preset that
    the loaders would refuse is never written)."""
    from bruno.io import atomic_write_json

    path = Path(path)
    payload = preset.to_payload()
    parse = (
        felif_preset_from_payload if isinstance(preset, FeLIFPreset) else rram_preset_from_payload
    )
    parse(json.loads(json.dumps(payload)), path)
    return atomic_write_json(path, payload)
