"""An independent float64 reference for the fine path: the FeLIF ODE
(:func:`bruno.felif.derivatives`) integrated by LSODA (scipy) at rtol 1e-10, not by any
fixed-step scheme.

It answers "how far is the fine step from the model it discretises?" for one neuron from a given
state under a constant input: the membrane clamp (+-V_CLIP) is a state constraint (the membrane
stops at the clip, the polarisation keeps evolving there), and the trainers' hold rule ends the
trajectory at the first threshold crossing, whose time is returned. The build's self-test
(:mod:`bruno.kernels.selftest`) and tests/test_bruno_fine_path.py measure the backends against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bruno.felif import (
    V_CLIP,
    FeLIFParameters,
    FeLIFState,
    derivatives,
    ferroelectric_field,
    switching_rate,
)

RTOL = 1e-10
ATOL = (1e-12, 1e-12)  # V, C/m^2 (far below float32 resolution: 2e-7 V, 1.5e-8 C/m^2)


@dataclass
class ReferenceTrajectory:
    """States at the end of each fine step (NaN from the crossing step on) and the crossing time."""

    v: np.ndarray  # (steps,) V
    polarization: np.ndarray  # (steps,) C/m^2
    crossing_time: float | None  # s, first time v exceeds the threshold; None if it never does


def _scalar_parameters(p: FeLIFParameters) -> FeLIFParameters:
    return p.to(dtype=torch.float64)


def trajectory(
    v0: float,
    polarization0: float,
    current: float,
    p: FeLIFParameters,
    dt: float,
    steps: int,
) -> ReferenceTrajectory:
    """One neuron from (v0, P0) under a constant ``current`` (A), sampled every ``dt`` (s)."""
    from scipy.integrate import solve_ivp

    p = _scalar_parameters(p)
    threshold = float(torch.as_tensor(p.threshold_voltage))
    drive = torch.tensor(float(current), dtype=torch.float64)

    def rhs(_t: float, y: np.ndarray) -> list[float]:
        state = FeLIFState(*(torch.tensor(x, dtype=torch.float64) for x in y))
        dv, dp = derivatives(state, drive, p)
        return [float(dv), float(dp)]

    def pinned_rhs(_t: float, y: np.ndarray, pinned: float, target: float) -> list[float]:
        # at the clip the field keeps the clip's sign, so the target is fixed: integrate the
        # distance u = P - target, du/dt = -u r(E), which does not round away near the target
        v = torch.tensor(pinned, dtype=torch.float64)
        field = ferroelectric_field(v, torch.tensor(target + y[0], dtype=torch.float64), p)
        return [float(-y[0] * switching_rate(field, p))]

    def crossing(_t, y, *_):
        return y[0] - threshold

    crossing.terminal, crossing.direction = True, 1

    def clip(_t, y, *_):
        return abs(y[0]) - V_CLIP

    clip.terminal, clip.direction = True, 1

    times = np.arange(1, steps + 1) * dt
    v_out = np.full(steps, np.nan)
    p_out = np.full(steps, np.nan)
    if abs(v0) >= V_CLIP:  # starts at the clip: leave it a hair inside, the event pins it
        v0 = float(np.copysign(V_CLIP * (1 - 1e-12), v0))
    solution = solve_ivp(
        rhs,
        (0.0, steps * dt),
        [float(v0), float(polarization0)],
        method="LSODA",
        t_eval=times,
        rtol=RTOL,
        atol=ATOL,
        events=[crossing, clip],
        max_step=dt,
    )
    if solution.status < 0:
        raise RuntimeError(f"ODE reference failed: {solution.message}")
    sampled = np.asarray(solution.y, dtype=float).reshape(2, -1)
    count = sampled.shape[1]
    v_out[:count], p_out[:count] = sampled
    crossing_time = float(solution.t_events[0][0]) if len(solution.t_events[0]) else None
    if crossing_time is None and len(solution.t_events[1]):
        # at the clip: the membrane stays there, the polarisation goes on (P-only ODE)
        start = float(solution.t_events[1][0])
        pinned = float(np.copysign(V_CLIP, solution.y_events[1][0][0]))
        target = float(np.copysign(float(torch.as_tensor(p.saturation_polarization)), pinned))
        rest = times[times > start]
        if len(rest):
            tail = solve_ivp(
                pinned_rhs,
                (start, steps * dt),
                [float(solution.y_events[1][0][1]) - target],
                method="LSODA",
                t_eval=rest,
                rtol=RTOL,
                atol=1e-20,
                max_step=dt,
                args=(pinned, target),
            )
            v_out[steps - len(rest) :] = pinned
            p_out[steps - len(rest) :] = target + tail.y[0]
    if crossing_time is not None:
        last = int(np.ceil(crossing_time / dt - 1e-9))  # the step that crosses: not compared
        v_out[last - 1 :] = np.nan
        p_out[last - 1 :] = np.nan
    return ReferenceTrajectory(v_out, p_out, crossing_time)
