"""The fused FeLIF fine path for CUDA, in Triton: ``steps`` steps of :func:`bruno.felif.hold_step`
for a whole layer and batch in one launch per call (the time loop runs inside the kernel, each
program keeps a block of neurons in registers for every step).

The equations are :func:`bruno.felif.euler_step`'s, restated here as the C kernel restates them
(``felif_kernel.c``), with the same per-neuron coefficients
(:func:`bruno.kernels.ffi.pack_coefficients`, in the state's dtype and on its device). Tests pin
it to the torch reference loop; on a machine without a GPU they run it under Triton's
interpreter (``TRITON_INTERPRET=1``, CPU tensors).

Values only (HOLD mode, constant current): the ``"exact"`` coarse gradient's tangents and the
device simulation's RESET mode stay on the torch loop on CUDA.
"""

from __future__ import annotations

import os

import torch

from bruno.felif import PHI_SERIES, V_CLIP

try:  # optional: CUDA machines (and the interpreter on CPU)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is not installed
    triton = None
    tl = None

BLOCK = 256  # neurons per program


def available(like: torch.Tensor) -> tuple[bool, str]:
    """Whether the Triton kernel can run on tensors like ``like``, and if not, why."""
    if triton is None:
        return False, "triton is not installed (pip install triton; it comes with CUDA torch)"
    interpreted = os.environ.get("TRITON_INTERPRET", "") == "1"
    if like.device.type != "cuda" and not interpreted:
        return False, (
            "the Triton fine path runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
            f"not {like.device}"
        )
    if like.dtype not in (torch.float32, torch.float64):
        return False, f"the Triton fine path runs float32/float64, not {like.dtype}"
    return True, ""


if triton is not None:

    @triton.jit
    def _hold_kernel(
        v_ptr,
        p_ptr,
        i_ptr,
        held_ptr,
        coef_ptr,
        dt_ptr,
        n,
        steps,
        row,
        V_CLIP_: tl.constexpr,
        PHI_SERIES_: tl.constexpr,
        BLOCK_: tl.constexpr,
    ):
        offs = tl.program_id(0) * BLOCK_ + tl.arange(0, BLOCK_)
        mask = offs < n
        # the coefficient rows, in bruno.kernels.ffi.COEFFICIENTS order
        fv = tl.load(coef_ptr + 0 * row + offs, mask=mask, other=1.0)
        fp = tl.load(coef_ptr + 1 * row + offs, mask=mask, other=1.0)
        lea = tl.load(coef_ptr + 2 * row + offs, mask=mask, other=1.0)
        es = tl.load(coef_ptr + 3 * row + offs, mask=mask, other=1.0)
        al = tl.load(coef_ptr + 4 * row + offs, mask=mask, other=1.0)
        it0 = tl.load(coef_ptr + 5 * row + offs, mask=mask, other=1.0)
        ps = tl.load(coef_ptr + 6 * row + offs, mask=mask, other=1.0)
        ar = tl.load(coef_ptr + 7 * row + offs, mask=mask, other=1.0)
        i0a = tl.load(coef_ptr + 8 * row + offs, mask=mask, other=1.0)
        ivt = tl.load(coef_ptr + 9 * row + offs, mask=mask, other=1.0)
        idsc = tl.load(coef_ptr + 10 * row + offs, mask=mask, other=1.0)
        gain = tl.load(coef_ptr + 11 * row + offs, mask=mask, other=1.0)
        ic = tl.load(coef_ptr + 12 * row + offs, mask=mask, other=1.0)
        thr = tl.load(coef_ptr + 13 * row + offs, mask=mask, other=1.0)
        kf = tl.load(coef_ptr + 15 * row + offs, mask=mask, other=1.0)
        dt = tl.load(dt_ptr)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        pol = tl.load(p_ptr + offs, mask=mask, other=0.0)
        cur = tl.load(i_ptr + offs, mask=mask, other=0.0)
        held = tl.load(held_ptr + offs, mask=mask, other=1) != 0
        zero = v * 0.0
        one = zero + 1.0
        for _ in range(steps):
            e = fv * v - fp * pol
            ae = tl.abs(e) + es
            ex = tl.exp(al * (lea - tl.log(ae)))
            rate = tl.exp(-ex) * it0
            se = tl.where(e > 0, one, tl.where(e < 0, -one, zero))
            sv = tl.where(v > 0, one, tl.where(v < 0, -one, zero))
            dist = se * ps - pol
            sens = dist * se * rate * al * ex / ae
            z = (sens * kf - rate) * dt
            small = tl.abs(z) < PHI_SERIES_
            zs = tl.where(small, one, z)
            em = tl.exp(zs) - 1.0
            # sum z^k / (k + 1)! and z^k / (k + 2)!, integer constants only (exact in any dtype)
            s1 = 1.0 + z / 2 * (1.0 + z / 3 * (1.0 + z / 4 * (1.0 + z / 5 * (1.0 + z / 6))))
            s2 = (1.0 + z / 3 * (1.0 + z / 4 * (1.0 + z / 5 * (1.0 + z / 6 * (1.0 + z / 7))))) / 2
            phi1 = tl.where(small, s1, em / zs)
            phi2 = tl.where(small, s2, (em - zs) / (zs * zs))
            leak = sv * (i0a * (tl.exp(v * ivt) - 1.0) + idsc)
            drive = (gain * cur - leak) * ic
            pinned = ((v >= V_CLIP_) & (drive > 0)) | ((v <= -V_CLIP_) & (drive < 0))
            drive = tl.where(pinned, zero, drive)
            inc = dt * phi1 * dist * rate + dt * dt * phi2 * sens * fv * drive
            inc = tl.minimum(tl.maximum(inc, -ps - pol), ps - pol)
            vn = v + dt * drive - ar * inc * ic
            vn = tl.minimum(tl.maximum(vn, -V_CLIP_), V_CLIP_)
            pn = pol + inc
            v = tl.where(held, v, vn)
            pol = tl.where(held, pol, pn)
            held = held | (v > thr)
        tl.store(v_ptr + offs, v, mask=mask)
        tl.store(p_ptr + offs, pol, mask=mask)
        tl.store(held_ptr + offs, held.to(tl.uint8), mask=mask)


def run_hold(
    v: torch.Tensor,
    polarization: torch.Tensor,
    current: torch.Tensor,
    held: torch.Tensor,
    coefficients: torch.Tensor,
    dt: float,
    steps: int,
) -> None:
    """Integrate in place (flat contiguous tensors of one dtype and device; ``held`` uint8)."""
    n = v.numel()
    if n == 0 or steps == 0:
        return
    dt_tensor = torch.tensor([dt], dtype=v.dtype, device=v.device)
    grid = (triton.cdiv(n, BLOCK),)
    _hold_kernel[grid](
        v,
        polarization,
        current,
        held,
        coefficients,
        dt_tensor,
        n,
        int(steps),
        coefficients.stride(0),
        V_CLIP_=float(V_CLIP),
        PHI_SERIES_=float(PHI_SERIES),
        BLOCK_=BLOCK,
    )
