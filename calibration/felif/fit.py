"""FeLIF compact model (bruno.felif) against ngspice traces: batched compact runs, residuals and
the lmfit fit of the effective parameters."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibration.felif.common import (
    CLAMP_FRACTIONS,
    CLAMP_NEGATIVE,
    DT,
    DTYPE,
    FIT_VARIABLES,
    FIXED_FROM_NETLIST,
    I_MAX,
    LEAK_VARIABLES,
    NETLIST,
    RECORD,
    RHEOBASE_FIRE_BY,
    RHEOBASE_SCALE_GROWTH,
    RHEOBASE_SCALE_MAX,
    FeLIFCalibrationError,
    FitVariable,
    PresetError,
)
from calibration.felif.stimuli import Stimulus, check_stimulus, lowest_training_level, near_rheobase
from calibration.felif.traces import (
    CLAMP_MARGIN,
    Trace,
    clamped_leak,
    netlist_parameters,
    spice_runs,
)

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
    return out


@dataclasses.dataclass
class LeakFit:
    """The compact model's leak fitted to the circuit's clamped DC characteristic."""

    values: dict[str, float]  # LEAK_FIELDS, SI
    errors: dict[str, float | None]  # lmfit standard errors, SI
    voltages: np.ndarray  # V, held
    measured: np.ndarray  # A, the circuit's leak at those voltages
    fitted: np.ndarray  # A, the compact model's
    rheobase: float  # A, the compact leak at threshold: the lowest DC current that fires

    def record(self) -> dict[str, Any]:
        positive = self.voltages > 0
        return {
            "method": "ngspice voltage clamp on mem (traces.membrane_leak); lmfit leastsq on "
            "relative residuals at the positive voltages",
            "fitted_SI": self.values,
            "stderr_SI": self.errors,
            "voltages_V": self.voltages.tolist(),
            "circuit_A": self.measured.tolist(),
            "compact_A": self.fitted.tolist(),
            "rel_error_max_positive": float(
                np.max(np.abs(self.fitted[positive] / self.measured[positive] - 1))
            ),
            "rheobase_A": self.rheobase,
        }


def compact_leak(voltages: np.ndarray, parameters: Mapping[str, float]) -> np.ndarray:
    """The compact model's leak current (A) at ``voltages`` (:func:`bruno.felif.leak_current`)."""
    import torch

    from bruno import felif

    fields = {f.name for f in dataclasses.fields(felif.FeLIFParameters)}
    p = felif.FeLIFParameters(**{k: float(v) for k, v in parameters.items() if k in fields})
    v = torch.as_tensor(np.asarray(voltages, dtype=float), dtype=torch.float64)
    return felif.leak_current(v, p).numpy()


def clamp_voltages(threshold: float) -> np.ndarray:
    """Held voltages of the leak measurement: :data:`CLAMP_NEGATIVE` and fractions of threshold."""
    positive = [min(f * threshold, threshold - CLAMP_MARGIN) for f in CLAMP_FRACTIONS]
    return np.asarray([*CLAMP_NEGATIVE, *positive])


def fit_leak(netlist: str | Path = NETLIST, fixed: Mapping[str, float] | None = None) -> LeakFit:
    """Measure the circuit's leak with the membrane clamped and fit the compact leak to it.

    Only the positive branch is fitted (the rheobase and the sub-threshold drift live there);
    the reverse branch is reported by the record. ``fixed``: the design fields (area, threshold).
    """
    import lmfit

    fixed = dict(fixed if fixed is not None else design_parameters(netlist))
    threshold = float(fixed["threshold_voltage"])
    volts = clamp_voltages(threshold)
    measured = clamped_leak(volts, netlist)
    positive = volts > 0
    if np.any(measured[positive] <= 0):
        raise FeLIFCalibrationError(
            f"{netlist}: the clamped membrane draws no leak current at "
            f"{volts[positive][measured[positive] <= 0].tolist()} V; the compact model needs a "
            "leak that grows with the membrane voltage"
        )
    v_pos, i_pos = volts[positive], measured[positive]

    # start: for a given thermal voltage the leak is linear in (I0 A, I_dsc); the best thermal
    # voltage of that linear fit (relative residuals) is found on a log grid, then refined
    def linear(vt: float) -> tuple[float, np.ndarray]:
        basis = np.stack([np.expm1(v_pos / vt), np.ones_like(v_pos)], axis=1) / i_pos[:, None]
        coef, *_ = np.linalg.lstsq(basis, np.ones_like(v_pos), rcond=None)
        return float(np.sum((basis @ coef - 1.0) ** 2)), coef

    grid = np.geomspace(0.03, 1.5, 400)
    vt0 = float(grid[int(np.argmin([linear(vt)[0] for vt in grid]))])
    _, (a0, b0) = linear(vt0)
    start = {
        "leak_current_density": max(a0, 1e-30) / fixed["area"],
        "discharge_current": max(b0, 0.0),
        "leak_thermal_voltage": vt0,
    }
    params = lmfit.Parameters()
    for v in LEAK_VARIABLES:
        x = v.from_si(start[v.field])
        x = min(max(x, v.lower), v.upper)
        params.add(v.name, value=x, min=v.lower, max=v.upper)

    def si(p) -> dict[str, float]:
        return {v.field: v.to_si(p[v.name].value) for v in LEAK_VARIABLES}

    def residual(p) -> np.ndarray:
        return compact_leak(v_pos, {**fixed, **si(p)}) / i_pos - 1.0

    result = lmfit.minimize(residual, params, method="leastsq", xtol=1e-12, ftol=1e-12)
    values = si(result.params)
    errors = {
        v.field: (
            v.stderr_si(result.params[v.name].value, result.params[v.name].stderr)
            if result.params[v.name].stderr is not None
            else None
        )
        for v in LEAK_VARIABLES
    }
    full = {**fixed, **values}
    return LeakFit(
        values=values,
        errors=errors,
        voltages=volts,
        measured=measured,
        fitted=compact_leak(volts, full),
        rheobase=float(compact_leak(np.asarray([threshold]), full)[0]),
    )


def near_rheobase_scale(
    rheobase: float, netlist: str | Path = NETLIST, quick: bool = False
) -> tuple[float, Stimulus, Trace]:
    """The scale of the near-rheobase levels for this circuit (:data:`RHEOBASE_FIRE_BY`): the
    smallest of 1, 1.5, 1.5^2, ... at which ngspice fires the lowest training level early enough.

    Returns the scale, that stimulus and its trace (a training run: calibration reuses it)."""
    multiple, window = lowest_training_level(quick)
    scale = 1.0
    while True:
        (stimulus,) = near_rheobase(rheobase, [(multiple, window)], scale=scale)
        (trace,) = spice_runs([stimulus], netlist)
        spikes = trace.spike_times
        if len(spikes) and spikes[0] <= RHEOBASE_FIRE_BY * window:
            return scale, stimulus, trace
        scale *= RHEOBASE_SCALE_GROWTH
        if scale > RHEOBASE_SCALE_MAX or stimulus.dc * RHEOBASE_SCALE_GROWTH > I_MAX:
            raise FeLIFCalibrationError(
                f"{netlist}: the circuit does not fire within {RHEOBASE_FIRE_BY * window:g} s "
                f"even at {stimulus.dc * 1e12:.4g} pA ({stimulus.dc / rheobase:.3g} x its "
                f"rheobase {rheobase * 1e12:.4g} pA); its charge to threshold is outside what "
                "the near-rheobase stimuli (at most 2 s) can calibrate"
            )


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
    """Weighted residuals of one stimulus: spike intervals (times its ``fit_weight``), then
    first-interval v and P.

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
        out.append((g - r) / r / SIGMA_INTERVAL * stimulus.fit_weight)
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
