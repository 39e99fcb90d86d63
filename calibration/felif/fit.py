"""FeLIF compact model (bruno.felif) against ngspice traces: batched compact runs, residuals and
the lmfit fit of the effective parameters."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from calibration import (
    spice,
)
from calibration.felif.common import (
    BOLTZMANN_OVER_Q,
    DT,
    DTYPE,
    FIT_VARIABLES,
    FIXED_FROM_NETLIST,
    NETLIST,
    RECORD,
    FeLIFCalibrationError,
    FitVariable,
    PresetError,
)
from calibration.felif.stimuli import Stimulus, check_stimulus
from calibration.felif.traces import Trace, netlist_parameters

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
