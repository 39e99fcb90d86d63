"""FeLIF calibration: the netlist, the compact model's fit variables and start points, the
validation targets and the errors every step reports (constants shared by the other modules)."""

from __future__ import annotations

import dataclasses
import math

from bruno.presets import PresetError  # noqa: F401  (the one preset error; re-exported)
from calibration import (
    COMMITTED_PRESETS,
    CalibrationError,
)

NETLIST = "felif.cir"  # the chosen device's (bruno.devices); a path is taken as it is
PRESET_NAME = "felif.json"
PRESET = COMMITTED_PRESETS / PRESET_NAME  # the committed preset of the shipped device

DT = 1e-6  # s, the compact model's fine step (the trainer's)
RECORD = 20e-6  # s, trace sampling for comparisons
I_MIN, I_MAX = 0.1e-9, 2.0e-9  # A, the calibrated working range of DC input currents
# A, the most negative time-varying input validated: a signed synaptic sum drives the membrane
# onto the netlist's negative clamp (the compact model's -V_CLIP floor) and it must recover
I_NEGATIVE_MAX = 20e-9
DTYPE = "float64"  # compact-model precision in the fit (smooth finite differences)
VALIDATION_DTYPE = "float32"  # validation runs the compact model as the trainer does


@dataclasses.dataclass(frozen=True)
class FitVariable:
    """A compact-model field as the fit sees it: in O(1) units (or log10), with bounds there."""

    field: str  # FeLIFParameters field (SI)
    name: str  # lmfit Parameter name (fit units in the name)
    unit: float  # SI value of one fit unit (ignored for log10 variables)
    lower: float  # bounds, in fit units
    upper: float
    log10: bool = False

    def to_si(self, x: float) -> float:
        return float(10.0**x) if self.log10 else float(x) * self.unit

    def from_si(self, value: float) -> float:
        return math.log10(value) if self.log10 else float(value) / self.unit

    def stderr_si(self, x: float, stderr: float) -> float:
        return self.to_si(x) * math.log(10.0) * stderr if self.log10 else stderr * self.unit


# Effective compact-model parameters that the fit adjusts, with their bounds. The others stay at
# the netlist's design values (geometry, permittivities, tau0, alpha, threshold, reset voltage,
# and the leak's thermal voltage n*kT/q of the diode: with it free, (I0, Vt) form a shallow
# valley the data cannot resolve and Levenberg-Marquardt stalls in it).
FIT_VARIABLES: tuple[FitVariable, ...] = (
    FitVariable("activation_field", "activation_field_GV_per_m", 1e9, 0.8, 1.8),
    FitVariable("saturation_polarization", "saturation_polarization_C_per_m2", 1.0, 0.10, 0.35),
    FitVariable("interlayer_thickness", "interlayer_thickness_nm", 1e-9, 0.5, 3.0),
    FitVariable("parasitic_capacitance", "parasitic_capacitance_fF", 1e-15, 0.0, 200.0),
    FitVariable(
        "leak_current_density", "log10_leak_current_density_A_per_m2", 1.0, -6.0, 0.0, log10=True
    ),
    FitVariable("discharge_current", "discharge_current_pA", 1e-12, 0.0, 50.0),
)
FIT_FIELDS = tuple(v.field for v in FIT_VARIABLES)
# Starting points of the fit (SI; unnamed fields start at the paper's values).
START_POINTS: tuple[dict[str, float], ...] = (
    {"leak_current_density": 1e-3, "interlayer_thickness": 1.7e-9},
    {},
    {
        "activation_field": 1.2e9,
        "saturation_polarization": 0.19,
        "interlayer_thickness": 2.0e-9,
        "leak_current_density": 1e-3,
        "parasitic_capacitance": 30e-15,
    },
    {
        "activation_field": 1.35e9,
        "saturation_polarization": 0.2,
        "interlayer_thickness": 1.9e-9,
        "leak_current_density": 3e-4,
        "parasitic_capacitance": 25e-15,
        "discharge_current": 5e-12,
    },
)
# Starts whose chi-square is within this factor of the best count as converged; the spread of
# their parameter values is reported next to lmfit's standard errors (which are local).
CONVERGED_CHI2_FACTOR = 1.25
# Design values of the fixed fields, taken from the netlist's .param lines.
FIXED_FROM_NETLIST = {
    "area": "area",
    "ferroelectric_thickness": "t_fe",
    "ferroelectric_permittivity": "eps_fe",
    "interlayer_permittivity": "eps_int",
    "switching_time_constant": "tau0",
    "switching_exponent": "alpha",
    "soft_field": "e_soft",
    "threshold_voltage": "vthr",
    "reset_voltage": "v_reset",
}
BOLTZMANN_OVER_Q = 8.617333262e-5  # V/K
# Tolerances of `validate` (stated in the report).
TARGETS = {
    "isi_rel_error_median": 0.02,
    "isi_rel_error_max": 0.05,
    "first_spike_rel_error_max": 0.02,
    "v_nrmse": 0.05,
}


class FeLIFCalibrationError(CalibrationError, RuntimeError):
    """A FeLIF calibration or validation step that failed; the message names the step."""


class StimulusRangeError(CalibrationError, ValueError):
    """A stimulus outside the calibrated working range of the compact model."""
