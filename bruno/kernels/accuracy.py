"""How far the fine path is from the FeLIF ODE: every backend and dtype against the float64 LSODA
reference (:mod:`bruno.kernels.ode_reference`), one fine step at a time, over start states a neuron
reaches (rest, reset, mid-switching, near threshold, at the negative clip) and constant inputs of
either sign from 1 pA to 1 uA.

Per (start, input) scenario it records the largest and median |v - v_ref| and |P - P_ref| over the
steps before the reference crosses threshold, and whether the backend crosses at the same fine step
(+-1) — a crossing the reference does not make is a *spurious spike*, a missing one a *lost spike*.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch

from bruno import kernels
from bruno.felif import V_CLIP, FeLIFParameters, FeLIFState
from bruno.kernels import ode_reference

DT = 1e-6  # s, the trainers' fine step
STEPS = 1000  # one 1 ms coarse step
CURRENTS = (1e-12, 2.55e-11, 1e-10, 1e-9, 3e-9, 1e-8, 3e-8, 1e-7, 1.65e-7, 3e-7, 1e-6)  # A


def start_states(p: FeLIFParameters) -> dict[str, tuple[float, float]]:
    """Named (v0, P0) starts: rest, reset, mid-switching, near threshold, the -V_CLIP clip."""
    ps = float(torch.as_tensor(p.saturation_polarization))
    reset_v = float(torch.as_tensor(p.reset_voltage))
    threshold = float(torch.as_tensor(p.threshold_voltage))
    return {
        "rest": (0.0, -ps),
        "reset": (reset_v, -ps),
        "switching": (1.02, -0.111),  # mid-switch, the fast feedback regime
        "near_threshold": (threshold - 0.1, 0.5 * ps),
        "negative_clip": (-V_CLIP, -ps),
    }


def _scenarios(
    p: FeLIFParameters,
    currents: tuple[float, ...] = CURRENTS,
    starts: tuple[str, ...] | None = None,
) -> list[tuple[str, float, float, float]]:
    rows = []
    for name, (v0, p0) in start_states(p).items():
        if starts is not None and name not in starts:
            continue
        for magnitude in currents:
            for sign in (1.0, -1.0):
                rows.append((name, v0, p0, sign * magnitude))
    return rows


def _first_crossing_step(held: np.ndarray) -> np.ndarray:
    """Per neuron, the 1-based fine step at which ``held`` first turns on (0: never)."""
    steps = held.shape[0]
    any_held = held.any(0)
    first = held.argmax(0) + 1
    return np.where(any_held, first, 0) if steps else np.zeros(held.shape[1], dtype=int)


def run_backend(
    scenarios: list[tuple[str, float, float, float]],
    p: FeLIFParameters,
    backend: str,
    dtype: torch.dtype,
    kernel: kernels.NativeKernel | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States after every fine step (steps, n) and the crossing steps, on one backend (or on the
    library ``kernel``)."""
    v = torch.tensor([s[1] for s in scenarios], dtype=dtype)
    pol = torch.tensor([s[2] for s in scenarios], dtype=dtype)
    current = torch.tensor([s[3] for s in scenarios], dtype=dtype)
    state, held = FeLIFState(v, pol), torch.zeros(len(scenarios), dtype=torch.bool)
    vs, ps, helds = [], [], []
    for _ in range(STEPS):
        state, held = kernels.integrate(
            state, current, p, DT, 1, held, backend=backend, kernel=kernel
        )
        vs.append(state.v.double().numpy())
        ps.append(state.polarization.double().numpy())
        helds.append(held.numpy())
    return np.array(vs), np.array(ps), _first_crossing_step(np.array(helds))


def survey(
    p: FeLIFParameters | None = None,
    methods: tuple[tuple[str, torch.dtype], ...] | None = None,
    currents: tuple[float, ...] = CURRENTS,
    starts: tuple[str, ...] | None = None,
    kernel: kernels.NativeKernel | None = None,
) -> dict:
    """The accuracy table: per method and start state, the worst and median errors and the spike
    agreement over the ``currents`` (each with either sign); plus every scenario's numbers.
    ``kernel`` runs that library for the "native" methods (the build's self-test)."""
    p = p or FeLIFParameters()
    if methods is None:
        methods = (("torch", torch.float64), ("torch", torch.float32))
        if kernel is not None or kernels.load() is not None:
            methods += (("native", torch.float64), ("native", torch.float32))
    scenarios = _scenarios(p, currents, starts)
    references = [ode_reference.trajectory(v0, p0, i, p, DT, STEPS) for _, v0, p0, i in scenarios]
    ref_cross = [
        0 if r.crossing_time is None else math.ceil(r.crossing_time / DT - 1e-9) for r in references
    ]
    rows, table = [], []
    for backend, dtype in methods:
        vs, ps, crossing = run_backend(
            scenarios, p, backend, dtype, kernel if backend == "native" else None
        )
        label = f"{backend}/{str(dtype).replace('torch.', '')}"
        for j, (name, _, _, current) in enumerate(scenarios):
            ref = references[j]
            valid = ~np.isnan(ref.v)
            valid &= np.arange(STEPS) < (crossing[j] - 1 if crossing[j] else STEPS)
            dv = np.abs(vs[valid, j] - ref.v[valid])
            dp = np.abs(ps[valid, j] - ref.polarization[valid])
            spurious = bool(crossing[j] and not ref_cross[j])
            lost = bool(ref_cross[j] and not crossing[j])
            rows.append(
                {
                    "method": label,
                    "start": name,
                    "current_A": current,
                    "max_abs_dv_V": float(dv.max()) if dv.size else 0.0,
                    "median_abs_dv_V": float(np.median(dv)) if dv.size else 0.0,
                    "max_abs_dp_C_per_m2": float(dp.max()) if dp.size else 0.0,
                    "crossing_step": int(crossing[j]),
                    "reference_crossing_step": int(ref_cross[j]),
                    "spurious_spike": spurious,
                    "lost_spike": lost,
                    "crossing_off_by_steps": (
                        abs(int(crossing[j]) - ref_cross[j]) if crossing[j] and ref_cross[j] else 0
                    ),
                }
            )
        for name in start_states(p):
            for band, low, high in (("pA", 0, 1e-10), ("nA", 1e-10, 1e-7), ("uA", 1e-7, 2e-6)):
                group = [
                    r
                    for r in rows
                    if r["method"] == label
                    and r["start"] == name
                    and low < abs(r["current_A"]) <= high
                ]
                if not group:
                    continue
                table.append(
                    {
                        "method": label,
                        "start": name,
                        "inputs": band,
                        "max_abs_dv_V": max(r["max_abs_dv_V"] for r in group),
                        "median_abs_dv_V": statistics.median(r["median_abs_dv_V"] for r in group),
                        "max_abs_dp_C_per_m2": max(r["max_abs_dp_C_per_m2"] for r in group),
                        "spurious_spikes": sum(r["spurious_spike"] for r in group),
                        "lost_spikes": sum(r["lost_spike"] for r in group),
                        "max_crossing_off_by_steps": max(r["crossing_off_by_steps"] for r in group),
                        "scenarios": len(group),
                    }
                )
    return {
        "dt_s": DT,
        "steps": STEPS,
        "reference": f"LSODA rtol {ode_reference.RTOL}, float64",
        "table": table,
        "scenarios": rows,
    }


def format_table(result: dict) -> str:
    """The table as aligned text."""
    lines = [
        f"{'method':14s} {'start':15s} {'in':3s} {'max|dv| V':>10s} {'med|dv| V':>10s} "
        f"{'max|dP|':>9s} {'spur':>4s} {'lost':>4s} {'off':>3s}"
    ]
    for r in result["table"]:
        lines.append(
            f"{r['method']:14s} {r['start']:15s} {r['inputs']:3s} {r['max_abs_dv_V']:10.3g} "
            f"{r['median_abs_dv_V']:10.3g} {r['max_abs_dp_C_per_m2']:9.2g} "
            f"{r['spurious_spikes']:4d} {r['lost_spikes']:4d} {r['max_crossing_off_by_steps']:3d}"
        )
    return "\n".join(lines)
