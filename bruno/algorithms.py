"""Training algorithms for FeLIF layers, one interface, chosen by name (SPEC §4).

Each algorithm advances one *coarse* step of ``coarse_dt`` with the input current held, from the
(already reset) state ``(v_k, P_k)``, and returns ``(v_{k+1}, P_{k+1})`` before the spike test and
reset (the layer does those, identically for all algorithms):

``bruno``       :func:`bruno_step`: fine path without autograd (``fine_steps`` steps of
                ``coarse_dt / fine_steps``, :mod:`bruno.kernels`) + one coarse step of
                ``coarse_dt`` with autograd, joined by :func:`combine`
                (``x_c + stopgrad(x_f - x_c)``): the values are the fine values exactly, the
                gradients those of the single coarse step. Only per-coarse-step tensors are saved.
                ``coarse_gradient`` picks the backward (:data:`COARSE_GRADIENTS`): a coarse step
                (:data:`COARSE_STEPS`) or the fine path's own Jacobian:
                ``"implicit"`` (default) :func:`implicit_coarse_step`, the gradient of a linearly
                implicit Euler step, Jacobian ``(1 - dt J)^-1`` given analytically (J by autograd
                of bruno.felif.derivatives);
                ``"euler"`` autograd through :func:`bruno.felif.euler_step` at ``coarse_dt``, the
                SPEC's literal form. With the exponential Rosenbrock-Euler step (the switching
                feedback's eigenvalue in the polarisation update) it is bounded on the small test
                network (cosine 0.87 with BPTT's exact gradient, norm 1.3 x; the implicit one:
                0.84, 0.41 x; the former frozen-field step: ~1e17 x, cosine ~0), but at the
                Braille operating point (drive -3.8..+3.2 nA, 19 % of the time at the -5 V clip,
                130 coarse steps) it still grows through time: cosine 0.07 / 0.04 with the exact
                gradient, norm ~1e6 x (`make diagnose`, 2026-12-03; implicit: 0.955 / 0.945).
                With ``fine_steps = 1``, ``"euler"`` reproduces BPTT's gradients exactly (a
                required identity, tested);
                ``"exact"`` :func:`exact_step`, no coarse step: the fine path propagates, in
                forward mode, the tangents of its end state with respect to (v_k, P_k, I) through
                every fine step (:func:`bruno.kernels.integrate_with_jacobian`: 6 numbers per
                neuron, nothing per fine step), and the backward applies that exact Jacobian
                (:class:`_FineJacobian`). Its gradients equal ``bptt``'s (float64, torch fine
                path: to ~1e-14 relative, tested) at BRUNO's memory; the fine path costs ~2x the
                values-only one (scripts/bench_exact_gradient.py).
``bptt``        autograd through every fine step (:func:`bruno.felif.hold_step`).
``checkpoint``  the same graph as ``bptt`` per coarse step, recomputed in backward
                (``torch.utils.checkpoint``, reentrant: the forward keeps no per-fine-step
                autograd nodes, whose overhead dominates memory for layers of a few hundred
                neurons — non-reentrant measured no saving): gradients equal ``bptt``'s.
``coarse``      one :func:`bruno.felif.euler_step` of ``coarse_dt`` only (values *and* gradients
                coarse).

Inside a coarse step a neuron that crosses threshold holds its state (bruno.felif.hold_step).
:func:`circuit_step` is the layers' other spike rule (``spike_rule="reset"``): the values of a
circuit that resets at the crossing fine step, with the gradient of the algorithm's held step.
The coarse step uses bruno/felif.py's functions only (the equations live there), clamps included
for ``"euler"``; on the stiff switching law coarse values can be far from the fine ones, which is
why only its gradient is used. The ``coarse`` algorithm is that step in values and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from bruno import device, kernels
from bruno.felif import FeLIFParameters, FeLIFState, derivatives, euler_step, hold_step


@dataclass(frozen=True)
class CoarseStepContext:
    """What a coarse step needs besides state, current and parameters."""

    fine_steps: int
    coarse_dt: float
    fine_backend: str = "auto"  # bruno.kernels.BACKENDS: "auto", "native", "torch" or "triton"
    coefficients: torch.Tensor | None = None  # packed kernel coefficients (cache), optional
    coarse_gradient: str = "implicit"  # bruno's backward: COARSE_GRADIENTS (see module doc)

    @property
    def fine_dt(self) -> float:
        return self.coarse_dt / self.fine_steps


StepFunction = Callable[[FeLIFState, torch.Tensor, FeLIFParameters, CoarseStepContext], FeLIFState]


def _fine_values(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, ctx: CoarseStepContext
):
    detached = FeLIFState(state.v.detach(), state.polarization.detach())
    new, _ = kernels.integrate(
        detached,
        current.detach(),
        p,
        ctx.fine_dt,
        ctx.fine_steps,
        backend=ctx.fine_backend,
        coefficients=ctx.coefficients,
    )
    return new


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _jacobian(state: FeLIFState, current: torch.Tensor, p: FeLIFParameters):
    """Per-neuron entries of ``J = d(dv/dt, dP/dt)/d(v, P)`` and ``d(dv/dt)/dI``,
    by autograd of :func:`bruno.felif.derivatives` (the equations are not restated). Every neuron
    is independent, so the gradient of a sum gives the diagonal entries."""
    with torch.enable_grad():
        v = state.v.detach().requires_grad_(True)
        pol = state.polarization.detach().requires_grad_(True)
        i = torch.broadcast_to(current.detach(), v.shape).clone().requires_grad_(True)
        dv, dpol = derivatives(FeLIFState(v, pol), i, p)
        j_vv, j_vp, j_vi = torch.autograd.grad(dv.sum(), (v, pol, i), retain_graph=True)
        j_pv, j_pp = torch.autograd.grad(dpol.sum(), (v, pol))
    return j_vv, j_vp, j_vi, j_pv, j_pp


class _LinearlyImplicitJacobian(torch.autograd.Function):
    """Identity in value; backward through one linearly implicit Euler step of ``dt``,
    ``y1 = y0 + dt f(y0, I) + dt J (y1 - y0)``, whose Jacobians ``dy1/dy0 = (1 - dt J)^-1`` and
    ``dy1/dI = (1 - dt J)^-1 dt df/dI`` (per neuron, 2x2) are applied analytically.

    On the stiff switching law ``J`` has one eigenvalue near 0 (charge C v + A P is conserved by
    switching) and one large negative one, so ``1 - dt J`` is well conditioned (det >= 1). The
    explicit linearisation ``1 + dt J`` has an eigenvalue of about ``1 - dt |lambda|`` (~ -1e3 at
    1 ms); autograd through one 1 ms :func:`bruno.felif.euler_step` (exponential in P) avoids that
    one but not the large field sensitivity of the rate, and its gradients through time explode
    as well (module docstring). The step's *values* are not computed: BRUNO uses the fine path's,
    and on the stiff law ``dt f`` overflows float32 where the membrane sits at the clip.
    """

    @staticmethod
    def forward(ctx, v, pol, current, p, dt):
        jac = _jacobian(FeLIFState(v, pol), current, p)
        ctx.save_for_backward(*jac)
        ctx.dt = dt
        ctx.current_shape = current.shape
        return v.clone(), pol.clone()

    @staticmethod
    def backward(ctx, grad_v, grad_p):
        j_vv, j_vp, j_vi, j_pv, j_pp = ctx.saved_tensors
        dt = ctx.dt
        a, b = 1 - dt * j_vv, -dt * j_vp
        c, d = -dt * j_pv, 1 - dt * j_pp
        det = a * d - b * c
        w_v = (d * grad_v - c * grad_p) / det  # w = (1 - dt J)^-T g
        w_p = (-b * grad_v + a * grad_p) / det
        grad_i = dt * j_vi * w_v
        if grad_i.shape != ctx.current_shape:
            grad_i = grad_i.sum_to_size(ctx.current_shape)
        return w_v, w_p, grad_i, None, None


def implicit_coarse_step(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, dt: float
) -> FeLIFState:
    """BRUNO's default coarse gradient: a state equal in value to ``state`` whose gradient is that
    of one linearly implicit Euler step of ``dt`` (:class:`_LinearlyImplicitJacobian`). Only its
    gradient enters :func:`combine`."""
    return FeLIFState(*_LinearlyImplicitJacobian.apply(state.v, state.polarization, current, p, dt))


class _FineJacobian(torch.autograd.Function):
    """The fine path's end state in value; backward through its exact Jacobian.

    ``forward(v0, P0, I, v, P, jacobian)`` returns copies of the fine values ``(v, P)``; backward
    applies the transposed per-neuron Jacobian ``jacobian`` ((2, 3, ...) from
    :func:`bruno.kernels.integrate_with_jacobian`) to the incoming gradient:
    ``grad_(v0, P0, I) = jacobian^T (grad_v, grad_P)``, the current's entry summed to its shape
    (a broadcast current gets the sum over the neurons it drives). Only the Jacobian is saved.
    """

    @staticmethod
    def forward(ctx, v0, pol0, current, fine_v, fine_pol, jacobian):
        ctx.save_for_backward(jacobian)
        ctx.current_shape = current.shape
        return fine_v.clone(), fine_pol.clone()

    @staticmethod
    def backward(ctx, grad_v, grad_p):
        (jacobian,) = ctx.saved_tensors
        grad = jacobian[0] * grad_v + jacobian[1] * grad_p  # (3, ...): v0, P0, I
        grad_i = grad[2]
        if grad_i.shape != ctx.current_shape:
            grad_i = grad_i.sum_to_size(ctx.current_shape)
        return grad[0], grad[1], grad_i, None, None, None


def exact_step(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, ctx: CoarseStepContext
) -> FeLIFState:
    """BRUNO with ``coarse_gradient="exact"``: the fine path with its Jacobian propagated in
    forward mode (:func:`bruno.kernels.integrate_with_jacobian`, 6 numbers per neuron, nothing per
    fine step), its values with that Jacobian's gradient (:class:`_FineJacobian`): the gradient
    ``bptt`` computes through every fine step, at BRUNO's memory."""
    fine, _, jacobian = kernels.integrate_with_jacobian(
        state,
        current,
        p,
        ctx.fine_dt,
        ctx.fine_steps,
        backend=ctx.fine_backend,
        coefficients=ctx.coefficients,
    )
    v, pol = _FineJacobian.apply(
        state.v, state.polarization, current, fine.v, fine.polarization, jacobian
    )
    return FeLIFState(v, pol)


#: The coarse steps whose gradient BRUNO can join to the fine values with :func:`combine`.
COARSE_STEPS: dict[str, Callable[[FeLIFState, torch.Tensor, FeLIFParameters, float], FeLIFState]]
COARSE_STEPS = {"implicit": implicit_coarse_step, "euler": euler_step}
EXACT = "exact"  # the fine path's own Jacobian (exact_step), not a coarse step
#: BRUNO's backward choices (``coarse_gradient``; module docstring).
COARSE_GRADIENTS = (*COARSE_STEPS, EXACT)


def combine(fine: FeLIFState, coarse: FeLIFState) -> FeLIFState:
    """BRUNO's combine (SPEC §4): ``x_{k+1} = x_c + stopgrad(x_f - x_c)`` for x = v, P — the fine
    path's values with the coarse step's gradient. Computed as ``x_f + (x_c - stopgrad(x_c))`` so
    that the values equal the fine ones exactly (``x_c - x_c == 0`` in floating point)."""
    return FeLIFState(
        fine.v + (coarse.v - coarse.v.detach()),
        fine.polarization + (coarse.polarization - coarse.polarization.detach()),
    )


def bruno_step(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, ctx: CoarseStepContext
) -> FeLIFState:
    """One BRUNO coarse step from ``(v_k, P_k)``: the fine path (``fine_steps`` steps of
    ``coarse_dt / fine_steps``, no autograd) and, where a gradient is needed, either one coarse
    step of ``coarse_dt`` with autograd (``COARSE_STEPS[coarse_gradient]``) joined by
    :func:`combine`, or (``"exact"``) the fine path's own Jacobian (:func:`exact_step`). Memory
    per coarse step is that of one coarse step, whatever ``fine_steps``."""
    if not _needs_grad(state.v, state.polarization, current):
        return _fine_values(state, current, p, ctx)
    if ctx.coarse_gradient == EXACT:
        return exact_step(state, current, p, ctx)
    fine = _fine_values(state, current, p, ctx)
    coarse = COARSE_STEPS[ctx.coarse_gradient](state, current, p, ctx.coarse_dt)
    return combine(fine, coarse)


def _fine_graph(
    v: torch.Tensor,
    polarization: torch.Tensor,
    current: torch.Tensor,
    p: FeLIFParameters,
    ctx: CoarseStepContext,
):
    state = FeLIFState(v, polarization)
    held = torch.zeros(v.shape, dtype=torch.bool, device=v.device)
    for _ in range(ctx.fine_steps):
        state, held = hold_step(state, held, current, p, ctx.fine_dt)
    return state.v, state.polarization


def bptt_step(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, ctx: CoarseStepContext
) -> FeLIFState:
    return FeLIFState(*_fine_graph(state.v, state.polarization, current, p, ctx))


def checkpoint_step(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, ctx: CoarseStepContext
) -> FeLIFState:
    if not _needs_grad(state.v, state.polarization, current):
        return bptt_step(state, current, p, ctx)
    v, polarization = _checkpoint(
        _fine_graph,
        state.v,
        state.polarization,
        current,
        p,
        ctx,
        use_reentrant=True,
        preserve_rng_state=False,
    )
    return FeLIFState(v, polarization)


def coarse_step(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, ctx: CoarseStepContext
) -> FeLIFState:
    return euler_step(state, current, p, ctx.coarse_dt)


ALGORITHMS: dict[str, StepFunction] = {
    "bruno": bruno_step,
    "bptt": bptt_step,
    "checkpoint": checkpoint_step,
    "coarse": coarse_step,
}


def get(name: str) -> StepFunction:
    """The coarse-step function of algorithm ``name`` (ValueError listing the names otherwise)."""
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise ValueError(
            f"unknown training algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}"
        )
    return ALGORITHMS[name]


def names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


class CircuitStep(NamedTuple):
    """One coarse step under the circuit's spike rule (:func:`circuit_step`)."""

    state: FeLIFState  # the end state, after the resets at crossings
    count: torch.Tensor  # crossings in the step (no gradient)
    spike_voltage: torch.Tensor  # the surrogate's argument: end v, or V_thr for a neuron that fired


def circuit_step(
    algorithm: str,
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    ctx: CoarseStepContext,
) -> CircuitStep:
    """One coarse step as a circuit runs it, reset at every fine step that crosses threshold
    (:func:`bruno.device.integrate_circuit`: a neuron can fire several times per step and keeps
    integrating after a reset), trained with the gradient of ``algorithm``'s held step.

    Values: the circuit's end state and crossing count. Gradients: those of the held step
    (``ALGORITHMS[algorithm]``; for ``bruno`` with a coarse step, that step alone, so no held
    fine path runs): a neuron that did not fire has the held step's end state, the same value
    and gradient; one that fired has, as in the held rule, no gradient through its state after
    the reset, and its count the surrogate's gradient at the threshold through the held step's
    membrane (the held rule evaluates it at the crossing value, ~mV above). Hence the identities
    of the held rule hold here too (``bptt`` = ``checkpoint``; ``bruno`` ``"euler"`` at one fine
    step = ``bptt``; ``"exact"`` = ``bptt``); ``coarse`` has no fine path and is refused.
    """
    if algorithm == "coarse":
        raise ValueError(
            "spike_rule 'reset' resets at the crossing fine step; algorithm 'coarse' has no fine "
            "steps (use bruno, bptt or checkpoint)"
        )
    # bptt and checkpoint take their values from the torch loop, as under the held rule
    backend = ctx.fine_backend if algorithm == "bruno" else "torch"
    values, count = device.integrate_circuit(
        state, current, p, ctx.fine_dt, ctx.fine_steps, backend=backend,
        coefficients=ctx.coefficients,
    )  # fmt: skip
    fired = count > 0
    threshold = torch.as_tensor(p.threshold_voltage, dtype=values.v.dtype, device=values.v.device)
    spike_voltage = torch.where(fired, threshold, values.v)
    if not _needs_grad(state.v, state.polarization, current):
        return CircuitStep(values, count, spike_voltage)
    if algorithm == "bruno" and ctx.coarse_gradient in COARSE_STEPS:
        held = COARSE_STEPS[ctx.coarse_gradient](state, current, p, ctx.coarse_dt)
    else:
        held = get(algorithm)(state, current, p, ctx)
    grad_v = held.v - held.v.detach()
    grad_p = held.polarization - held.polarization.detach()
    zero = torch.zeros((), dtype=grad_v.dtype, device=grad_v.device)
    end = FeLIFState(
        values.v + torch.where(fired, zero, grad_v),
        values.polarization + torch.where(fired, zero, grad_p),
    )
    return CircuitStep(end, count, spike_voltage + grad_v)
