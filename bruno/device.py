"""Device-level simulation of FeLIF neurons, as a circuit runs them: reset at the fine step that
crosses threshold (calibration, validation and ``python -m bruno simulate`` use it; the trainers'
``spike_rule="reset"`` takes its values from :func:`integrate_circuit`). The trainers' default
view (hold until the next coarse step) is :mod:`bruno.kernels` and :mod:`bruno.algorithms`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bruno import kernels
from bruno.felif import FeLIFParameters, FeLIFState, crossed, euler_step, initial_state, reset
from bruno.kernels import ffi
from bruno.kernels.ffi import NativeKernel


class FeLIFTrace(NamedTuple):
    """A fine-resolution simulation: sampled traces and the spike times of every neuron."""

    time: torch.Tensor  # (samples,) s
    v: torch.Tensor  # (samples, *neurons) V
    polarization: torch.Tensor  # (samples, *neurons) C/m^2
    spike_times: list[list[float]]  # per neuron (flattened order), s


def simulate(
    input_current: torch.Tensor,
    p: FeLIFParameters,
    dt: float = 1e-6,
    record_every: int = 1,
    state: FeLIFState | None = None,
    backend: str = "auto",
) -> FeLIFTrace:
    """Simulate neurons as a circuit would run: reset at the fine step that crosses threshold.

    ``input_current`` has shape (steps, *neurons) in A, one value per fine step ``dt``. A neuron
    whose membrane exceeds ``threshold_voltage`` records a spike at the end of that step and is
    reset to (``reset_voltage``, -Ps). This is the device-level view used by calibration and the
    command line; the trainers instead hold spiking neurons until the next coarse step (SPEC §3).
    ``backend`` is the fine-path backend (:mod:`bruno.kernels`): the fused kernel in RESET mode
    or the loop of :func:`bruno.felif.euler_step` and :func:`bruno.felif.reset` here.
    """
    if input_current.dim() < 1:
        raise ValueError("input_current must have a leading time axis (steps, *neurons)")
    if not torch.isfinite(input_current).all():
        raise ValueError("input_current contains NaN or Inf")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    steps = input_current.shape[0]
    shape = input_current.shape[1:]
    dtype, device = input_current.dtype, input_current.device
    if state is None:
        state = initial_state(shape, p, device=device, dtype=dtype)
    kernel = (
        kernels.select(backend, input_current) if _kernel_applies(input_current, state) else None
    )
    if kernel is None and kernels.check_backend(backend) == "native":
        raise kernels.BackendUnavailable(
            "the native device simulation needs the state shaped like the neurons of the input"
        )
    if kernel is not None:
        fast = _simulate_native(input_current, p, dt, record_every, state, kernel)
        if fast is not None:
            return fast
    times, vs, ps_trace = [0.0], [state.v.clone()], [state.polarization.clone()]
    spikes: list[list[float]] = [[] for _ in range(max(1, int(torch.tensor(shape).prod())))]
    with torch.no_grad():
        for k in range(steps):
            state = euler_step(state, input_current[k], p, dt)
            fired = crossed(state.v, p)
            if bool(fired.any()):
                for index in torch.nonzero(fired.reshape(-1)).flatten().tolist():
                    spikes[index].append((k + 1) * dt)
                state = reset(state, fired, p)
            if (k + 1) % record_every == 0:
                times.append((k + 1) * dt)
                vs.append(state.v.clone())
                ps_trace.append(state.polarization.clone())
    return FeLIFTrace(
        time=torch.tensor(times, dtype=torch.float64),
        v=torch.stack(vs),
        polarization=torch.stack(ps_trace),
        spike_times=spikes,
    )


def _kernel_applies(input_current: torch.Tensor, state: FeLIFState) -> bool:
    return state.v.shape == input_current.shape[1:] and state.polarization.shape == state.v.shape


def _simulate_native(
    input_current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    record_every: int,
    state: FeLIFState,
    kernel: NativeKernel,
) -> FeLIFTrace | None:
    """:func:`simulate` through the fused kernel in RESET mode (reset at the crossing step, as
    :func:`bruno.felif.reset`), or None where the parameters do not broadcast to the neurons (the
    loop then reports it). Same meaning as the loop; results agree to float rounding
    (tests/test_bruno_fine_path.py)."""
    steps = input_current.shape[0]
    shape = input_current.shape[1:]
    n = math.prod(shape)
    dtype = input_current.dtype
    samples = 1 + steps // record_every
    v = state.v.detach().to(dtype).clone().contiguous().reshape(-1)
    pol = state.polarization.detach().to(dtype).clone().contiguous().reshape(-1)
    v_rec = torch.empty((samples, n), dtype=dtype)
    p_rec = torch.empty((samples, n), dtype=dtype)
    v_rec[0], p_rec[0] = v, pol
    fired = torch.zeros((steps, n), dtype=torch.uint8)
    try:
        coefficients = ffi.pack_coefficients(p, shape, dtype)
    except RuntimeError:  # parameters not broadcastable to the neurons: let the loop report it
        return None
    current = input_current.detach().contiguous().reshape(steps, n)
    kernel.run(
        v,
        pol,
        current,
        True,
        coefficients,
        float(dt),
        steps,
        ffi.MODE_RESET,
        fired=fired,
        v_rec=v_rec,
        p_rec=p_rec,
        record_every=record_every,
    )
    spikes: list[list[float]] = [[] for _ in range(max(1, n))]
    for step, index in torch.nonzero(fired).tolist():
        spikes[index].append((step + 1) * dt)
    time = torch.arange(samples, dtype=torch.float64) * record_every * dt
    return FeLIFTrace(
        time=time,
        v=v_rec.reshape(samples, *shape),
        polarization=p_rec.reshape(samples, *shape),
        spike_times=spikes,
    )


def integrate_circuit(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    *,
    backend: str = "auto",
    coefficients: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor]:
    """``steps`` fine steps of ``dt`` (s) under a held ``current`` (A), reset at every crossing
    as :func:`simulate` does; returns the end state and the number of crossings per neuron (in
    the state's dtype). No autograd: the values of the trainers' ``spike_rule="reset"``.

    Backends as :func:`bruno.kernels.integrate`: the fused kernel in RESET mode (CPU) or the
    loop of :func:`bruno.felif.euler_step` and :func:`bruno.felif.reset`; they agree to float
    rounding. The Triton kernel has no RESET mode: asked for by name it raises, ``"auto"`` on
    CUDA takes the loop.
    """
    if kernels.check_backend(backend) == "triton":
        raise kernels.BackendUnavailable(
            "the Triton fine path has no reset-at-crossing mode; use backend='torch' or 'auto'"
        )
    v0, pol0 = state.v.detach(), state.polarization.detach()
    shape, dtype = v0.shape, v0.dtype
    current = torch.broadcast_to(current.detach().to(dtype), shape)
    kernel = kernels.select(backend, v0) if v0.device.type == "cpu" else None
    if kernel is None and kernels.check_backend(backend) == "native":
        raise kernels.BackendUnavailable("the native kernel runs CPU tensors only")
    if kernel is not None:
        n = v0.numel()
        v = v0.contiguous().clone().reshape(-1)
        pol = pol0.contiguous().clone().reshape(-1)
        fired = torch.zeros((int(steps), n), dtype=torch.uint8)
        if coefficients is None:
            coefficients = ffi.pack_coefficients(p, shape, dtype)
        drive = current.contiguous().reshape(-1)
        kernel.run(v, pol, drive, False, coefficients, float(dt), int(steps), ffi.MODE_RESET,
                   fired=fired)  # fmt: skip
        count = fired.sum(0, dtype=torch.int32).to(dtype).reshape(shape)
        return FeLIFState(v.reshape(shape), pol.reshape(shape)), count
    with torch.no_grad():
        p = p.to(dtype=dtype)
        new = FeLIFState(v0, pol0)
        count = torch.zeros_like(v0)
        for _ in range(int(steps)):
            new = euler_step(new, current, p, dt)
            fired = crossed(new.v, p)
            count = count + fired.to(dtype)
            new = reset(new, fired, p)
    return new, count
