"""The fused FeLIF kernel's foreign-function interface: coefficients, spike modes, ctypes calls.

The kernel (``felif_kernel.c`` beside this file, built by :mod:`bruno.kernels.build`) is called on
the data pointers of contiguous CPU float32/float64 tensors. The per-neuron coefficients are
derived from :class:`bruno.felif.FeLIFParameters` by :func:`pack_coefficients` using the model's own
functions, so the equations are not restated in Python.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch

from bruno.felif import FeLIFParameters, feedback_field_coefficient, ferroelectric_field

ABI_VERSION = 4  # bump when the kernel's equations change: an older library is not loaded

# Order of the per-neuron coefficient arrays handed to the kernel (C_* enum in the C source).
COEFFICIENTS = (
    "field_v",
    "field_p",
    "log_ea",
    "soft_field",
    "alpha",
    "inv_tau0",
    "ps",
    "area",
    "leak_i0a",
    "inv_vt",
    "i_dsc",
    "gain",
    "inv_c",
    "threshold",
    "reset_v",
    "feedback",
)


MODE_HOLD = 0  # trainers: a neuron that crossed threshold holds its state (bruno.felif.hold_step)
MODE_RESET = 1  # device simulation: reset at the crossing step (bruno.felif.reset)

# Rows of the tangent buffer of MODE_HOLD (``tangents``, shape (TANGENTS, n)): d(v, P) at the end
# with respect to (v0, P0, I) at the start, row-major, i.e. a (2, 3, n) Jacobian.
TANGENTS = 6

# Blocks are cut at multiples of this many neurons and a block's remainder runs as one padded
# vector of this size (felif_kernel.c, tail_*): the widest SIMD loop gcc makes of the kernel's
# inner loops (64 uint8 lanes with AVX-512; a multiple of every narrower ISA's width).
TAIL_LANES = 64


@dataclass
class NativeKernel:
    """A loaded kernel library."""

    path: Path
    variant: str
    handle: ctypes.CDLL

    def run(
        self,
        v: torch.Tensor,
        p: torch.Tensor,
        current: torch.Tensor,
        current_per_step: bool,
        coefficients: torch.Tensor,
        dt: float,
        steps: int,
        mode: int,
        held: torch.Tensor | None = None,
        fired: torch.Tensor | None = None,
        v_rec: torch.Tensor | None = None,
        p_rec: torch.Tensor | None = None,
        record_every: int = 1,
        threads: int | None = None,
        tangents: torch.Tensor | None = None,
    ) -> None:
        """Integrate in place. Every tensor must be contiguous, on the CPU, of one dtype.

        ``tangents`` ((TANGENTS, n), MODE_HOLD with a constant current only): the Jacobian of the
        state with respect to (v0, P0, I), propagated through every step in place (the caller
        seeds it, with the identity for a Jacobian of this call alone).
        """
        n = v.numel()
        dtype = v.dtype
        if tangents is not None:
            if mode != MODE_HOLD or current_per_step:
                raise ValueError("native kernel: tangents need MODE_HOLD and a constant current")
            if tangents.shape != (TANGENTS, n):
                raise ValueError(f"native kernel: tangents must have shape {(TANGENTS, n)}")
        function = (
            self.handle.bruno_felif_run_f32
            if dtype == torch.float32
            else self.handle.bruno_felif_run_f64
        )
        checked = (("p", p), ("current", current), ("coefficients", coefficients))
        for name, tensor in (*checked, ("tangents", tangents)):
            if tensor is None:
                continue
            if tensor.dtype != dtype or not tensor.is_contiguous() or tensor.device.type != "cpu":
                raise ValueError(f"native kernel: {name} must be a contiguous CPU {dtype} tensor")
        if coefficients.shape != (len(COEFFICIENTS), n):
            raise ValueError(
                f"native kernel: coefficients must have shape {(len(COEFFICIENTS), n)}"
            )
        rows = coefficients.data_ptr()
        stride = coefficients.stride(0) * coefficients.element_size()
        pointers = (ctypes.c_void_p * len(COEFFICIENTS))(
            *[rows + i * stride for i in range(len(COEFFICIENTS))]
        )
        threads = threads or torch.get_num_threads()
        block = _block_size(n, threads, tangents is not None)

        def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
            return ctypes.c_void_p(t.data_ptr() if t is not None else 0)

        function(
            ctypes.c_int64(n),
            ctypes.c_int64(steps),
            ctypes.c_double(dt),
            ptr(v),
            ptr(p),
            ptr(current),
            ctypes.c_int64(n if current_per_step else 0),
            pointers,
            ctypes.c_int(mode),
            ptr(held),
            ptr(fired),
            ptr(v_rec),
            ptr(p_rec),
            ctypes.c_int64(record_every),
            ptr(tangents),
            ctypes.c_int64(block),
            ctypes.c_int(threads),
        )


def _block_size(n: int, threads: int, tangents: bool = False) -> int:
    """Neurons per block. Small layers (< 512 neurons) on several threads: one block per thread
    (blocks run their whole time loop independently, so the only cost is one fork/join per call);
    below 96 neurons one block. A block's remainder past a multiple of the SIMD width runs as one
    padded vector in the kernel (felif_kernel.c, tail_*): 150 neurons on 2 threads went from
    2.1e8 to 5.1e8 neuron-steps/s with it, 27 neurons from 2.5e7 to 1.7e8.
    Otherwise ~4 blocks per thread of 256..1024 neurons, handed out dynamically so that a thread
    slowed by another process on a shared machine does not hold the others up.
    The tangent variant streams 6 more arrays per step: its blocks stay cache-sized (<= 1024
    neurons) on one thread too (measured ~1.5x faster at 96 000 neurons)."""
    if n < 512 and threads > 1 and n >= 96:
        block = -(-n // threads)
    elif n < 512 or (threads <= 1 and not tangents):
        block = n
    elif threads <= 1:
        block = min(n, 1024)
    else:
        block = min(1024, max(256, -(-n // (4 * threads))))
    return -(-block // TAIL_LANES) * TAIL_LANES


def open_library(path: Path, variant: str) -> NativeKernel:
    handle = ctypes.CDLL(str(path))
    if handle.bruno_felif_abi_version() != ABI_VERSION:
        raise OSError(f"{path.name}: ABI {handle.bruno_felif_abi_version()} != {ABI_VERSION}")
    if handle.bruno_felif_coefficient_count() != len(COEFFICIENTS):
        raise OSError(f"{path.name}: coefficient count mismatch")
    for name in ("bruno_felif_run_f32", "bruno_felif_run_f64"):
        getattr(handle, name).restype = ctypes.c_int
    return NativeKernel(path=path, variant=variant, handle=handle)


def pack_coefficients(
    p: FeLIFParameters, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype
) -> torch.Tensor:
    """(len(COEFFICIENTS), n) contiguous CPU tensor of per-neuron kernel coefficients.

    The field's linear coefficients come from :func:`bruno.felif.ferroelectric_field` itself and
    the feedback coefficient from :func:`bruno.felif.feedback_field_coefficient`, so the equations
    are not restated here; everything else is a parameter or a reciprocal of one.
    """

    def t(value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64)

    one = torch.ones((), dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    p64 = p.to(dtype=torch.float64, device="cpu")
    field_v = ferroelectric_field(one, zero, p64)
    field_p = -ferroelectric_field(zero, one, p64)
    values = (
        field_v,
        field_p,
        torch.log(t(p64.activation_field)),
        t(p64.soft_field),
        t(p64.switching_exponent),
        1.0 / t(p64.switching_time_constant),
        t(p64.saturation_polarization),
        t(p64.area),
        t(p64.leak_current_density) * t(p64.area),
        1.0 / t(p64.leak_thermal_voltage),
        t(p64.discharge_current),
        t(p64.input_gain),
        1.0 / t(p64.total_capacitance),
        t(p64.threshold_voltage),
        t(p64.reset_voltage),
        t(feedback_field_coefficient(p64)),
    )
    n = 1
    for size in shape:
        n *= int(size)
    out = torch.empty((len(COEFFICIENTS), n), dtype=dtype)
    for row, value in enumerate(values):
        out[row] = torch.broadcast_to(value, tuple(shape)).reshape(-1).to(dtype)
    return out
