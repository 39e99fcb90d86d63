"""Ferroelectric leaky integrate-and-fire (FeLIF) compact model: the one place its physics lives.

The model is the paper's (SPEC §3): a membrane node of capacitance ``C_tot`` driven by an input
current, discharged by a diode-like leak, and loaded by a FeCAP whose polarisation follows a
nucleation-limited switching law. Units are SI throughout: volts, amperes, seconds, metres,
coulombs per square metre.

Everything here is a pure function of ``(state, input_current, parameters)`` so that the fine path,
the coarse step, calibration and the command line all evaluate the same equations; the spike rules
(threshold, hold, reset) are defined here once too. This module imports nothing from ``bruno``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

VACUUM_PERMITTIVITY = 8.8541878128e-12  # F/m
# V; the membrane voltage is clipped to +/- this value. The negative floor is the compact form of
# the netlist's clamp junction (netlists/felif.cir: -4.94 V at 0.1 nA to -5.08 V at 20 nA of
# negative drive); the positive one is never reached by the circuit, whose comparator resets at
# the threshold, and only bounds the step under inputs far above the working range.
V_CLIP = 5.0
# euler_step caps rate*dt at this before exp(-rate*dt): exp(-60) ~ 9e-27 is far below the
# rounding of P (|P - target| is 0 or >= ulp(Ps)), so values are unchanged, no denormals arise,
# and torch's exp stays on its fast path (much slower on arguments like -1e7). Same in the kernel.
DECAY_CAP = 60.0


@dataclasses.dataclass(frozen=True)
class FeLIFParameters:
    """Device parameters of one FeLIF neuron (or, as tensors, one per neuron).

    Field values may be Python floats or tensors broadcastable against the state, so that
    device-to-device variability is just a tensor of per-neuron values.
    """

    area: float | torch.Tensor = 25e-12  # m^2, FeCAP area A
    ferroelectric_thickness: float | torch.Tensor = 10e-9  # m, t_fe
    interlayer_thickness: float | torch.Tensor = 1.375e-9  # m, t_int
    ferroelectric_permittivity: float | torch.Tensor = 25.2  # relative, eps_fe
    interlayer_permittivity: float | torch.Tensor = 33.0  # relative, eps_int
    activation_field: float | torch.Tensor = 1.27e9  # V/m, Ea
    saturation_polarization: float | torch.Tensor = 0.22  # C/m^2, Ps
    switching_time_constant: float | torch.Tensor = 1e-13  # s, tau0
    switching_exponent: float | torch.Tensor = 1.3  # alpha
    leak_current_density: float | torch.Tensor = 1e-4  # A/m^2, I0
    leak_thermal_voltage: float | torch.Tensor = 0.32  # V, Vt
    parasitic_capacitance: float | torch.Tensor = 15e-15  # F, C_par
    discharge_current: float | torch.Tensor = 10e-12  # A, I_dsc
    threshold_voltage: float | torch.Tensor = 2.5  # V, V_thr
    reset_voltage: float | torch.Tensor = -1.5  # V, membrane value after a spike
    soft_field: float | torch.Tensor = 1e3  # V/m, E_soft: keeps the rate finite at E = 0
    input_gain: float | torch.Tensor = 1.0  # dimensionless scale on the input current

    @property
    def total_capacitance(self) -> float | torch.Tensor:
        """C_tot = eps0 eps_fe A / t_fe + C_par (F): the membrane's small-signal capacitance."""
        return (
            VACUUM_PERMITTIVITY
            * self.ferroelectric_permittivity
            * self.area
            / self.ferroelectric_thickness
            + self.parasitic_capacitance
        )

    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Return a copy whose tensor fields live on ``device`` with ``dtype``."""
        changes = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                changes[name] = value.to(device=device, dtype=dtype)
        return dataclasses.replace(self, **changes)


class FeLIFState(NamedTuple):
    """Membrane voltage ``v`` (V) and ferroelectric polarisation ``polarization`` (C/m^2)."""

    v: torch.Tensor
    polarization: torch.Tensor


def initial_state(
    shape: tuple[int, ...] | torch.Size,
    parameters: FeLIFParameters,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> FeLIFState:
    """The rest state v = 0, P = -Ps (the FeCAP fully polarised downwards)."""
    v = torch.zeros(shape, device=device, dtype=dtype)
    polarization = -torch.as_tensor(parameters.saturation_polarization, device=device, dtype=dtype)
    return FeLIFState(v=v, polarization=polarization.expand(shape).clone())


def ferroelectric_field(
    v: torch.Tensor, polarization: torch.Tensor, p: FeLIFParameters
) -> torch.Tensor:
    """Electric field in the ferroelectric layer (V/m) of the interlayer/ferroelectric stack."""
    numerator = (
        p.interlayer_permittivity * v
        - (p.interlayer_thickness / VACUUM_PERMITTIVITY) * polarization
    )
    denominator = (
        p.ferroelectric_thickness * p.interlayer_permittivity
        + p.interlayer_thickness * p.ferroelectric_permittivity
    )
    return numerator / denominator


def switching_rate(field: torch.Tensor, p: FeLIFParameters) -> torch.Tensor:
    """Nucleation-limited switching rate 1/tau(E) (1/s)."""
    exponent = (p.activation_field / (field.abs() + p.soft_field)) ** p.switching_exponent
    return torch.exp(-exponent) / (p.switching_time_constant)


def leak_current(v: torch.Tensor, p: FeLIFParameters) -> torch.Tensor:
    """Current through the leak element (A): a diode branch plus a constant discharge current."""
    return torch.sign(v) * (
        p.leak_current_density * p.area * (torch.exp(v / p.leak_thermal_voltage) - 1.0)
        + p.discharge_current
    )


def derivatives(
    state: FeLIFState, input_current: torch.Tensor, p: FeLIFParameters
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dv/dt, dP/dt) of the FeLIF neuron for an input current (A)."""
    field = ferroelectric_field(state.v, state.polarization, p)
    d_polarization = (
        torch.sign(field) * p.saturation_polarization - state.polarization
    ) * switching_rate(field, p)
    polarization_current = p.area * d_polarization
    dv = (
        p.input_gain * input_current - leak_current(state.v, p) - polarization_current
    ) / p.total_capacitance
    return dv, d_polarization


def euler_step(
    state: FeLIFState, input_current: torch.Tensor, p: FeLIFParameters, dt: float
) -> FeLIFState:
    """One step of length ``dt`` (s): exponential integrator for P, charge-conserving update of v.

    With the field ``E`` and the rate ``r = switching_rate(E)`` frozen at the start of the step,
    the switching law ``dP/dt = (sign(E) Ps - P) r`` is integrated exactly::

        target = sign(E) Ps
        P'     = clamp(target + (P - target) exp(-min(r dt, DECAY_CAP)), -Ps, Ps)
        v'     = clamp(v + dt (gain I_in - I_leak(v)) / C_tot - A (P' - P) / C_tot, -V_CLIP, V_CLIP)

    i.e. the FeCAP current over the step is ``A (P' - P) / dt`` (the charge the polarisation takes
    up is taken from the membrane). Input and leak currents are explicit (forward Euler).
    Explicit Euler in P would have ``dP'/dP = 1 - r dt`` (about -1e3 at dt = 1 us once the
    switching rate reaches 1e9/s, so gradients through many steps overflow); this step is stable
    for any ``dt``, with ``0 < dP'/dP = exp(-r dt) <= 1`` at frozen field, and equals explicit
    Euler to first order where ``r dt << 1``. The name is kept for compatibility: this is the one
    reference step that the fused fine path (bruno/kernels/felif_kernel.c) and the coarse step
    agree with.
    No spike handling happens here.
    """
    v, polarization = state.v, state.polarization
    field = ferroelectric_field(v, polarization, p)
    target = torch.sign(field) * p.saturation_polarization
    decay = torch.exp(-torch.clamp(switching_rate(field, p) * dt, max=DECAY_CAP))
    ps = torch.as_tensor(p.saturation_polarization, dtype=v.dtype, device=v.device)
    new_polarization = torch.minimum(
        torch.maximum(target + (polarization - target) * decay, -ps), ps
    )
    c_tot = p.total_capacitance
    new_v = (
        v
        + dt * (p.input_gain * input_current - leak_current(v, p)) / c_tot
        - p.area * (new_polarization - polarization) / c_tot
    )
    return FeLIFState(v=torch.clamp(new_v, -V_CLIP, V_CLIP), polarization=new_polarization)


# ---------------------------------------------------------------------------------------------
# Spike rules (SPEC §3), the one definition the trainers, the device simulation and the kernel's
# reference use. A neuron spikes when its membrane exceeds V_thr. Trainers *hold* a neuron that
# crossed for the rest of the coarse step (hold_step) and reset it at the next coarse step
# (reset); a circuit (bruno.device.simulate) resets it at the fine step that crossed.
# ---------------------------------------------------------------------------------------------


def crossed(v: torch.Tensor, p: FeLIFParameters) -> torch.Tensor:
    """Which neurons are above threshold (bool; no gradient: it is a decision)."""
    threshold = torch.as_tensor(p.threshold_voltage, dtype=v.dtype, device=v.device)
    return v.detach() > threshold


def hold_step(
    state: FeLIFState,
    held: torch.Tensor,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
) -> tuple[FeLIFState, torch.Tensor]:
    """One fine step in which neurons already ``held`` keep their state; returns (state, held)."""
    new = euler_step(state, current, p, dt)
    v = torch.where(held, state.v, new.v)
    polarization = torch.where(held, state.polarization, new.polarization)
    return FeLIFState(v, polarization), held | crossed(v, p)


def reset(state: FeLIFState, fired: torch.Tensor, p: FeLIFParameters) -> FeLIFState:
    """Neurons that ``fired`` go to (reset_voltage, -Ps); the others keep their state."""
    v, polarization = state.v, state.polarization
    reset_v = torch.as_tensor(p.reset_voltage, dtype=v.dtype, device=v.device)
    ps = torch.as_tensor(p.saturation_polarization, dtype=v.dtype, device=v.device)
    return FeLIFState(
        v=torch.where(fired, reset_v, v), polarization=torch.where(fired, -ps, polarization)
    )
