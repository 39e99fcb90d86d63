"""Spike nonlinearity with a surrogate gradient.

Forward: the Heaviside step ``x > 0`` (strict, like the threshold test ``v > V_thr``).
Backward: the SuperSpike / fast-sigmoid derivative ``1 / (1 + slope * |x|)^2`` (Zenke & Ganguli
2018), peak 1 at ``x = 0`` and half-width ``(sqrt(2) - 1) / slope``. ``x`` is ``v - threshold`` in
the neuron's own units: volts for FeLIF (default slope 10 /V: gradients within ~0.1 V of the
2.5 V threshold), the dimensionless membrane for LIF (default slope 25, threshold 1).
"""

from __future__ import annotations

import torch

FELIF_SLOPE_PER_VOLT = 10.0
LIF_SLOPE = 25.0


class _FastSigmoidSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output / (ctx.slope * x.abs() + 1.0) ** 2, None


def spike(x: torch.Tensor, slope: float) -> torch.Tensor:
    """Heaviside(x) with the fast-sigmoid surrogate gradient of steepness ``slope``."""
    if not slope > 0:
        raise ValueError(f"surrogate slope must be > 0, got {slope}")
    return _FastSigmoidSpike.apply(x, float(slope))
