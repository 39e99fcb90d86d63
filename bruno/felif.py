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
# |z| below which the phi functions of euler_step are evaluated by their Taylor series (the closed
# forms cancel there); the same in the kernels. Truncation error < 3e-10 relative at the switch.
PHI_SERIES = 0.1


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


def _stack_denominator(p: FeLIFParameters) -> float | torch.Tensor:
    """t_fe eps_int + t_int eps_fe (m): the field's common denominator in the two-layer stack."""
    return (
        p.ferroelectric_thickness * p.interlayer_permittivity
        + p.interlayer_thickness * p.ferroelectric_permittivity
    )


def ferroelectric_field(
    v: torch.Tensor, polarization: torch.Tensor, p: FeLIFParameters
) -> torch.Tensor:
    """Electric field in the ferroelectric layer (V/m) of the interlayer/ferroelectric stack."""
    numerator = (
        p.interlayer_permittivity * v
        - (p.interlayer_thickness / VACUUM_PERMITTIVITY) * polarization
    )
    return numerator / _stack_denominator(p)


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


def phi_functions(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi1(z) = (e^z - 1) / z and phi2(z) = (e^z - 1 - z) / z^2, the weights of the exponential
    integrator: for the linear ODE y' = lam y + b, y(dt) = y0 + dt phi1(lam dt) (lam y0 + b).
    Taylor series below |z| = PHI_SERIES (the closed forms cancel there), expm1 above."""
    small = z.abs() < PHI_SERIES
    zs = torch.where(small, torch.ones_like(z), z)  # no 0/0 in the unused branch (nor its grad)
    e = torch.expm1(zs)
    phi1 = torch.where(
        small, 1 + z * (1 / 2 + z * (1 / 6 + z * (1 / 24 + z * (1 / 120 + z / 720)))), e / zs
    )
    phi2 = torch.where(
        small,
        1 / 2 + z * (1 / 6 + z * (1 / 24 + z * (1 / 120 + z * (1 / 720 + z / 5040)))),
        (e - zs) / (zs * zs),
    )
    return phi1, phi2


def feedback_field_coefficient(p: FeLIFParameters) -> float | torch.Tensor:
    """dE/dP (V m / C) along the membrane's charge balance: a polarisation change dP takes
    A dP from the membrane (dv = -A dP / C_tot), and both lower the ferroelectric field."""
    return -(
        p.interlayer_thickness / VACUUM_PERMITTIVITY
        + p.interlayer_permittivity * p.area / p.total_capacitance
    ) / _stack_denominator(p)


def euler_step(
    state: FeLIFState, input_current: torch.Tensor, p: FeLIFParameters, dt: float
) -> FeLIFState:
    """One step of length ``dt`` (s) of the FeLIF ODE: exponential Rosenbrock–Euler in the
    polarisation, charge-conserving in the membrane.

    The switching law ``dP/dt = g = (T - P) r(E)`` (``T = sign(E) Ps``) is stiff through its own
    feedback: switching takes charge from the membrane, which lowers the field and the rate. With
    ``k = dE/dP`` along that charge balance (:func:`feedback_field_coefficient`) its eigenvalue is
    ``lam = -r + (T - P) r'(E) k <= -r``, and the step integrates P as the linearisation about
    the start (g, lam, and g's response to the membrane's drive, ``b = (gain I - I_leak) / C``)::

        dP = dt phi1(lam dt) g + dt^2 phi2(lam dt) (T - P) r'(E) dE/dv b
        P' = P + clamp(dP, -Ps - P, Ps - P)
        v' = clamp(v + dt b - A clamp(dP, ...) / C_tot, -V_CLIP, V_CLIP)

    (:func:`phi_functions`; ``b = 0`` where the membrane sits at a clip and ``b`` pushes
    outwards). It is second order where the step resolves the switching, exact for a frozen
    field, and stable for any ``dt``: where the feedback is fast (``|lam| dt >> 1``) the
    increment tends to ``-g / lam``, the step to the quasi-equilibrium, so a step can no longer
    switch the whole FeCAP at a frozen field and drive the membrane negative or to the clip, as the
    previous frozen-field exponential step did. ``dP`` is formed as an increment (``expm1``) and
    the membrane takes that increment, not the difference of two rounded polarisations: in
    float32, |P| ~ 0.2 C/m^2 rounds to ~1.5e-8 C/m^2, i.e. ~0.7 uV of membrane per step.
    The input and leak currents are explicit (forward Euler). The name says the method
    (exponential Rosenbrock–Euler); the fused kernels (bruno/kernels/) restate exactly this step.
    No spike handling happens here.
    """
    v, polarization = state.v, state.polarization
    field = ferroelectric_field(v, polarization, p)
    ps = torch.as_tensor(p.saturation_polarization, dtype=v.dtype, device=v.device)
    distance = torch.sign(field) * ps - polarization  # T - P
    magnitude = field.abs() + p.soft_field
    exponent = (p.activation_field / magnitude) ** p.switching_exponent
    rate = torch.exp(-exponent) / p.switching_time_constant
    # r'(E) times (T - P): >= 0, the rate rises with |E| and T - P has the field's sign
    sensitivity = distance * torch.sign(field) * rate * p.switching_exponent * exponent / magnitude
    eigenvalue = -rate + sensitivity * feedback_field_coefficient(p)
    c_tot = p.total_capacitance
    drive = (p.input_gain * input_current - leak_current(v, p)) / c_tot
    # at the clip the clamp junction takes a drive that pushes outwards: the membrane, hence the
    # field, does not move (without this the P step's drive term, fed by a current the membrane
    # never sees, makes dP'/dP ~ -1.7 at -5 V under -1 uA and BPTT's gradient blow up)
    pinned = ((v >= V_CLIP) & (drive > 0)) | ((v <= -V_CLIP) & (drive < 0))
    drive = torch.where(pinned, torch.zeros_like(drive), drive)
    phi1, phi2 = phi_functions(eigenvalue * dt)
    field_per_volt = p.interlayer_permittivity / _stack_denominator(p)  # dE/dv
    increment = dt * phi1 * distance * rate + dt * dt * phi2 * sensitivity * field_per_volt * drive
    increment = torch.clamp(increment, min=-ps - polarization, max=ps - polarization)
    new_v = v + dt * drive - p.area * increment / c_tot
    return FeLIFState(v=torch.clamp(new_v, -V_CLIP, V_CLIP), polarization=polarization + increment)


# ---------------------------------------------------------------------------------------------
# Spike rules (SPEC §3), the one definition the trainers, the device simulation and the kernel's
# reference use. A neuron spikes when its membrane exceeds V_thr. Trainers *hold* a neuron that
# crossed for the rest of the coarse step (hold_step) and reset it at the next coarse step
# (reset); a circuit (bruno.device.simulate) resets it at the fine step that crossed, and so do
# trainers given spike_rule="reset" (bruno.algorithms.circuit_step: those values, the held step's
# gradient).
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
