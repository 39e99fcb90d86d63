"""The FeLIF fine path: ``steps`` reference steps of ``dt`` with the input current held constant.

Spike handling is the trainers' (SPEC §3): inside one call a neuron whose membrane exceeds its
threshold *holds* its state for the remaining steps; ``held`` says which neurons crossed. The
caller turns crossings into spikes and resets them at the next coarse step.

Two implementations with the same meaning and the same call ``(state, current, p, dt, steps,
held=None)``:

* :func:`integrate_reference` — a plain per-step PyTorch loop of :func:`bruno.felif.euler_step`
  (the reference; it runs on any device and dtype). Its step, :func:`hold_step`, is also what
  the ``bptt`` and ``checkpoint`` trainers differentiate through, so their forward values equal
  it bit for bit.
* :func:`integrate` — the fused C/OpenMP kernel (:mod:`bruno.native`) for CPU float32/float64
  tensors; elsewhere (CUDA, other dtypes, no compiler) it falls back to the reference loop.

:func:`throughput` and :func:`compare_throughput` measure neuron-fine-steps per second.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from bruno import native
from bruno.felif import FeLIFParameters, FeLIFState, euler_step


def _as_bool(held: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if held is None:
        return torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    if held.shape != like.shape:
        raise ValueError(f"held has shape {tuple(held.shape)}, state has {tuple(like.shape)}")
    return held.to(dtype=torch.bool, device=like.device)


def hold_step(
    state: FeLIFState,
    held: torch.Tensor,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
) -> tuple[FeLIFState, torch.Tensor]:
    """One fine step; neurons already ``held`` keep their state; returns (state, held)."""
    new = euler_step(state, current, p, dt)
    v = torch.where(held, state.v, new.v)
    polarization = torch.where(held, state.polarization, new.polarization)
    threshold = torch.as_tensor(p.threshold_voltage, dtype=v.dtype, device=v.device)
    return FeLIFState(v, polarization), held | (v.detach() > threshold)


def _check(state: FeLIFState, current: torch.Tensor, dt: float, steps: int) -> None:
    if not isinstance(state, FeLIFState):
        raise TypeError("state must be a bruno.felif.FeLIFState")
    if state.v.shape != state.polarization.shape:
        raise ValueError("state.v and state.polarization must have the same shape")
    if not state.v.is_floating_point() or state.v.dtype != state.polarization.dtype:
        raise TypeError("state tensors must share one floating dtype")
    if current.device != state.v.device:
        raise ValueError(f"current is on {current.device}, state on {state.v.device}")
    if not (dt > 0):
        raise ValueError(f"dt must be > 0, got {dt}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")


def integrate_reference(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor]:
    """Plain per-step PyTorch loop (no autograd): ``steps`` hold-steps from ``state``."""
    _check(state, current, dt, steps)
    with torch.no_grad():
        state = FeLIFState(state.v.detach(), state.polarization.detach())
        held = _as_bool(held, state.v)
        current = current.to(state.v.dtype)
        p = p.to(dtype=state.v.dtype)  # tensor fields in the state's dtype (no silent promotion)
        for _ in range(int(steps)):
            state, held = hold_step(state, held, current, p, dt)
    return state, held


def integrate(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None = None,
    *,
    kernel: native.NativeKernel | None = None,
    coefficients: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor]:
    """Fused fine path (no autograd); same meaning and result as :func:`integrate_reference`.

    Uses the native kernel for CPU float32/float64 state; otherwise the reference loop.
    ``coefficients`` (from :func:`bruno.native.pack_coefficients` for this shape and dtype) may be
    passed to skip re-packing the parameters on every call.
    """
    _check(state, current, dt, steps)
    v = state.v
    if kernel is None and v.device.type == "cpu" and v.dtype in (torch.float32, torch.float64):
        kernel = native.load()
    if kernel is None or v.device.type != "cpu" or v.dtype not in (torch.float32, torch.float64):
        return integrate_reference(state, current, p, dt, steps, held)
    shape = v.shape
    with torch.no_grad():
        v_out = v.detach().to(memory_format=torch.contiguous_format).clone().reshape(-1)
        p_out = state.polarization.detach().clone().contiguous().reshape(-1)
        drive = torch.broadcast_to(current.detach().to(v.dtype), shape).contiguous().reshape(-1)
        flags = _as_bool(held, v).to(torch.uint8).contiguous().reshape(-1).clone()
        if coefficients is None:
            coefficients = native.pack_coefficients(p, shape, v.dtype)
        kernel.run(
            v_out,
            p_out,
            drive,
            False,
            coefficients,
            float(dt),
            int(steps),
            native.MODE_HOLD,
            held=flags,
        )
    return FeLIFState(v_out.reshape(shape), p_out.reshape(shape)), flags.reshape(shape).bool()


def simulate_reset(
    input_current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    record_every: int,
    state: FeLIFState,
    kernel: native.NativeKernel,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Device-mode simulation (reset at the crossing step) with the kernel, for felif.simulate.

    Returns (v_rec, p_rec, fired): v_rec/p_rec of shape (1 + steps // record_every, *neurons)
    including the initial state, and ``fired`` (steps, n) uint8.
    """
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
    current = input_current.detach().contiguous().reshape(steps, n)
    coefficients = native.pack_coefficients(p, shape, dtype)
    kernel.run(
        v,
        pol,
        current,
        True,
        coefficients,
        float(dt),
        steps,
        native.MODE_RESET,
        fired=fired,
        v_rec=v_rec,
        p_rec=p_rec,
        record_every=record_every,
    )
    return v_rec.reshape(samples, *shape), p_rec.reshape(samples, *shape), fired


def random_state(
    shape: tuple[int, ...],
    p: FeLIFParameters,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FeLIFState:
    """A spread of states across the operating range (v in [-1.5, 2.4] V, P in [-Ps, Ps])."""
    ps = float(torch.as_tensor(p.saturation_polarization).max())
    v = torch.rand(shape, generator=generator, dtype=torch.float64) * 3.9 - 1.5
    pol = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * ps
    return FeLIFState(v.to(dtype=dtype, device=device), pol.to(dtype=dtype, device=device))


def throughput(
    neurons: int,
    steps: int = 1000,
    repeats: int = 3,
    backend: str = "native",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Neuron-fine-steps per second of one fine-path call (median over ``repeats``).

    ``backend``: "native" (fused kernel via :func:`integrate`) or "reference" (plain torch loop).
    The state spans the operating range and the current is 0–2 nA, so switching, leak and held
    neurons all occur.
    """
    if backend not in ("native", "reference"):
        raise ValueError(f"backend must be 'native' or 'reference', got {backend!r}")
    p = FeLIFParameters()
    generator = torch.Generator().manual_seed(seed)
    state = random_state((neurons,), p, generator, dtype, device)
    current = (torch.rand(neurons, generator=generator, dtype=torch.float64) * 2e-9).to(
        dtype=dtype, device=device
    )
    if backend == "native":
        kernel = native.load()
        if kernel is None:
            raise RuntimeError("the native kernel is not available on this machine")
        coefficients = native.pack_coefficients(p, (neurons,), dtype)

        def call():
            return integrate(
                state, current, p, 1e-6, steps, kernel=kernel, coefficients=coefficients
            )
    else:

        def call():
            return integrate_reference(state, current, p, 1e-6, steps)

    call()  # warm-up (thread pool, allocator, library)
    timings = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if device != "cpu":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    seconds = statistics.median(timings)
    return {
        "backend": backend,
        "neurons": neurons,
        "steps": steps,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "seconds_median": seconds,
        "neuron_steps_per_s": neurons * steps / seconds,
        "repeats": repeats,
    }


def compare_throughput(
    neurons: list[int] | tuple[int, ...] = (150, 3000, 10000),
    steps: int = 1000,
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """Fused kernel and plain torch loop side by side, in one process, per neuron count."""
    rows = []
    for n in neurons:
        fused = throughput(n, steps, repeats, "native", dtype)
        plain = throughput(n, steps, repeats, "reference", dtype)
        rows.append(
            {
                "neurons": n,
                "steps": steps,
                "dtype": fused["dtype"],
                "threads": fused["threads"],
                "fused_neuron_steps_per_s": fused["neuron_steps_per_s"],
                "torch_loop_neuron_steps_per_s": plain["neuron_steps_per_s"],
                "speedup": fused["neuron_steps_per_s"] / plain["neuron_steps_per_s"],
                "kernel": native.info()["variant"],
            }
        )
    return rows
