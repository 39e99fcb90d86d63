"""Numerical self-test of a freshly built kernel library, run in a child process by the build:
``python -m bruno.kernels.selftest LIBRARY`` exits 0 when the library matches the torch reference,
in values (:func:`bruno.kernels.integrate`) and in the Jacobian its tangent variant propagates
(:func:`bruno.kernels.integrate_with_jacobian`).

A library that fails here is never installed (:func:`bruno.kernels.build.build`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bruno import kernels
from bruno.felif import V_CLIP, FeLIFParameters, FeLIFState
from bruno.kernels import accuracy, ffi
from bruno.kernels.throughput import random_state

# Natural units of the Jacobian's inputs (v0: 1 V, P0: 0.22 C/m^2 ~ Ps, I: 1 nA) and outputs
# (v: 1 V, P: 0.22 C/m^2), so that entries of different units compare on one scale.
_INPUT_UNITS = (1.0, 0.22, 1e-9)
_OUTPUT_UNITS = (1.0, 0.22)


def jacobian_error(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per neuron, the largest entry of ``got - expected`` ((2, 3, ...) Jacobians) in natural
    units, relative to the largest entry of ``expected`` or to the identity's 1, whichever is
    larger: entries that cancel to ~0 (dv/dP0 of a neuron that does not switch) or underflow
    (P at saturation in float32) are judged on the neuron's scale, not on their own."""
    ones = (1,) * (expected.dim() - 2)
    scale = torch.tensor(_INPUT_UNITS, dtype=torch.float64).reshape(1, 3, *ones) / torch.tensor(
        _OUTPUT_UNITS, dtype=torch.float64
    ).reshape(2, 1, *ones)
    expected = expected.to(torch.float64) * scale
    error = (got.to(torch.float64) * scale - expected).abs().amax((0, 1))
    return error / expected.abs().amax((0, 1)).clamp_min(1.0)


def _signed_currents(
    n: int, low: float, high: float, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Currents of magnitude log-uniform in [10^low, 10^high] A, every third one negative."""
    magnitude = 10.0 ** (
        torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low
    )
    sign = torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0).to(torch.float64)
    return (sign * magnitude).to(dtype)


def with_edge_states(state: FeLIFState, p: FeLIFParameters) -> FeLIFState:
    """``state`` (1-d, >= 5 neurons) with its first neurons where the derivative conventions
    matter: rest and reset (P = -Ps exactly, at a tie of the polarisation clamp in a negative
    field), P = +Ps in a positive field, E = 0 (v = 0, P = 0) and v at the -V_CLIP clip."""
    ps = float(torch.as_tensor(p.saturation_polarization, dtype=torch.float64).max())
    reset_v = float(torch.as_tensor(p.reset_voltage, dtype=torch.float64).max())
    edges = torch.tensor(
        [[0.0, -ps], [reset_v, -ps], [2.0, ps], [0.0, 0.0], [-V_CLIP, -ps]], dtype=state.v.dtype
    )
    v, polarization = state.v.clone(), state.polarization.clone()
    v[: len(edges)], polarization[: len(edges)] = edges[:, 0], edges[:, 1]
    return FeLIFState(v, polarization)


def check_library(path: str) -> tuple[bool, str]:
    """A freshly built library against the torch reference loop, float64 and float32, over states
    across the operating range and inputs of either sign up to 1 uA (clip and threshold reached)."""
    tiny = torch.tensor(1e-39, dtype=torch.float32)
    kernel = ffi.open_library(Path(path), "candidate")
    if float(tiny * 1.0) == 0.0:
        return False, "loading the library switched on flush-to-zero for the whole process"
    generator = torch.Generator().manual_seed(0)
    n = 37
    p = FeLIFParameters()
    # float32's Jacobian differs by ~1e-3 from float64's (rounding through 200 steps)
    for dtype, tolerance, jacobian_tolerance in (
        (torch.float64, 1e-9, 1e-9),
        (torch.float32, 2e-4, 5e-2),
    ):
        state = random_state((n,), p, generator, dtype)
        # the whole input range a neuron can see: sub-nA either sign, and up to +-1 uA, where the
        # membrane is driven to the clip and across threshold within a step
        current = _signed_currents(n, -12, -6, generator, dtype)
        ref, ref_held = kernels.integrate_reference(state, current, p, 1e-6, 200)
        got, got_held = kernels.integrate(state, current, p, 1e-6, 200, kernel=kernel)
        error = (got.v - ref.v).abs().max().item()
        if not error <= tolerance * 5 or not torch.equal(ref_held, got_held):
            return (
                False,
                f"{dtype}: max |dv| {error:.3g} V, held equal {torch.equal(ref_held, got_held)}",
            )
        # tangents over the same range, up to +-1 uA
        current = _signed_currents(n, -12, -6, generator, dtype)
        state = with_edge_states(state, p)
        ref_state, ref_held, ref_jac = kernels.integrate_with_jacobian(
            state, current, p, 1e-6, 200, backend="torch"
        )
        got_state, got_held, got_jac = kernels.integrate_with_jacobian(
            state, current, p, 1e-6, 200, kernel=kernel
        )
        jacobian = jacobian_error(got_jac, ref_jac).max().item()
        value = (got_state.v - ref_state.v).abs().max().item()
        if not (
            jacobian <= jacobian_tolerance
            and value <= tolerance * 5
            and torch.equal(ref_held, got_held)
        ):
            return False, f"{dtype} tangents: Jacobian error {jacobian:.3g}, max |dv| {value:.3g} V"
    ok, reference = check_against_ode_reference(kernel)
    if not ok:
        return False, reference
    return True, (
        f"self-test ok (float64/float32 vs euler_step, max |dv| {error:.2g} V; "
        f"Jacobian vs autograd, float32 error {jacobian:.2g}; {reference})"
    )


def check_against_ode_reference(kernel: ffi.NativeKernel) -> tuple[bool, str]:
    """The library's fine path against the float64 ODE reference (not against the same scheme):
    from rest, reset and mid-switching, at pA to uA of either sign, it crosses threshold at the
    reference's fine step (+-1) and nowhere else, and from rest at pA its float32 membrane is
    within 3e-5 V of the reference over the whole 1 ms (the discretisation's own level)."""
    result = accuracy.survey(
        methods=(("native", torch.float32), ("native", torch.float64)),
        currents=(2.55e-11, 2.28e-9, 1e-6),
        starts=("rest", "reset", "switching"),
        kernel=kernel,
    )
    for row in result["table"]:
        if row["spurious_spikes"] or row["lost_spikes"] or row["max_crossing_off_by_steps"] > 1:
            return False, f"vs the ODE reference: {row}"
        if row["start"] == "rest" and row["inputs"] == "pA" and row["max_abs_dv_V"] > 3e-5:
            return False, f"vs the ODE reference at pA from rest: {row}"
    return True, "vs the ODE reference: spikes at its fine step, pA membrane within 3e-5 V"


if __name__ == "__main__":
    ok, message = check_library(sys.argv[1])
    print(message)
    sys.exit(0 if ok else 1)
