"""The Triton fine path (bruno.kernels.triton_kernel): the same numbers as the torch reference loop
and the native kernel, under Triton's interpreter on this CPU (TRITON_INTERPRET=1, in a child
process: the variable must be set before triton is imported), and BRUNO training through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bruno import kernels
from bruno.felif import FeLIFParameters, initial_state

IN_CI = os.environ.get("CI", "").strip().lower() == "true"

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Run the comparisons in a child process under the interpreter; return its measurements."""
    if not HAVE_TRITON:
        if IN_CI:
            pytest.fail("triton must be installed in CI (pyproject's dev extra)")
        pytest.skip("triton not installed")
    script = textwrap.dedent(
        """
        import json, torch
        from bruno import kernels
        from bruno.felif import FeLIFParameters
        from bruno.kernels import throughput
        from bruno.layers import FeLIFLayer
        from bruno.synapses import SynapticLinear

        out = {}
        p = FeLIFParameters()
        n = 300
        sign = torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0).double()
        current = torch.logspace(-12, -6, n, dtype=torch.float64) * sign
        for dtype in (torch.float64, torch.float32):
            g = torch.Generator().manual_seed(0)
            state = throughput.random_state((2, n), p, g, dtype)
            held = torch.zeros(2, n, dtype=torch.bool)
            held[0, :7] = True
            got, got_held = kernels.integrate(
                state, current.to(dtype), p, 1e-6, 200, held, backend="triton"
            )
            ref, ref_held = kernels.integrate(
                state, current.to(dtype), p, 1e-6, 200, held, backend="torch"
            )
            name = str(dtype).replace("torch.", "")
            out[name] = {
                "dv": (got.v - ref.v).abs().max().item(),
                "dp": (got.polarization - ref.polarization).abs().max().item(),
                "held_equal": bool(torch.equal(got_held, ref_held)),
                "held_any": bool(got_held.any()), "held_all": bool(got_held.all()),
            }
        # BRUNO through a layer: forward values and gradients with fine_backend="triton" equal the
        # torch fine path's (the gradient is the coarse step's, the values the fine path's)
        results = {}
        for backend in ("triton", "torch"):
            torch.manual_seed(0)
            x = (torch.rand(12, 2, 5, generator=torch.Generator().manual_seed(1)) < 0.5).double()
            linear = SynapticLinear(5, 4, seed=1).double()
            with torch.no_grad():
                linear.weight.abs_()
            layer = FeLIFLayer(
                4, p, algorithm="bruno", fine_steps=50, current_scale=3e-9, fine_backend=backend
            )
            spikes = layer(linear(x))
            spikes.sum().backward()
            results[backend] = (spikes.detach(), linear.weight.grad.detach())
        out["layer_spikes_equal"] = bool(torch.equal(results["triton"][0], results["torch"][0]))
        out["layer_spike_count"] = float(results["torch"][0].sum())
        out["layer_grad_max_diff"] = (results["triton"][1] - results["torch"][1]).abs().max().item()
        out["layer_grad_norm"] = results["torch"][1].norm().item()
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_triton_matches_the_torch_reference(interpreted):
    """200 steps, 1 pA .. 1 uA of either sign, states across the operating range, some held:
    float64 to rounding (measured 3e-14 V), float32 within float32's spread (measured 2e-5 V,
    as the native kernel's float32 against torch's)."""
    assert interpreted["float64"]["dv"] <= 1e-9 and interpreted["float64"]["dp"] <= 1e-10
    assert interpreted["float32"]["dv"] <= 2e-4 and interpreted["float32"]["dp"] <= 1e-5
    for name in ("float64", "float32"):
        row = interpreted[name]
        assert row["held_equal"] and row["held_any"] and not row["held_all"]


def test_bruno_trains_through_the_triton_fine_path(interpreted):
    """A Linear -> FeLIF layer with BRUNO and fine_backend="triton": the same spikes and the same
    weight gradient as with the torch fine path (float64)."""
    assert interpreted["layer_spikes_equal"] and interpreted["layer_spike_count"] > 0
    assert interpreted["layer_grad_norm"] > 0
    assert interpreted["layer_grad_max_diff"] <= 1e-9 * max(1.0, interpreted["layer_grad_norm"])


def test_triton_on_cpu_without_the_interpreter_raises():
    """An explicit backend that cannot run raises, with the reason (SpikingJelly's rule)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs the interpreter")
    state = initial_state((4,), FeLIFParameters())
    with pytest.raises(kernels.BackendUnavailable, match="Triton|triton"):
        kernels.integrate(state, torch.zeros(4), FeLIFParameters(), 1e-6, 3, backend="triton")
    with pytest.raises(kernels.BackendUnavailable, match="values only"):
        kernels.integrate_with_jacobian(
            state, torch.zeros(4), FeLIFParameters(), 1e-6, 3, backend="triton"
        )
