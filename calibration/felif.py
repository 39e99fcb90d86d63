"""FeLIF neuron: ngspice runs of ``netlists/felif.cir``, lmfit calibration of the compact model
(:mod:`bruno.felif`) and validation on held-out stimuli.

``calibrate`` simulates the training stimuli in ngspice (DC levels across the working range and
current pulse trains), fits the compact model's *effective* parameters with lmfit and writes
``felif.json`` into the preset directory (atomically, with provenance). ``validate`` compares that
preset against ngspice on stimuli the fit never saw (other DC levels, including the edges of the
range, and a random spike-train input current) and writes ``felif.json`` plus figures into the
reports directory; it returns False when a stated tolerance is missed. The stages' signatures and
default locations are those of every device module (:mod:`calibration`).

The compact model is evaluated only through :func:`bruno.device.simulate` (one batched call per
fit iteration: every stimulus times every finite-difference parameter set is one neuron), so the
equations live in one place. Units are SI throughout.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bruno.io import atomic_save_figure
from calibration import (
    COMMITTED_PRESETS,
    CalibrationError,
    presets_location,
    reports_location,
    spice,
)

ROOT = Path(__file__).resolve().parent.parent
NETLIST = spice.NETLIST_DIR / "felif.cir"
PRESET_NAME = "felif.json"
PRESET = COMMITTED_PRESETS / PRESET_NAME  # the committed preset of the shipped device
SCHEMA = "bruno.felif-preset/1"

DT = 1e-6  # s, the compact model's fine step (the trainer's)
RECORD = 20e-6  # s, trace sampling for comparisons
I_MIN, I_MAX = 0.1e-9, 2.0e-9  # A, the calibrated working range of DC input currents
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
TARGETS = {"isi_rel_error_median": 0.02, "isi_rel_error_max": 0.05, "v_nrmse": 0.05}


class FeLIFCalibrationError(CalibrationError, RuntimeError):
    """A FeLIF calibration or validation step that failed; the message names the step."""


class StimulusRangeError(CalibrationError, ValueError):
    """A stimulus outside the calibrated working range of the compact model."""


class PresetError(CalibrationError, ValueError):
    """A FeLIF preset file that is missing, malformed or inconsistent."""


# ---------------------------------------------------------------------------------------------
# Stimuli
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stimulus:
    """An input current: DC (``dc``) or piecewise linear through (``times``, ``currents``)."""

    name: str
    duration: float  # s
    dc: float | None = None  # A
    times: tuple[float, ...] = ()  # s, PWL breakpoints (strictly increasing, first 0)
    currents: tuple[float, ...] = ()  # A
    description: str = ""

    def current(self, t: np.ndarray) -> np.ndarray:
        """Input current (A) at times ``t`` (s); after ``duration`` it holds its last value."""
        if self.dc is not None:
            return np.full(np.shape(t), float(self.dc))
        return np.interp(t, self.times, self.currents)

    def fine_waveform(self, steps: int, dt: float = DT) -> np.ndarray:
        """One value per fine step: the current at the step's midpoint (exact for linear ramps)."""
        return self.current((np.arange(steps) + 0.5) * dt)

    def spice_source(self, node: str = "mem") -> str:
        """The netlist's input source line for this stimulus."""
        if self.dc is not None:
            return f"Iin 0 {node} DC {self.dc!r}"
        pairs = [f"{t:.9g} {i:.9g}" for t, i in zip(self.times, self.currents, strict=True)]
        lines, line = [], f"Iin 0 {node} PWL("
        for pair in pairs:
            if len(line) > 200:
                lines.append(line)
                line = "+"
            line += " " + pair
        lines.append(line + " )")
        return "\n".join(lines)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "duration_s": self.duration}
        if self.dc is not None:
            out["dc_A"] = self.dc
        else:
            out.update(
                pwl_points=len(self.times),
                mean_A=float(self.mean_current()),
                max_A=float(max(self.currents)),
                description=self.description,
            )
        return out

    def mean_current(self) -> float:
        if self.dc is not None:
            return float(self.dc)
        t = np.linspace(0.0, self.duration, 20001)
        return float(np.mean(self.current(t)))


def dc_stimulus(current: float, duration: float | None = None, name: str | None = None) -> Stimulus:
    """DC input; by default long enough for about three spikes."""
    if duration is None:
        duration = min(0.5, 3.3 * 15e-12 / max(current, 1e-12))
    return Stimulus(name=name or f"dc_{current * 1e9:.3g}nA", duration=float(duration), dc=current)


def _pwl_from_pulses(
    starts: Sequence[float],
    widths: Sequence[float],
    amplitudes: Sequence[float],
    baseline: float,
    duration: float,
    edge: float,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Breakpoints of baseline + non-overlapping trapezoidal pulses (edges of ``edge`` s)."""
    times, currents = [0.0], [baseline]
    for start, width, amplitude in zip(starts, widths, amplitudes, strict=True):
        if start <= times[-1] or start + width + edge >= duration:
            continue
        times += [start, start + edge, start + width, start + width + edge]
        currents += [baseline, baseline + amplitude, baseline + amplitude, baseline]
    times.append(duration)
    currents.append(baseline)
    return tuple(times), tuple(currents)


def pulse_train(
    amplitude: float,
    width: float,
    period: float,
    duration: float,
    baseline: float = 0.0,
    delay: float = 0.0,
    edge: float = 1e-6,
    name: str | None = None,
) -> Stimulus:
    """Regular current pulses of ``amplitude`` on ``baseline`` (A)."""
    starts = np.arange(delay if delay > 0 else period - width, duration, period)
    times, currents = _pwl_from_pulses(
        starts, [width] * len(starts), [amplitude] * len(starts), baseline, duration, edge
    )
    return Stimulus(
        name=name or f"pulses_{amplitude * 1e9:.3g}nA_{width * 1e3:.3g}ms_{period * 1e3:.3g}ms",
        duration=duration,
        times=times,
        currents=currents,
        description=f"pulses {amplitude:.3g} A, width {width:.3g} s, period {period:.3g} s, "
        f"baseline {baseline:.3g} A",
    )


def spike_train(
    rate: float,
    duration: float,
    seed: int,
    amplitude: tuple[float, float] = (0.4e-9, 1.2e-9),
    width: float = 2e-3,
    baseline: float = 0.15e-9,
    edge: float = 1e-6,
    name: str | None = None,
) -> Stimulus:
    """Random (Poisson, with a dead time of one pulse) spike train of synaptic current pulses."""
    rng = np.random.default_rng(seed)
    starts, t = [], 0.0
    while True:
        t += width + 2 * edge + rng.exponential(1.0 / rate)
        if t >= duration:
            break
        starts.append(t)
    amplitudes = rng.uniform(amplitude[0], amplitude[1], size=len(starts))
    times, currents = _pwl_from_pulses(
        starts, [width] * len(starts), amplitudes, baseline, duration, edge
    )
    return Stimulus(
        name=name or f"spiketrain_{rate:.3g}Hz_seed{seed}",
        duration=duration,
        times=times,
        currents=currents,
        description=f"Poisson {rate:.3g} Hz (dead time {width:.3g} s), pulses {width:.3g} s of "
        f"U({amplitude[0]:.3g}, {amplitude[1]:.3g}) A on {baseline:.3g} A, seed {seed}",
    )


def check_stimulus(stimulus: Stimulus) -> None:
    """Refuse stimuli outside the working range the compact model is calibrated for."""
    where = f"stimulus {stimulus.name!r}"
    if not (np.isfinite(stimulus.duration) and 0 < stimulus.duration <= 2.0):
        raise StimulusRangeError(f"{where}: duration {stimulus.duration!r} s is not in (0, 2] s")
    if stimulus.dc is not None:
        if not (
            np.isfinite(stimulus.dc) and I_MIN * (1 - 1e-9) <= stimulus.dc <= I_MAX * (1 + 1e-9)
        ):
            raise StimulusRangeError(
                f"{where}: DC current {stimulus.dc!r} A is outside the calibrated working range "
                f"[{I_MIN:.3g}, {I_MAX:.3g}] A"
            )
        return
    times, currents = np.asarray(stimulus.times), np.asarray(stimulus.currents)
    if (
        times.size < 2
        or times.size != currents.size
        or times[0] != 0
        or np.any(np.diff(times) <= 0)
    ):
        raise StimulusRangeError(f"{where}: PWL times must start at 0 and increase strictly")
    if (
        not np.all(np.isfinite(currents))
        or currents.min() < 0
        or currents.max() > I_MAX * (1 + 1e-9)
    ):
        raise StimulusRangeError(
            f"{where}: currents span [{currents.min():.3g}, {currents.max():.3g}] A; the "
            f"calibrated range for time-varying inputs is [0, {I_MAX:.3g}] A"
        )


# ---------------------------------------------------------------------------------------------
# Traces, spikes, comparisons
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trace:
    """A simulated neuron: uniform-grid traces and spike times (s)."""

    time: np.ndarray
    v: np.ndarray
    polarization: np.ndarray
    spike_times: np.ndarray
    wall_s: float = 0.0
    points: int = 0  # SPICE time points (0 for the compact model)


def upward_crossings(t: np.ndarray, v: np.ndarray, level: float) -> np.ndarray:
    """Times where ``v`` crosses ``level`` upwards, linearly interpolated."""
    index = np.nonzero((v[:-1] < level) & (v[1:] >= level))[0]
    frac = (level - v[index]) / (v[index + 1] - v[index])
    return t[index] + frac * (t[index + 1] - t[index])


def intervals(spikes: np.ndarray) -> np.ndarray:
    """First spike time followed by the inter-spike intervals."""
    return np.diff(np.concatenate([[0.0], np.asarray(spikes, dtype=float)]))


def subthreshold_mask(
    time: np.ndarray, spikes_a: np.ndarray, spikes_b: np.ndarray, guard: float = 0.2e-3
) -> np.ndarray:
    """Samples where both neurons are in the same inter-spike interval, away from resets.

    Around the k-th spike of either, ``[min(a_k, b_k) - guard, max(a_k, b_k) + guard]`` is left
    out (the reset itself and the time in which only one of them has fired); after the last
    spike that both have, everything is left out unless neither fires again.
    """
    keep = np.ones(time.shape, dtype=bool)
    n = min(len(spikes_a), len(spikes_b))
    for k in range(n):
        lo, hi = min(spikes_a[k], spikes_b[k]) - guard, max(spikes_a[k], spikes_b[k]) + guard
        keep &= ~((time >= lo) & (time <= hi))
    if len(spikes_a) != len(spikes_b):
        first_unmatched = min([*(spikes_a[n : n + 1]), *(spikes_b[n : n + 1])], default=np.inf)
        keep &= time < first_unmatched - guard
    return keep


# ---------------------------------------------------------------------------------------------
# ngspice
# ---------------------------------------------------------------------------------------------

_INPUT_LINE = re.compile(r"^\s*Iin\s.*$", re.IGNORECASE | re.MULTILINE)
_MEAS_LINE = re.compile(r"^\s*\.meas.*$", re.IGNORECASE | re.MULTILINE)


def netlist_parameters(netlist: str | Path = NETLIST) -> dict[str, float]:
    """Numeric ``.param`` values of the deck (expressions are skipped)."""
    out = {}
    for name, value in spice.deck_parameters(spice.read_netlist(netlist)).items():
        try:
            out[name] = spice._parse_spice_number(value)
        except spice.SpiceError:
            continue
    return out


_TOLERANCE_LINE = re.compile(r"^\s*\.options\b.*\breltol\b.*$", re.IGNORECASE | re.MULTILINE)


def spice_deck(
    stimulus: Stimulus,
    netlist: str | Path = NETLIST,
    overrides: Mapping[str, float] | None = None,
    options: str | None = None,
) -> str:
    """The deck with its input source replaced by ``stimulus`` and .param overrides applied;
    ``options`` replaces the solver-tolerance ``.options`` line (convergence studies)."""
    deck = spice.read_netlist(netlist)
    if overrides:
        deck = spice.set_parameters(deck, overrides)
    if options is not None:
        if len(_TOLERANCE_LINE.findall(deck)) != 1:
            raise spice.SpiceError(f"{netlist}: expected one '.options reltol=...' line to replace")
        deck = _TOLERANCE_LINE.sub(lambda _: options, deck)
    if len(_INPUT_LINE.findall(deck)) != 1:
        raise spice.SpiceError(
            f"{netlist}: expected exactly one input source line 'Iin 0 mem ...' to drive"
        )
    deck = _INPUT_LINE.sub(lambda _: stimulus.spice_source(), deck)
    return _MEAS_LINE.sub("", deck)


def spice_run(
    stimulus: Stimulus,
    netlist: str | Path = NETLIST,
    max_step: float | None = None,
    overrides: Mapping[str, float] | None = None,
    record: float = RECORD,
    options: str | None = None,
) -> Trace:
    """Simulate one stimulus in ngspice; traces resampled every ``record`` s."""
    check_stimulus(stimulus)
    params = netlist_parameters(netlist)
    if overrides:
        params.update({k.lower(): float(v) for k, v in overrides.items()})
    if max_step is None:
        max_step = params.get("t_max", 2e-6)
    threshold = params.get("vthr", 2.5)
    deck = spice_deck(stimulus, netlist, overrides, options)
    name = f"{Path(netlist).name}[{stimulus.name}]"
    analysis = f"tran {record:.6g} {stimulus.duration:.9g} 0 {max_step:.6g} uic"
    start = time.perf_counter()
    result = spice.simulate(deck, analysis, name=name)
    wall = time.perf_counter() - start
    t = result["time"]
    v = result["mem"]
    polarization = result["ptot"]
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(polarization))):
        raise spice.ConvergenceError(f"{name}: NaN/Inf in the membrane or polarisation trace")
    grid = np.arange(0.0, stimulus.duration + record / 2, record)
    return Trace(
        time=grid,
        v=np.interp(grid, t, v),
        polarization=np.interp(grid, t, polarization),
        spike_times=upward_crossings(t, v, threshold),
        wall_s=wall,
        points=int(t.size),
    )


def _spice_job(arguments: tuple[Any, ...]) -> Trace:
    stimulus, netlist, max_step, overrides, options = arguments
    return spice_run(stimulus, netlist, max_step, overrides, options=options)


def spice_runs(
    stimuli: Sequence[Stimulus],
    netlist: str | Path = NETLIST,
    max_step: float | None = None,
    overrides: Mapping[str, float] | None = None,
    progress: str | None = None,
    options: str | None = None,
) -> list[Trace]:
    """Run stimuli in recycled ngspice worker processes; any failure raises, naming the runs."""
    for stimulus in stimuli:
        check_stimulus(stimulus)
    jobs = [(s, str(netlist), max_step, dict(overrides or {}), options) for s in stimuli]
    results, failures = spice.run_many(_spice_job, jobs, runs_per_worker=8, progress=progress)
    if failures:
        detail = "; ".join(f"{stimuli[f.index].name}: {f.error}" for f in failures)
        raise FeLIFCalibrationError(
            f"ngspice failed for {len(failures)} of {len(stimuli)} FeLIF runs of {netlist}: "
            f"{detail}"
        )
    return results


# ---------------------------------------------------------------------------------------------
# Compact model (bruno.felif), batched
# ---------------------------------------------------------------------------------------------


def design_parameters(netlist: str | Path = NETLIST) -> dict[str, float]:
    """Compact-model values the fit does not touch, from the netlist's design values."""
    params = netlist_parameters(netlist)
    out = {}
    for field, name in FIXED_FROM_NETLIST.items():
        if name not in params:
            raise FeLIFCalibrationError(f"{netlist}: .param {name} (for {field}) is missing")
        out[field] = params[name]
    # the diode's emission coefficient times the thermal voltage at the simulation temperature
    if "leak_n" not in params:
        raise FeLIFCalibrationError(
            f"{netlist}: .param leak_n (diode emission coefficient) is missing"
        )
    options = re.findall(
        r"^\s*\.options\b.*?\btemp\s*=\s*([-+\d.eE]+)",
        spice.read_netlist(netlist),
        flags=re.IGNORECASE | re.MULTILINE,
    )
    temperature = (float(options[-1]) if options else 27.0) + 273.15
    out["leak_thermal_voltage"] = params["leak_n"] * BOLTZMANN_OVER_Q * temperature
    return out


def compact_runs(
    stimuli: Sequence[Stimulus],
    parameter_sets: Sequence[Mapping[str, float]],
    duration: float | None = None,
    record: float = RECORD,
    dtype: str = DTYPE,
) -> tuple[list[list[Trace]], float]:
    """Every stimulus under every parameter set in one batched :func:`bruno.device.simulate` call.

    Returns traces indexed ``[set][stimulus]`` and the wall time of the call (s).
    """
    import torch

    from bruno import device, felif

    for stimulus in stimuli:
        check_stimulus(stimulus)
    duration = duration or max(s.duration for s in stimuli)
    steps = int(round(duration / DT))
    every = int(round(record / DT))
    n_sets, n_stim = len(parameter_sets), len(stimuli)
    torch_dtype = getattr(torch, dtype)
    waveform = np.stack([s.fine_waveform(steps) for s in stimuli], axis=1)  # (steps, n_stim)
    current = torch.from_numpy(waveform).to(torch_dtype)[:, None, :].expand(steps, n_sets, n_stim)
    names = sorted({k for ps in parameter_sets for k in ps})
    fields = {f.name for f in dataclasses.fields(felif.FeLIFParameters)}
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise PresetError(f"unknown FeLIFParameters fields {unknown}")
    kwargs = {}
    for name in names:
        values = [
            float(ps.get(name, getattr(felif.FeLIFParameters, name))) for ps in parameter_sets
        ]
        kwargs[name] = torch.tensor(values, dtype=torch_dtype)[:, None]
    params = felif.FeLIFParameters(**kwargs)
    start = time.perf_counter()
    trace = device.simulate(current.contiguous(), params, dt=DT, record_every=every)
    wall = time.perf_counter() - start
    t = trace.time.numpy()
    v = trace.v.double().numpy()
    polarization = trace.polarization.double().numpy()
    out: list[list[Trace]] = []
    for i in range(n_sets):
        row = []
        for j, stimulus in enumerate(stimuli):
            keep = t <= stimulus.duration + record / 2
            row.append(
                Trace(
                    time=t[keep],
                    v=v[keep, i, j],
                    polarization=polarization[keep, i, j],
                    spike_times=np.asarray(
                        [s for s in trace.spike_times[i * n_stim + j] if s <= stimulus.duration]
                    ),
                    wall_s=wall,
                )
            )
        out.append(row)
    return out, wall


# ---------------------------------------------------------------------------------------------
# Fit
# ---------------------------------------------------------------------------------------------

SIGMA_INTERVAL = 0.005  # relative; weight of spike-time residuals
SIGMA_V = 0.05  # V per sample of the first-interval membrane trace
SIGMA_P = 0.01  # C/m^2 per sample of the first-interval polarisation trace
TRACE_WEIGHT = 4.0  # each stimulus's trace counts like this many spike residuals
TRACE_SAMPLE = 0.5e-3  # s


@dataclasses.dataclass
class Target:
    """What the fit matches for one stimulus (from ngspice, or from a synthetic compact run)."""

    stimulus: Stimulus
    trace: Trace


@functools.lru_cache(maxsize=64)
def _charge_table(stimulus: Stimulus) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(0.0, stimulus.duration * 1.2 + DT, DT)
    i = stimulus.current(t)
    q = np.concatenate([[0.0], np.cumsum(0.5 * (i[1:] + i[:-1]) * DT)])
    return t, q


def injected_charge(stimulus: Stimulus, t: np.ndarray) -> np.ndarray:
    """Input charge (C) delivered by ``stimulus`` up to times ``t``."""
    if stimulus.dc is not None:
        return stimulus.dc * np.asarray(t, dtype=float)
    grid, q = _charge_table(stimulus)
    return np.interp(t, grid, q)


def residuals(model: Trace, target: Target) -> np.ndarray:
    """Weighted residuals of one stimulus: spike intervals, then first-interval v and P.

    Intervals are measured in injected charge (for DC the same as in time): a spike that moves
    across a gap of a pulse train then moves the residual continuously, not by a whole gap, so the
    objective stays smooth enough for Levenberg-Marquardt.
    """
    stimulus = target.stimulus
    ref = np.diff(injected_charge(stimulus, np.concatenate([[0.0], target.trace.spike_times])))
    got_q = injected_charge(stimulus, np.concatenate([[0.0], model.spike_times]))
    horizon_q = float(injected_charge(stimulus, np.asarray([stimulus.duration]))[0])
    out = []
    horizon = stimulus.duration
    for k, r in enumerate(ref):
        if k + 1 < len(got_q):
            g = got_q[k + 1] - got_q[k]
        else:  # the model has not fired yet: censored at the end of the window
            g = max(horizon_q - got_q[min(k, len(got_q) - 1)], r) * 1.05
        out.append((g - r) / r / SIGMA_INTERVAL)
    # sub-threshold traces aligned on the interval that starts at t = 0 (same initial state)
    # (the grid depends on the target only, so every evaluation has the same residual length)
    end = (target.trace.spike_times[0] if len(target.trace.spike_times) else horizon) - 0.2e-3
    grid = np.arange(TRACE_SAMPLE, max(end, TRACE_SAMPLE * 2), TRACE_SAMPLE)
    scale = math.sqrt(len(grid) / TRACE_WEIGHT)
    dv = np.interp(grid, model.time, model.v) - np.interp(grid, target.trace.time, target.trace.v)
    dp = np.interp(grid, model.time, model.polarization) - np.interp(
        grid, target.trace.time, target.trace.polarization
    )
    return np.concatenate([np.asarray(out), dv / SIGMA_V / scale, dp / SIGMA_P / scale])


class _Problem:
    """Residuals and Jacobian of the fit; one batched compact run per new parameter point.

    Each call at a new point simulates the point and its forward-difference neighbours together
    (one neuron per stimulus and parameter set; the compact model's cost grows far less than
    linearly with the batch), so the Jacobian that Levenberg-Marquardt asks for next is there.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        fixed: Mapping[str, float],
        variables: Sequence[FitVariable],
        rel_step: float = 3e-3,
        log=None,
    ):
        self.targets = list(targets)
        self.fixed = dict(fixed)
        self.variables = list(variables)
        self.rel_step = rel_step
        self.cache: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray]] = {}
        self.n_batches = 0
        self.compact_wall = 0.0
        self.log = log or (lambda *_: None)
        self.duration = max(t.stimulus.duration for t in self.targets)

    def si(self, x: Sequence[float]) -> dict[str, float]:
        return {
            **self.fixed,
            **{v.field: v.to_si(xi) for v, xi in zip(self.variables, x, strict=True)},
        }

    def evaluate(self, x: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(float(xi) for xi in x)
        if key in self.cache:
            return self.cache[key]
        sets, steps = [self.si(key)], []
        for i, v in enumerate(self.variables):
            h = self.rel_step * max(abs(key[i]), 0.05 * (v.upper - v.lower))
            if key[i] + h > v.upper:
                h = -h
            shifted = list(key)
            shifted[i] += h
            sets.append(self.si(shifted))
            steps.append(h)
        runs, wall = compact_runs([t.stimulus for t in self.targets], sets, self.duration)
        self.n_batches += 1
        self.compact_wall += wall
        vectors = [
            np.concatenate([residuals(run, t) for run, t in zip(row, self.targets, strict=True)])
            for row in runs
        ]
        f0 = vectors[0]
        jac = np.stack([(vec - f0) / h for vec, h in zip(vectors[1:], steps, strict=True)], axis=1)
        self.cache[key] = (f0, jac)
        self.log(
            f"  compact batch {self.n_batches}: chi2 = {float(f0 @ f0):.5g} ({wall:.1f} s) "
            + " ".join(f"{v.name}={xi:.5g}" for v, xi in zip(self.variables, key, strict=True))
        )
        return f0, jac

    def _x(self, params) -> list[float]:
        return [float(params[v.name].value) for v in self.variables]

    def residual(self, params) -> np.ndarray:
        return self.evaluate(self._x(params))[0]

    def jacobian(self, params) -> np.ndarray:
        return self.evaluate(self._x(params))[1]


def fit(
    targets: Sequence[Target],
    start: Mapping[str, float] | None = None,
    fields: Sequence[str] | None = None,
    fixed: Mapping[str, float] | None = None,
    max_nfev: int = 40,
    log=None,
):
    """Fit the compact model to ``targets`` with lmfit (Levenberg-Marquardt, bounded Parameters).

    ``start`` and ``fixed`` are SI field values; ``fields`` picks a subset of :data:`FIT_VARIABLES`.
    Returns ``(lmfit MinimizerResult, problem)``; the result carries the fit report, the standard
    errors and the correlations (in fit units, see :class:`FitVariable`).
    """
    import lmfit

    from bruno import felif

    variables = [v for v in FIT_VARIABLES if fields is None or v.field in fields]
    defaults = felif.FeLIFParameters()
    fixed = dict(fixed if fixed is not None else design_parameters())
    params = lmfit.Parameters()
    for v in variables:
        value = v.from_si(float((start or {}).get(v.field, getattr(defaults, v.field))))
        span = v.upper - v.lower
        value = min(max(value, v.lower + 1e-3 * span), v.upper - 1e-3 * span)
        params.add(v.name, value=value, min=v.lower, max=v.upper)
    problem = _Problem(targets, fixed, variables, log=log)
    minimizer = lmfit.Minimizer(problem.residual, params)
    result = minimizer.minimize(
        method="leastsq",
        Dfun=problem.jacobian,
        col_deriv=False,
        max_nfev=max_nfev,
        xtol=1e-7,
        ftol=1e-7,
        factor=1.0,
    )
    return result, problem


def fitted_si(result, problem) -> tuple[dict[str, float], dict[str, float | None], dict]:
    """(values, standard errors, correlations) of a fit, keyed by FeLIFParameters field, SI."""
    values, errors, correlations = {}, {}, {}
    by_name = {v.name: v for v in problem.variables}
    for v in problem.variables:
        p = result.params[v.name]
        values[v.field] = v.to_si(p.value)
        ok = p.stderr is not None and np.isfinite(p.stderr)
        errors[v.field] = v.stderr_si(p.value, p.stderr) if ok else None
        correlations[v.field] = {
            by_name[k].field: float(c) for k, c in (p.correl or {}).items() if k in by_name
        }
    return values, errors, correlations


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def load_preset(path: str | Path = PRESET) -> dict[str, Any]:
    """Read and check a FeLIF preset; every problem names the file and the field."""
    from bruno import felif

    path = Path(path)
    if not path.exists():
        raise PresetError(f"{path}: no FeLIF preset here; run `make calibrate` to create it")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PresetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise PresetError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    if payload.get("schema") != SCHEMA:
        raise PresetError(f"{path}: 'schema' is {payload.get('schema')!r}, expected {SCHEMA!r}")
    if payload.get("device") != "felif":
        raise PresetError(f"{path}: 'device' is {payload.get('device')!r}, expected 'felif'")
    parameters = payload.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise PresetError(f"{path}: 'parameters' must be a non-empty object of field: value")
    fields = {f.name for f in dataclasses.fields(felif.FeLIFParameters)}
    for name, value in parameters.items():
        if name not in fields:
            raise PresetError(
                f"{path}: parameters.{name} is not a FeLIFParameters field "
                f"(known: {sorted(fields)})"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise PresetError(f"{path}: parameters.{name} = {value!r} is not a finite number")
        signed = {"reset_voltage", "threshold_voltage"}
        if name not in signed and value < 0:
            raise PresetError(f"{path}: parameters.{name} = {value!r} must not be negative")
    for section in ("provenance", "fit"):
        if not isinstance(payload.get(section), dict):
            raise PresetError(f"{path}: '{section}' section is missing")
    return payload


def preset_parameters(path: str | Path = PRESET) -> dict[str, float]:
    return {k: float(v) for k, v in load_preset(path)["parameters"].items()}


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def training_stimuli(quick: bool) -> list[Stimulus]:
    """DC levels across the working range and current pulse trains (never used by validation)."""
    if quick:
        return [
            dc_stimulus(0.6e-9, 0.06),
            dc_stimulus(1.6e-9, 0.03),
            pulse_train(1.5e-9, 1e-3, 2.5e-3, 0.06, name="pulses_1.5nA_1ms_2.5ms"),
        ]
    window = 0.2
    return [
        dc_stimulus(0.16e-9, window),
        dc_stimulus(0.22e-9, window),
        dc_stimulus(0.35e-9, window),
        dc_stimulus(0.6e-9, 0.12),
        dc_stimulus(1.0e-9, 0.08),
        dc_stimulus(1.6e-9, 0.05),
        pulse_train(1.5e-9, 1e-3, 4e-3, window, baseline=0.05e-9, name="pulses_1.5nA_1ms_4ms"),
        pulse_train(0.8e-9, 5e-3, 8e-3, 0.15, name="pulses_0.8nA_5ms_8ms"),
    ]


def _versions() -> dict[str, str]:
    import lmfit
    import torch

    try:
        ngspice = subprocess.run(
            ["ngspice", "-v"], capture_output=True, text=True, timeout=20
        ).stdout
        match = re.search(r"ngspice-(\S+)", ngspice)
        ngspice_version = match.group(1) if match else ngspice.strip()[:40]
    except (OSError, subprocess.SubprocessError):
        ngspice_version = "unknown (ngspice executable not on PATH; shared library used)"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "lmfit": lmfit.__version__,
        "ngspice": ngspice_version,
    }


def _finite_or_none(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN/Inf)."""
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _lmfit_dump(result) -> dict[str, Any]:
    """The lmfit MinimizerResult in JSON: parameters (fit units), statistics, covariance."""
    return _finite_or_none(
        {
            "params": json.loads(result.params.dumps()),
            "var_names": list(result.var_names),
            "init_values": dict(result.init_values),
            "covar": None if result.covar is None else np.asarray(result.covar).tolist(),
            "nfev": result.nfev,
            "nvarys": result.nvarys,
            "ndata": result.ndata,
            "nfree": result.nfree,
            "chisqr": result.chisqr,
            "redchi": result.redchi,
            "aic": result.aic,
            "bic": result.bic,
            "success": result.success,
            "errorbars": result.errorbars,
            "message": result.message,
        }
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def calibrate(
    quick: bool = False, presets_dir: str | Path | None = None, netlist: str | Path = NETLIST
) -> Path:
    """Fit the compact model to ngspice on the training stimuli; write ``<presets_dir>/felif.json``
    (locations: :mod:`calibration`) and return its path."""
    import lmfit

    output = presets_location(quick, presets_dir, writing=True) / PRESET_NAME
    stimuli = training_stimuli(quick)
    fixed = design_parameters(netlist)
    _say(f"felif calibrate: {len(stimuli)} training stimuli through ngspice ({Path(netlist).name})")
    start = time.perf_counter()
    traces = spice_runs(stimuli, netlist, progress="ngspice felif")
    spice_wall = time.perf_counter() - start
    for stimulus, trace in zip(stimuli, traces, strict=True):
        if len(trace.spike_times) == 0:
            raise FeLIFCalibrationError(
                f"training stimulus {stimulus.name!r}: the SPICE neuron never fired in "
                f"{stimulus.duration} s; the stimulus or the netlist is outside the working range"
            )
        _say(
            f"  {stimulus.name}: {len(trace.spike_times)} spikes, first at "
            f"{trace.spike_times[0] * 1e3:.3f} ms ({trace.wall_s:.1f} s, {trace.points} points)"
        )
    targets = [Target(s, t) for s, t in zip(stimuli, traces, strict=True)]
    # Levenberg-Marquardt is local and stalls in shallow valleys (activation field against
    # interlayer thickness, leak against discharge current): a few fixed starts (never the previous
    # preset, so a calibration does not depend on the last one); the best is kept.
    starts = START_POINTS[:1] if quick else START_POINTS
    attempts = []
    best = None
    total_batches = 0
    for number, start_values in enumerate(starts, 1):
        _say(
            f"felif calibrate: fit from start {number}/{len(starts)} "
            f"{start_values or '(paper values)'}"
        )
        result, problem = fit(
            targets, start=start_values, fixed=fixed, max_nfev=20 if quick else 60, log=_say
        )
        attempts.append(
            {
                "start": dict(start_values),
                "chi_square": _finite_or_none(result.chisqr),
                "n_evaluations": int(result.nfev),
                "success": bool(result.success),
                "fitted": fitted_si(result, problem)[0],
            }
        )
        total_batches += problem.n_batches
        if np.isfinite(result.chisqr) and (best is None or result.chisqr < best[0].chisqr):
            best = (result, problem)
    if best is None:
        raise FeLIFCalibrationError(f"felif fit failed from every start: {attempts}")
    result, problem = best
    converged = [
        a
        for a in attempts
        if a["chi_square"] is not None and a["chi_square"] <= CONVERGED_CHI2_FACTOR * result.chisqr
    ]
    start_spread = {
        field: [
            min(a["fitted"][field] for a in converged),
            max(a["fitted"][field] for a in converged),
        ]
        for field in FIT_FIELDS
    }
    if not np.isfinite(result.chisqr):
        raise FeLIFCalibrationError(f"felif fit failed: chi-square is {result.chisqr}")
    fitted, uncertainties, correlations = fitted_si(result, problem)
    parameters = {**fixed, **fitted, "input_gain": 1.0}
    # fields neither fitted nor designed in the netlist keep bruno's defaults (written out, so
    # the preset is complete)
    from bruno import felif, presets

    defaults = felif.FeLIFParameters()
    for f in dataclasses.fields(defaults):
        parameters.setdefault(f.name, float(getattr(defaults, f.name)))
    payload = {
        "schema": SCHEMA,
        "device": "felif",
        "parameters": parameters,
        "uncertainties": uncertainties,
        "correlations": correlations,
        "variability": {  # the trainer's defaults (bruno.presets), recorded with the fit
            "sigma": presets.DEFAULT_VARIABILITY_SIGMA,
            "fields": list(presets.DEFAULT_VARIABILITY_FIELDS),
        },
        "fit": {
            "method": "lmfit leastsq (Levenberg-Marquardt), bounded Parameters, batched "
            "forward-difference Jacobian",
            "fitted": list(FIT_FIELDS),
            "variables": {
                v.field: {
                    "lmfit_name": v.name,
                    "unit_SI": None if v.log10 else v.unit,
                    "log10": v.log10,
                    "bounds_fit_units": [v.lower, v.upper],
                    "bounds_SI": [v.to_si(v.lower), v.to_si(v.upper)],
                }
                for v in problem.variables
            },
            "fixed_from_netlist": fixed,
            "chi_square": float(result.chisqr),
            "reduced_chi_square": float(result.redchi),
            "n_data": int(result.ndata),
            "n_evaluations": int(result.nfev),
            "compact_batches": problem.n_batches,
            "compact_batches_all_starts": total_batches,
            "starts": attempts,
            "start_spread": {
                "converged_starts": len(converged),
                "chi2_factor": CONVERGED_CHI2_FACTOR,
                "range_SI": start_spread,
                "note": "min/max over the starts that reached chi-square within chi2_factor of "
                "the best: a global view of how well each parameter is determined, next to "
                "lmfit's local standard errors",
            },
            "success": bool(result.success),
            "message": str(result.message),
            "residual_weights": {
                "interval_relative_sigma": SIGMA_INTERVAL,
                "v_sigma_V": SIGMA_V,
                "p_sigma_C_m2": SIGMA_P,
                "trace_weight": TRACE_WEIGHT,
                "trace_sample_s": TRACE_SAMPLE,
            },
            "lmfit_result": _lmfit_dump(result),
            "report": lmfit.fit_report(result),
            "dt_s": DT,
            "dtype": DTYPE,
            "wall_s": {"ngspice": spice_wall, "compact": problem.compact_wall},
        },
        "provenance": {
            "netlist": str(Path(netlist).resolve().relative_to(ROOT))
            if Path(netlist).resolve().is_relative_to(ROOT)
            else str(netlist),
            "netlist_sha256": spice.netlist_hash(netlist),
            "stimuli": [s.describe() for s in stimuli],
            "spice_spike_times_s": {
                s.name: t.spike_times.tolist() for s, t in zip(stimuli, traces, strict=True)
            },
            "versions": _versions(),
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "command": "python -m calibration calibrate felif"
            + (" --quick" if quick else "")
            + (f" --presets {presets_dir}" if presets_dir is not None else ""),
        },
    }
    from bruno.io import atomic_write_json

    atomic_write_json(output, payload)
    _say(lmfit.fit_report(result))
    _say(f"felif calibrate: wrote {output}")
    return output


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validation_stimuli(quick: bool) -> tuple[list[Stimulus], list[Stimulus]]:
    """(trace/ISI stimuli, extra f-I levels): held-out DC levels, edges included, and a random
    spike train; none of them is a training stimulus."""
    if quick:
        main = [
            dc_stimulus(0.45e-9, 0.09),
            dc_stimulus(2.0e-9, 0.03),
            spike_train(120.0, 0.08, seed=11),
        ]
        return main, []
    main = [
        dc_stimulus(0.1e-9),
        dc_stimulus(0.27e-9),
        dc_stimulus(0.8e-9),
        dc_stimulus(2.0e-9),
        spike_train(150.0, 0.3, seed=7),
    ]
    extra = [dc_stimulus(i) for i in (0.13e-9, 0.19e-9, 0.45e-9, 1.3e-9)]
    return main, extra


def _matched_isi_errors(model: np.ndarray, reference: np.ndarray) -> np.ndarray:
    n = min(len(model), len(reference))
    if n < 2:
        return np.asarray([])
    m, r = np.diff(model[:n]), np.diff(reference[:n])
    return np.abs(m - r) / r


def _nrmse(a: np.ndarray, b: np.ndarray, span: float) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / span) if a.size else float("nan")


def validate(
    quick: bool = False,
    presets_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
    netlist: str | Path = NETLIST,
) -> bool:
    """Compact model (``<presets_dir>/felif.json``) vs ngspice on held-out stimuli; writes
    ``<reports_dir>/felif.json`` and figures; True if within targets."""
    preset = presets_location(quick, presets_dir) / PRESET_NAME
    output_dir = reports_location(quick, reports_dir)
    payload = load_preset(preset)
    parameters = {k: float(v) for k, v in payload["parameters"].items()}
    main, extra = validation_stimuli(quick)
    training = {s.name for s in training_stimuli(False)} | {s.name for s in training_stimuli(True)}
    leaked = [s.name for s in main + extra if s.name in training]
    if leaked:
        raise FeLIFCalibrationError(f"validation stimuli {leaked} are training stimuli")
    stimuli = main + extra
    _say(f"felif validate: {len(stimuli)} held-out stimuli through ngspice and the compact model")
    spice_traces = spice_runs(stimuli, netlist, progress="ngspice felif")
    runs, compact_wall = compact_runs(stimuli, [parameters], dtype=VALIDATION_DTYPE)
    runs64, _ = compact_runs(stimuli, [parameters], dtype="float64")
    precision_shift = 0.0
    for a, b in zip(runs[0], runs64[0], strict=True):
        n = min(len(a.spike_times), len(b.spike_times))
        if len(a.spike_times) != len(b.spike_times):
            precision_shift = float("inf")
        elif n:
            precision_shift = max(
                precision_shift,
                float(np.max(np.abs(a.spike_times - b.spike_times) / b.spike_times)),
            )
    compact_traces = runs[0]
    v_span = float(parameters["threshold_voltage"] - parameters["reset_voltage"])
    per_stimulus, all_isi, pooled_v, pooled_p = [], [], [], []
    failures: list[str] = []
    for s, sp, cm in zip(stimuli, spice_traces, compact_traces, strict=True):
        errors = _matched_isi_errors(cm.spike_times, sp.spike_times)
        n = min(len(cm.spike_times), len(sp.spike_times))
        spike_err = (
            np.abs(cm.spike_times[:n] - sp.spike_times[:n]) / sp.spike_times[:n]
            if n
            else np.asarray([])
        )
        mask = subthreshold_mask(sp.time, sp.spike_times, cm.spike_times)
        v_model = np.interp(sp.time, cm.time, cm.v)
        p_model = np.interp(sp.time, cm.time, cm.polarization)
        dv = (v_model - sp.v)[mask]
        p_span = 2 * float(np.max(np.abs(sp.polarization)))
        dp = (p_model - sp.polarization)[mask]
        if s in main:
            all_isi.extend(errors.tolist())
            pooled_v.append(dv)
            pooled_p.append(dp / p_span)
        count_ok = len(cm.spike_times) == len(sp.spike_times)
        if s in main and not count_ok:
            failures.append(
                f"{s.name}: {len(cm.spike_times)} compact vs {len(sp.spike_times)} SPICE spikes"
            )
        per_stimulus.append(
            {
                "stimulus": s.describe(),
                "held_out_role": "traces+isi" if s in main else "f-I only",
                "spikes_spice": sp.spike_times.tolist(),
                "spikes_compact": cm.spike_times.tolist(),
                "spike_count_equal": count_ok,
                "isi_rel_errors": errors.tolist(),
                "spike_time_rel_errors": spike_err.tolist(),
                "v_nrmse": _nrmse(v_model[mask], sp.v[mask], v_span),
                "p_nrmse": _nrmse(p_model[mask], sp.polarization[mask], p_span),
                "subthreshold_fraction": float(mask.mean()),
                "spice_wall_s": sp.wall_s,
                "spice_points": sp.points,
            }
        )
    all_isi = np.asarray(all_isi)
    v_all, p_all = np.concatenate(pooled_v), np.concatenate(pooled_p)
    v_nrmse = float(np.sqrt(np.mean(v_all**2)) / v_span)
    p_nrmse = float(np.sqrt(np.mean(p_all**2)))
    # f-I curve: steady rate = 1 / last ISI (or 1 / first spike time when only one spike)
    fi = []
    for s, sp, cm in zip(stimuli, spice_traces, compact_traces, strict=True):
        if s.dc is None:
            continue

        def rate(spikes):
            return (
                float(1 / np.diff(spikes)[-1])
                if len(spikes) >= 2
                else (float(1 / spikes[0]) if len(spikes) else 0.0)
            )

        fi.append(
            {
                "current_A": s.dc,
                "rate_spice_hz": rate(sp.spike_times),
                "rate_compact_hz": rate(cm.spike_times),
            }
        )
    fi.sort(key=lambda row: row["current_A"])
    fi_err = [
        abs(r["rate_compact_hz"] - r["rate_spice_hz"]) / r["rate_spice_hz"]
        for r in fi
        if r["rate_spice_hz"] > 0
    ]
    # convergence of the SPICE reference: halve the maximum step on one held-out stimulus
    conv_stimulus = dc_stimulus(2.0e-9, 0.03, name="convergence_dc_2nA") if quick else main[1]
    max_step = netlist_parameters(netlist).get("t_max", 2e-6)
    coarse = spice_runs([conv_stimulus], netlist, max_step=max_step)[0]
    fine = spice_runs([conv_stimulus], netlist, max_step=max_step / 2)[0]
    # for information: tolerances ten times tighter, and ngspice's defaults (what the deck's
    # explicit options protect against)
    tolerance_study = {}
    studies = (
        ()
        if quick
        else (
            (
                "reltol_abstol_tenfold_tighter",
                ".options reltol=1e-6 abstol=1e-17 vntol=1e-8 chgtol=1e-21 method=gear maxord=2",
            ),
            ("ngspice_default_tolerances_no_max_step", ".options reltol=1e-3"),
        )
    )
    for label, options in studies:
        step = max_step if label.startswith("reltol") else conv_stimulus.duration / 50
        try:
            other = spice_runs([conv_stimulus], netlist, max_step=step, options=options)[0]
            n = min(len(other.spike_times), len(fine.spike_times))
            shift = (
                float(
                    np.max(
                        np.abs(other.spike_times[:n] - fine.spike_times[:n]) / fine.spike_times[:n]
                    )
                )
                if n
                else None
            )
            tolerance_study[label] = {
                "options": options,
                "max_step_s": step,
                "spike_times_s": other.spike_times.tolist(),
                "max_rel_spike_time_change": shift,
            }
        except FeLIFCalibrationError as error:
            tolerance_study[label] = {"options": options, "error": str(error)}
    n_conv = min(len(coarse.spike_times), len(fine.spike_times))
    conv_shift = (
        float(
            np.max(
                np.abs(coarse.spike_times[:n_conv] - fine.spike_times[:n_conv])
                / fine.spike_times[:n_conv]
            )
        )
        if n_conv
        else float("nan")
    )
    # speed: simulated neuron-seconds per wall second; the compact model also as the trainer
    # uses it, a large batch (copies of the spike-train neuron, 0.1 s)
    speed_stimulus = next(s for s in main if s.dc is None)
    speed_stimulus = dataclasses.replace(speed_stimulus, duration=min(0.1, speed_stimulus.duration))
    batch = 128 if quick else 1024
    _, batch_wall = compact_runs(
        [speed_stimulus], [parameters] * batch, record=1e-3, dtype=VALIDATION_DTYPE
    )
    neuron_seconds = len(stimuli) * max(s.duration for s in stimuli)
    spice_sim = sum(s.duration for s in stimuli)
    spice_wall = sum(t.wall_s for t in spice_traces)
    isi_median = float(np.median(all_isi)) if all_isi.size else float("nan")
    isi_max = float(np.max(all_isi)) if all_isi.size else float("nan")
    checks = {
        "isi_rel_error_median": isi_median <= TARGETS["isi_rel_error_median"],
        "isi_rel_error_max": isi_max <= TARGETS["isi_rel_error_max"],
        "v_nrmse": v_nrmse <= TARGETS["v_nrmse"],
        "spike_counts_equal": not failures,
        "spice_convergence": bool(conv_shift < 0.005),
    }
    passed = all(checks.values())
    report = {
        "device": "felif",
        "passed": passed,
        "checks": checks,
        "targets": TARGETS,
        "isi_rel_error_median": isi_median,
        "isi_rel_error_max": isi_max,
        "isi_count": int(all_isi.size),
        "v_nrmse": v_nrmse,
        "p_nrmse": p_nrmse,
        "v_nrmse_definition": "RMS(v_compact - v_spice) over the sub-threshold samples of the "
        "held-out "
        "trace stimuli (same inter-spike interval, 0.2 ms guard around each reset), divided by "
        "threshold - reset voltage",
        "p_nrmse_definition": "same samples, divided by 2*max|P_spice|",
        "v_nrmse_max_stimulus": max(
            r["v_nrmse"] for r in per_stimulus if r["held_out_role"] != "f-I only"
        ),
        "compact_dtype": VALIDATION_DTYPE,
        "compact_float32_vs_float64_max_rel_spike_shift": _finite_or_none(precision_shift),
        "fi_curve": fi,
        "fi_rate_rel_error_max": float(max(fi_err)) if fi_err else float("nan"),
        "spice_convergence": {
            "stimulus": conv_stimulus.name,
            "max_step_s": [max_step, max_step / 2],
            "spike_times_s": [coarse.spike_times.tolist(), fine.spike_times.tolist()],
            "max_rel_spike_time_change": conv_shift,
            "target": 0.005,
            "tolerance_study": tolerance_study,
        },
        "speed": {
            "compact_neuron_seconds_per_wall_second": neuron_seconds / compact_wall,
            "compact_wall_s": compact_wall,
            "compact_neurons": len(stimuli),
            "compact_dt_s": DT,
            "compact_dtype": VALIDATION_DTYPE,
            "compact_batched_neuron_seconds_per_wall_second": batch
            * speed_stimulus.duration
            / batch_wall,
            "compact_batched_neurons": batch,
            "compact_batched_wall_s": batch_wall,
            "ngspice_neuron_seconds_per_wall_second": spice_sim / spice_wall,
            "ngspice_wall_s": spice_wall,
            "ngspice_runs": len(stimuli),
            "note": "compact: one batched bruno.device.simulate call over all validation stimuli; "
            "ngspice: one neuron per run, summed over runs (single core each)",
        },
        "per_stimulus": per_stimulus,
        "failures": failures,
        "preset": str(preset),
        "preset_created_utc": payload["provenance"].get("created_utc"),
        "netlist_sha256": spice.netlist_hash(netlist),
        "preset_netlist_sha256": payload["provenance"].get("netlist_sha256"),
        "quick": quick,
        "figures": ["felif_traces.png", "felif_fi.png"],
    }
    if report["netlist_sha256"] != report["preset_netlist_sha256"]:
        report["warning"] = (
            "the netlist changed since the preset was calibrated; run make calibrate"
        )
    _figures(output_dir, main, spice_traces, compact_traces, fi, parameters)
    from bruno.io import atomic_write_json

    name = PRESET_NAME  # the report is named like the preset it validates
    atomic_write_json(output_dir / name, report)
    _say(
        f"felif validate: ISI rel. error median {isi_median:.4f} max {isi_max:.4f} "
        f"(targets {TARGETS['isi_rel_error_median']}, {TARGETS['isi_rel_error_max']}); "
        f"v NRMSE {v_nrmse:.4f} (target {TARGETS['v_nrmse']}); P NRMSE {p_nrmse:.4f}; "
        f"SPICE max-step halving moves spikes {conv_shift:.2e}; "
        f"speed compact {report['speed']['compact_neuron_seconds_per_wall_second']:.3g} "
        f"({report['speed']['compact_batched_neuron_seconds_per_wall_second']:.3g} at {batch} "
        f"neurons) vs ngspice "
        f"{report['speed']['ngspice_neuron_seconds_per_wall_second']:.3g} neuron-s/s -> "
        f"{'PASSED' if passed else 'FAILED: ' + ', '.join(k for k, ok in checks.items() if not ok)}"
    )
    _say(f"felif validate: wrote {output_dir / name}")
    return passed


def _figures(
    output_dir: Path, main: Sequence[Stimulus], spice_traces, compact_traces, fi, parameters
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [i for i, s in enumerate(main) if s.dc is not None][:2]
    shown += [i for i, s in enumerate(main) if s.dc is None][:1]
    fig, axes = plt.subplots(
        3, len(shown), figsize=(4.8 * len(shown), 7.5), squeeze=False, sharex="col"
    )
    for col, i in enumerate(shown):
        s, sp, cm = main[i], spice_traces[i], compact_traces[i]
        ms = 1e3
        axes[0, col].plot(sp.time * ms, s.current(sp.time) * 1e9, color="0.3", lw=0.8)
        axes[0, col].set_title(s.name)
        axes[1, col].plot(sp.time * ms, sp.v, label="ngspice", lw=1.2)
        axes[1, col].plot(cm.time * ms, cm.v, "--", label="compact (Python)", lw=1.0)
        axes[2, col].plot(sp.time * ms, sp.polarization, lw=1.2)
        axes[2, col].plot(cm.time * ms, cm.polarization, "--", lw=1.0)
        axes[2, col].set_xlabel("time (ms)")
    axes[0, 0].set_ylabel("input (nA)")
    axes[1, 0].set_ylabel("membrane v (V)")
    axes[2, 0].set_ylabel("polarisation P (C/m²)")
    axes[1, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle("FeLIF: calibrated compact model vs ngspice (held-out stimuli)")
    atomic_save_figure(fig, output_dir / "felif_traces.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.8))
    current = np.asarray([r["current_A"] for r in fi]) * 1e9
    ax.plot(current, [r["rate_spice_hz"] for r in fi], "o-", label="ngspice")
    ax.plot(current, [r["rate_compact_hz"] for r in fi], "x--", label="compact (Python)")
    ax.set_xlabel("DC input current (nA)")
    ax.set_ylabel("firing rate (Hz)")
    ax.set_title("FeLIF f-I curve (held-out levels)")
    ax.legend()
    atomic_save_figure(fig, output_dir / "felif_fi.png")
    plt.close(fig)
