"""RRAM calibration: the decks, the JART VCM v1b variability bounds, programming and read
conditions, the programming currents swept and held out, tolerances, and the device description."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from calibration import (
    COMMITTED_PRESETS,
    CalibrationError,
    spice,
)

PRESET_NAME = "rram.json"


PRESET_PATH = COMMITTED_PRESETS / PRESET_NAME  # the committed preset of the shipped device


NETLIST = "rram.cir"


READ_NETLIST = "rram_read.cir"


#: The parameters that vary from device to device (SI units, except N in 1e26 m^-3). Their nominal
#: values are the chosen device's ``rram.cir`` ``.param`` lines (:func:`nominal`; the shipped cell:
#: JART VCM v1b, r_fil 45 nm, l_disc 0.4 nm, N_discmin 0.008, N_discmax 20), and their variability
#: bounds these factors of the nominal (:func:`bounds`; Bengel et al. 2020 for the shipped cell:
#: 40.5-49.5 nm, 0.36-0.44 nm, 4e-3-0.25, 18-22), so a device with another filament geometry
#: is drawn around its own.
VARIED = ("r_fil", "l_disc", "ndiscmin", "ndiscmax")
SPREAD: dict[str, tuple[float, float]] = {
    "r_fil": (0.9, 1.1),
    "l_disc": (0.9, 1.1),
    "ndiscmin": (0.5, 31.25),
    "ndiscmax": (0.9, 1.1),
}


def nominal() -> dict[str, float]:
    """The chosen device's nominal values of :data:`VARIED` (its ``rram.cir``)."""
    path = spice.netlist_path(NETLIST)
    return dict(_nominal_of(str(path), path.stat().st_mtime_ns if path.exists() else 0))


@functools.lru_cache(maxsize=8)
def _nominal_of(path: str, mtime_ns: int) -> tuple[tuple[str, float], ...]:
    values = spice.deck_parameters(spice.read_netlist(path))
    try:
        return tuple((name, spice._parse_spice_number(values[name])) for name in VARIED)
    except (KeyError, spice.SpiceError) as error:
        raise RRAMError(f"{path}: .param {error} must be a number") from None


def bounds() -> dict[str, tuple[float, float]]:
    """Variability bounds around :func:`nominal` (:data:`SPREAD`)."""
    centre = nominal()
    return {  # 12 digits: the shipped bounds are exactly the published values
        name: (float(f"{centre[name] * lo:.12g}"), float(f"{centre[name] * hi:.12g}"))
        for name, (lo, hi) in SPREAD.items()
    }


#: Programming conditions (see netlists/rram.cir). The SET pulse is long enough that the programmed
#: state is set by the compliance current (self-limiting), not by the pulse width.
V_SET = 2.0


T_PULSE = 200e-9


#: The default read voltage (V, SET polarity): the preset's ``levels`` are read here, and so are the
#: level currents chosen. Training uses it unless told another (``RRAMPreset.at_read_voltage``).
READ_VOLTAGE = 0.2


#: Read voltages (V) calibration reads every programmed state at; those whose reads disturb the
#: state (:data:`READ_DISTURB_READS`) are dropped, the others are the preset's supported voltages.
#: The cell's read I-V is non-linear (Schottky interface, Joule heating): the lowest level reads
#: 3.5 % lower at 0.1 V than at 0.2 V (nominal cell), the highest 0.5 %.
READ_VOLTAGE_CANDIDATES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


#: A read disturbs the state when :data:`READ_DISTURB_READS` reads (each the read deck's 20 ns
#: transient) move N_disc by more than :data:`READ_DISTURB_MAX_REL` (extrapolated linearly from the
#: drift of one read): about as many reads as one inference over a test set makes of every cell
#: (thousands of samples x hundreds of time steps). The drift is the field- and heat-driven ionic
#: motion at the read bias (the filament heats); it grows 100-400x per 50 mV above 0.1 V.
READ_DISTURB_READS = 1e6


READ_DISTURB_MAX_REL = 0.01


#: The cell's useful programming-current range: below it the SET does not complete within the
#: pulse for every device in the bounds (the state stays near N_discmin); above it the access
#: transistor leaves saturation at V_SET (no compliance) and N_disc approaches N_discmax.
I_PROG_MIN = 20e-6


I_PROG_MAX = 400e-6


#: Assumed cycle-to-cycle read noise (relative, 1 sigma). SPICE here is deterministic, so this is an
#: assumption, not a measurement: read-to-read fluctuations of a few percent are typical for the
#: low-resistance states of filamentary HfOx cells in the literature.
CYCLE_TO_CYCLE_READ_NOISE_REL = 0.02


CYCLE_TO_CYCLE_SOURCE = (
    "assumption (not from SPICE, which is deterministic): 2 % relative 1-sigma read-to-read "
    "fluctuation, the order of magnitude reported for low-resistance states of filamentary HfOx "
    "VCM cells (1-5 %); replace with a measured value for your devices"
)


#: Validation tolerances.
TOL_LEVEL_REL_ERROR = 0.03


SEPARATION_SIGMAS = 3.0


class RRAMError(CalibrationError, ValueError):
    """A request the RRAM calibration cannot honour (bad input, a failed sweep)."""


@dataclasses.dataclass(frozen=True)
class Device:
    """Device-to-device parameters of one cell (the JART v1b variability parameters)."""

    r_fil: float = dataclasses.field(default_factory=lambda: nominal()["r_fil"])
    l_disc: float = dataclasses.field(default_factory=lambda: nominal()["l_disc"])
    ndiscmin: float = dataclasses.field(default_factory=lambda: nominal()["ndiscmin"])
    ndiscmax: float = dataclasses.field(default_factory=lambda: nominal()["ndiscmax"])

    def parameters(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def check_programming_current(i_prog: float) -> float:
    """``i_prog`` as a float, or an error naming the cell's useful range."""
    try:
        value = float(i_prog)
    except (TypeError, ValueError):
        raise RRAMError(f"programming current {i_prog!r} is not a number") from None
    if not math.isfinite(value) or not (within(value, I_PROG_MIN, I_PROG_MAX)):
        raise RRAMError(
            f"programming current {value!r} A is outside the cell's useful range "
            f"[{I_PROG_MIN:g}, {I_PROG_MAX:g}] A (below it the SET does not complete for every "
            "device in the variability bounds; above it the access transistor loses compliance)"
        )
    return value


def check_device(device: Device) -> Device:
    for name, value in device.parameters().items():
        if not math.isfinite(value) or value <= 0:
            raise RRAMError(f"device parameter {name}={value!r} must be a positive number")
    if device.ndiscmin >= device.ndiscmax:
        raise RRAMError(f"ndiscmin={device.ndiscmin} must be below ndiscmax={device.ndiscmax}")
    return device


#: Programming currents of the nominal sweep the conductance law is fitted to: the cell's whole
#: useful range, ends included, so that neither the levels (:data:`LEVEL_CURRENT_RANGE`) nor the
#: validation ever ask the law to extrapolate. The held-out ones, used only by ``validate``, are
#: the geometric midpoints of neighbouring fit currents: strictly inside the fitted range, one in
#: every interval (the first and last test its ends).
FIT_CURRENTS = tuple(float(x) for x in np.geomspace(I_PROG_MIN, I_PROG_MAX, 13))


HELD_OUT_CURRENTS = tuple(
    float(np.sqrt(a * b)) for a, b in zip(FIT_CURRENTS, FIT_CURRENTS[1:], strict=False)
)


#: Conductance range the eight states are spread over (equally spaced in conductance between the
#: law's values at these two currents; the synapse layer maps weights linearly onto conductance).
LEVEL_CURRENT_RANGE = (30e-6, 400e-6)


N_LEVELS = 8


LAW_NAME = (
    "1/G = r_s + 1/g_f, g_f = g_p / (1 + (g_p / g_max)^m)^(1/m), g_p = k x^(p + q ln x), "
    "x = I_prog / 100 uA"
)


def within(current: float, lo: float, hi: float) -> bool:
    """``lo <= current <= hi`` (A), up to float rounding of the currents' own arithmetic."""
    return lo * (1 - 1e-9) <= current <= hi * (1 + 1e-9)


def check_within_fit(currents: Sequence[float], fit_currents: Sequence[float], what: str) -> None:
    """Refuse programming currents outside the range the conductance law was fitted over (the law
    is validated between its fit points only; beyond them it extrapolates)."""
    lo, hi = min(fit_currents), max(fit_currents)
    outside = [i for i in currents if not within(i, lo, hi)]
    if outside:
        raise RRAMError(
            f"{what} {', '.join(f'{i * 1e6:.4g}' for i in outside)} uA lie outside the "
            f"conductance law's fitted range [{lo * 1e6:.4g}, {hi * 1e6:.4g}] uA; the law is "
            "not validated beyond its fit points: recalibrate (make calibrate) or fit over them"
        )


CALIBRATION_SEED = 20250523


VALIDATION_SEED = 777
