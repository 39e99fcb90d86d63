"""FeLIF traces from ngspice: decks with the stimulus and tolerances patched in, runs in worker
processes, spike detection and comparison helpers."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bruno import execution
from calibration import (
    spice,
)
from calibration.felif.common import NETLIST, RECORD, FeLIFCalibrationError
from calibration.felif.stimuli import Stimulus, check_stimulus

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
    return _drive(deck, netlist, stimulus.spice_source())


def _drive(deck: str, netlist: str | Path, source: str) -> str:
    """``deck`` with its one input source line replaced by ``source`` and its .meas lines gone."""
    if len(_INPUT_LINE.findall(deck)) != 1:
        raise spice.SpiceError(
            f"{netlist}: expected exactly one input source line 'Iin 0 mem ...' to drive"
        )
    return _MEAS_LINE.sub("", _INPUT_LINE.sub(lambda _: source, deck))


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
    results, failures = execution.run_many(_spice_job, jobs, runs_per_worker=8, progress=progress)
    if failures:
        detail = "; ".join(f"{stimuli[f.index].name}: {f.error}" for f in failures)
        raise FeLIFCalibrationError(
            f"ngspice failed for {len(failures)} of {len(stimuli)} FeLIF runs of {netlist}: "
            f"{detail}"
        )
    return results


# Voltage clamp: the membrane's static current-voltage characteristic
CLAMP_HOLD = 2e-3  # s per held voltage
CLAMP_SWITCH = 0.1  # s at the highest positive voltage first: every domain switches to +Ps
CLAMP_MARGIN = 0.03  # V below threshold: the highest held voltage (the comparator stays off)
CLAMP_MIN = 0.4  # V, |v| held at least: nearer 0 V the ferroelectric creeps (a slow current)


def membrane_leak(voltages: Sequence[float], netlist: str | Path = NETLIST) -> np.ndarray:
    """The circuit's static leak current (A) with the membrane held at ``voltages`` (V).

    The input source is replaced by a voltage source on ``mem``. It steps through the negative
    voltages upwards from the initial state (polarisation -Ps, which they keep), then holds
    threshold - :data:`CLAMP_MARGIN` for :data:`CLAMP_SWITCH` (every domain switches to +Ps,
    the slowest within that time to < 0.1 pA) and steps through the positive ones downwards
    (+Ps is kept). At the end of each hold the capacitors
    and the ferroelectric carry no current, so the current the source supplies is what the leak
    elements draw: the DC characteristic the compact model's leak must have. The comparator and
    reset stay off below threshold by :data:`CLAMP_MARGIN`.
    """
    volts = np.asarray(voltages, dtype=float)
    params = netlist_parameters(netlist)
    threshold = params.get("vthr", 2.5)
    top = threshold - CLAMP_MARGIN
    if volts.size == 0 or np.any(np.abs(volts) < CLAMP_MIN) or volts.max() > top:
        raise FeLIFCalibrationError(
            f"membrane_leak: held voltages need {CLAMP_MIN:g} V <= |v| and v <= {top:g} V "
            f"(threshold - margin); got {volts.tolist()}"
        )
    order = [*np.sort(volts[volts < 0]), *np.sort(volts[volts > 0])[::-1]]
    edge, t, points, ends, switched = 1e-6, 0.0, ["0 0"], [], False
    for v in order:
        if v > 0 and not switched:
            # switch every domain to +Ps at the highest voltage allowed before the positive ones
            points += [f"{t + edge:.9g} {top:.9g}", f"{t + CLAMP_SWITCH:.9g} {top:.9g}"]
            t += CLAMP_SWITCH
            switched = True
        points += [f"{t + edge:.9g} {v:.9g}", f"{t + CLAMP_HOLD:.9g} {v:.9g}"]
        t += CLAMP_HOLD
        ends.append(t)
    source = f"Vhold mem 0 PWL({' '.join(points)})"
    deck = _drive(spice.read_netlist(netlist), netlist, source)
    max_step = params.get("t_max", 2e-6)
    analysis = f"tran {max_step:.6g} {t:.9g} 0 {max_step:.6g} uic"
    result = spice.simulate(deck, analysis, name=f"{Path(netlist).name}[voltage clamp]")
    # the source supplies what the leak draws
    measured = np.interp(np.asarray(ends) - 2 * max_step, result["time"], -result["vhold#branch"])
    by_voltage = dict(zip(order, measured, strict=True))
    return np.asarray([by_voltage[v] for v in volts])


def _leak_job(arguments: tuple[list[float], str]) -> np.ndarray:
    return membrane_leak(*arguments)


def clamped_leak(voltages: Sequence[float], netlist: str | Path = NETLIST) -> np.ndarray:
    """:func:`membrane_leak` in a worker process, as every calibration run of ngspice is (its
    shared library stays out of this process); a failure raises, naming the netlist."""
    job = ([float(v) for v in voltages], str(netlist))
    results, failures = execution.run_many(_leak_job, [job])
    if failures:
        raise FeLIFCalibrationError(
            f"ngspice failed for the voltage clamp of {netlist}: {failures[0].error}"
        )
    return results[0]
