"""Neuron-fine-steps per second of the fine-path backends, side by side in one process."""

from __future__ import annotations

import statistics
import time

import torch

from bruno import kernels
from bruno.felif import FeLIFParameters, FeLIFState
from bruno.kernels import ffi


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

    ``backend``: "native" (the fused C kernel), "triton" (the fused Triton kernel; ``device``
    "cuda") or "torch" (the plain torch loop, on ``device``).
    The state spans the operating range and the current is 0–2 nA, so switching, leak and held
    neurons all occur.
    """
    if backend not in ("native", "torch", "triton"):
        raise ValueError(f"backend must be 'native', 'torch' or 'triton', got {backend!r}")
    p = FeLIFParameters()
    generator = torch.Generator().manual_seed(seed)
    state = random_state((neurons,), p, generator, dtype, device)
    current = (torch.rand(neurons, generator=generator, dtype=torch.float64) * 2e-9).to(
        dtype=dtype, device=device
    )
    kernel = kernels.select(backend, state.v)
    coefficients = None
    if kernel is not None or backend == "triton":
        coefficients = ffi.pack_coefficients(p, (neurons,), dtype).to(state.v.device)

    def call():
        return kernels.integrate(
            state,
            current,
            p,
            1e-6,
            steps,
            backend=backend,
            kernel=kernel,
            coefficients=coefficients,
        )

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
    """Fused kernel and plain torch loop side by side, in one process, per neuron count; on a
    machine with CUDA and triton also the Triton kernel beside the torch loop on the GPU."""
    rows = []
    if torch.cuda.is_available():
        from bruno.kernels import triton_kernel

        if triton_kernel.available(torch.empty(1, device="cuda"))[0]:
            for n in (*neurons, 1 << 20):
                fused = throughput(n, steps, repeats, "triton", dtype, "cuda")
                plain = throughput(n, min(steps, 100), repeats, "torch", dtype, "cuda")
                rows.append(
                    {
                        "neurons": n,
                        "steps": steps,
                        "dtype": fused["dtype"],
                        "device": "cuda",
                        "fused_neuron_steps_per_s": fused["neuron_steps_per_s"],
                        "torch_loop_neuron_steps_per_s": plain["neuron_steps_per_s"],
                        "speedup": fused["neuron_steps_per_s"] / plain["neuron_steps_per_s"],
                        "kernel": "triton",
                    }
                )
    for n in neurons:
        fused = throughput(n, steps, repeats, "native", dtype)
        plain = throughput(n, steps, repeats, "torch", dtype)
        rows.append(
            {
                "neurons": n,
                "steps": steps,
                "dtype": fused["dtype"],
                "device": "cpu",
                "threads": fused["threads"],
                "fused_neuron_steps_per_s": fused["neuron_steps_per_s"],
                "torch_loop_neuron_steps_per_s": plain["neuron_steps_per_s"],
                "speedup": fused["neuron_steps_per_s"] / plain["neuron_steps_per_s"],
                "kernel": kernels.info()["variant"],
            }
        )
    return rows
