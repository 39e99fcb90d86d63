"""Numerical self-test of a freshly built kernel library, run in a child process by the build:
``python -m bruno.kernels.selftest LIBRARY`` exits 0 when the library matches the torch reference.

A library that fails here is never installed (:func:`bruno.kernels.build.build`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bruno import kernels
from bruno.felif import FeLIFParameters
from bruno.kernels import ffi
from bruno.kernels.throughput import random_state


def check_library(path: str) -> tuple[bool, str]:
    """A freshly built library against the torch reference loop, float64 and float32, over states
    across the operating range and inputs of either sign up to 1 uA (clip and threshold reached)."""
    tiny = torch.tensor(1e-39, dtype=torch.float32)
    kernel = ffi.open_library(Path(path), "candidate")
    if float(tiny * 1.0) == 0.0:
        return False, "loading the library switched on flush-to-zero for the whole process"
    generator = torch.Generator().manual_seed(0)
    n = 37
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        p = FeLIFParameters()
        state = random_state((n,), p, generator, dtype)
        # the whole input range a neuron can see: sub-nA either sign, and up to +-1 uA, where the
        # membrane is driven to the clip and across threshold within a step
        magnitude = 10.0 ** (torch.rand(n, generator=generator, dtype=torch.float64) * 6 - 12)
        sign = torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0).to(torch.float64)
        current = (sign * magnitude).to(dtype)
        ref, ref_held = kernels.integrate_reference(state, current, p, 1e-6, 200)
        got, got_held = kernels.integrate(state, current, p, 1e-6, 200, kernel=kernel)
        error = (got.v - ref.v).abs().max().item()
        if not error <= tolerance * 5 or not torch.equal(ref_held, got_held):
            return (
                False,
                f"{dtype}: max |dv| {error:.3g} V, held equal {torch.equal(ref_held, got_held)}",
            )
    return True, f"self-test ok (float64/float32 vs euler_step, max |dv| {error:.2g} V)"


if __name__ == "__main__":
    ok, message = check_library(sys.argv[1])
    print(message)
    sys.exit(0 if ok else 1)
