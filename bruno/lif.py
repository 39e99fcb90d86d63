"""Current-based leaky integrate-and-fire neuron, the baseline (SPEC §3), as a pure step function.

Exact-exponential discretisation with an explicit time step ``dt`` (so the dynamics do not depend on
``dt`` beyond sampling), decay factors ``alpha = exp(-dt/tau_syn)`` and ``beta = exp(-dt/tau_mem)``:

    I_{t+1} = alpha I_t + (1 - alpha) x_t          (synaptic current; tau_syn = 0: I = x)
    v_{t+1} = beta v_t + (1 - beta) I_{t+1}        (membrane; a constant drive x settles at v = x)
    s_{t+1} = Heaviside(v_{t+1} - threshold)       (surrogate gradient, bruno.surrogate)
    reset:  "zero" v <- v (1 - s) + s reset_potential  or  "subtract" v <- v - s threshold,
            with s detached (reset_potential 0, the rest level, by default; below 0 it is a
            reset under rest like the FeLIF's -1.5 V)
    floor (optional): v <- max(v, floor) before the spike test: a lower rail, like the FeLIF
            membrane's -5 V clip (the state below it is lost and no gradient passes there;
            floor_gradient "straight_through" passes the gradient as if there were no rail)
    adaptation (optional, off at 0): a_{t+1} = rho a_t + s_t, rho = exp(-dt/tau_adaptation),
            and the spike test is against threshold + adaptation a_{t+1}: each spike raises the
            threshold by ``adaptation``, decaying with ``tau_adaptation`` (spike-frequency
            adaptation, the LSNN's adaptive threshold; the reset stays as above, by the base
            threshold)

so a neuron fires for a sustained drive x > threshold (threshold 1 by default).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch

from bruno.surrogate import LIF_SLOPE, spike


@dataclasses.dataclass(frozen=True)
class LIFParameters:
    tau_mem: float | torch.Tensor = 20e-3  # s
    tau_syn: float | torch.Tensor = 5e-3  # s; 0 disables the synaptic filter
    threshold: float | torch.Tensor = 1.0  # dimensionless
    dt: float = 1e-3  # s
    reset: str = "zero"  # "zero" or "subtract"
    floor: float | None = None  # lower rail of the membrane (units of x); None: no rail
    floor_gradient: str = "none"  # "none" (the rail's own) or "straight_through"
    reset_potential: float = 0.0  # membrane after a "zero" reset (units of x)
    adaptation: float = 0.0  # threshold increase per spike (units of x); 0: no adaptation
    tau_adaptation: float = 0.1  # s; decay of the threshold increase

    def validate(self) -> None:
        if not (isinstance(self.dt, int | float) and math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {self.dt!r}")
        if self.reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', got {self.reset!r}")
        if self.floor_gradient not in ("none", "straight_through"):
            raise ValueError(
                f"floor_gradient must be 'none' or 'straight_through', got {self.floor_gradient!r}"
            )
        if self.floor is not None and not (math.isfinite(self.floor) and self.floor < 0):
            raise ValueError(
                f"floor must be a finite number < 0 (below rest) or None, got {self.floor!r}"
            )
        if not math.isfinite(self.reset_potential) or (
            self.floor is not None and self.reset_potential < self.floor
        ):
            raise ValueError(
                "reset_potential must be finite and not below the floor, "
                f"got {self.reset_potential!r}"
            )
        if self.reset == "subtract" and self.reset_potential != 0.0:
            raise ValueError(
                "reset_potential is where a 'zero' reset sets v; reset 'subtract' has none"
            )
        if not (math.isfinite(self.adaptation) and self.adaptation >= 0):
            raise ValueError(f"adaptation must be a finite number >= 0, got {self.adaptation!r}")
        if not (math.isfinite(self.tau_adaptation) and self.tau_adaptation > 0):
            raise ValueError(
                f"tau_adaptation must be a finite number > 0, got {self.tau_adaptation!r}"
            )
        for name, low in (("tau_mem", 0.0), ("tau_syn", 0.0), ("threshold", 0.0)):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float64)
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} contains NaN or Inf")
            if name == "tau_syn" and not bool((value >= low).all()):
                raise ValueError("tau_syn must be >= 0")
            if name != "tau_syn" and not bool((value > low).all()):
                raise ValueError(f"{name} must be > 0")


class LIFState(NamedTuple):
    syn: torch.Tensor  # synaptic current (units of x)
    v: torch.Tensor  # membrane (units of x), after reset
    spikes: torch.Tensor  # spikes of the last step (0/1)
    adaptation: torch.Tensor  # the spike trace a that raises the threshold (0 without adaptation)


def decay(tau: float | torch.Tensor, dt: float, like: torch.Tensor) -> torch.Tensor:
    tau = torch.as_tensor(tau, dtype=like.dtype, device=like.device)
    safe = torch.where(tau > 0, tau, torch.ones_like(tau))
    return torch.where(tau > 0, torch.exp(-dt / safe), torch.zeros_like(tau))


def lif_step(
    state: LIFState, x: torch.Tensor, p: LIFParameters, slope: float = LIF_SLOPE
) -> LIFState:
    """One step of ``p.dt``; returns the new state (membrane after reset, spikes of this step)."""
    alpha = decay(p.tau_syn, p.dt, x)
    beta = decay(p.tau_mem, p.dt, x)
    syn = alpha * state.syn + (1 - alpha) * x
    v = beta * state.v + (1 - beta) * syn
    if p.floor is not None:
        railed = v.clamp_min(p.floor)
        v = v + (railed - v).detach() if p.floor_gradient == "straight_through" else railed
    threshold = torch.as_tensor(p.threshold, dtype=x.dtype, device=x.device)
    trace = state.adaptation
    if p.adaptation:
        trace = math.exp(-p.dt / p.tau_adaptation) * trace + state.spikes
        s = spike(v - (threshold + p.adaptation * trace), slope)
    else:
        s = spike(v - threshold, slope)
    fired = s.detach()
    if p.reset == "zero":
        v = v * (1 - fired) + fired * p.reset_potential
    else:
        v = v - fired * threshold
    return LIFState(syn, v, s, trace)


def simulate_scalar(
    x: list[float], p: LIFParameters, record_every: int = 1
) -> tuple[list[float], list[float], list[float], list[float]]:
    """One LIF neuron over the drive sequence ``x`` in plain Python floats (fast for long runs).

    Same update as :func:`lif_step` (a test pins them together); returns (times, v, syn,
    spike_times), the traces sampled every ``record_every`` steps including t = 0.
    """
    dt = p.dt
    tau_mem, tau_syn, threshold = float(p.tau_mem), float(p.tau_syn), float(p.threshold)
    alpha = math.exp(-dt / tau_syn) if tau_syn > 0 else 0.0
    beta = math.exp(-dt / tau_mem)
    rho = math.exp(-dt / p.tau_adaptation)
    syn = v = trace = 0.0
    fired = False
    times, vs, syns, spikes = [0.0], [0.0], [0.0], []
    for k, drive in enumerate(x):
        syn = alpha * syn + (1 - alpha) * drive
        v = beta * v + (1 - beta) * syn
        if p.floor is not None:
            v = max(v, p.floor)
        if p.adaptation:
            trace = rho * trace + float(fired)
        fired = v > threshold + p.adaptation * trace
        if fired:
            spikes.append((k + 1) * dt)
            v = p.reset_potential if p.reset == "zero" else v - threshold
        if (k + 1) % record_every == 0:
            times.append((k + 1) * dt)
            vs.append(v)
            syns.append(syn)
    return times, vs, syns, spikes
