"""The FeLIF fine path: ``steps`` steps of :func:`bruno.felif.hold_step`, input current held.

Two backends with the same meaning and the same call ``integrate(state, current, p, dt, steps,
held=None, backend=...)``:

* ``"torch"`` — a plain per-step PyTorch loop of :func:`bruno.felif.hold_step` (the reference; any
  device and dtype). Its step is what the ``bptt`` and ``checkpoint`` trainers differentiate
  through, so their forward values equal it bit for bit.
* ``"native"`` — the fused C/OpenMP kernel (``felif_kernel.c``, built by :mod:`bruno.kernels.build`,
  called through :mod:`bruno.kernels.ffi`) for CPU float32/float64 tensors.
* ``"triton"`` — the fused Triton kernel (:mod:`bruno.kernels.triton_kernel`) for CUDA
  float32/float64 tensors (CPU tensors under ``TRITON_INTERPRET=1``): one launch per call for the
  whole layer and batch. Values only: :func:`integrate_with_jacobian` does not take it.

``backend="auto"`` (the default, or ``$BRUNO_FINE_BACKEND``) takes the native kernel where it
applies, the Triton kernel on CUDA where triton is installed, and the torch loop elsewhere (other
dtypes, no compiler: the last with a warning).
A backend asked for by name that cannot run raises :class:`BackendUnavailable`.

Spike handling is the trainers' (SPEC §3): inside one call a neuron whose membrane exceeds its
threshold *holds* its state for the remaining steps; ``held`` says which neurons crossed.

:func:`integrate_with_jacobian` is the same fine path that also returns the exact Jacobian of its
map ``(v0, P0, I) -> (v, P)``, propagated in forward mode through every step (BRUNO's ``"exact"``
coarse gradient, :mod:`bruno.algorithms`): on the torch backend by autograd of each step's
:func:`bruno.felif.hold_step` (the conventions BPTT differentiates with), in the kernel by its
tangent variant (analytic local Jacobians under the same conventions, checked against the torch
backend by the build's self-test and tests/test_bruno_fine_path.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Callable

import torch

from bruno.felif import FeLIFParameters, FeLIFState, hold_step
from bruno.kernels import build as _build
from bruno.kernels import ffi
from bruno.kernels.ffi import NativeKernel

BACKENDS = ("auto", "native", "torch", "triton")
BACKEND_ENV = "BRUNO_FINE_BACKEND"


class BackendUnavailable(RuntimeError):
    """A fine-path backend asked for by name that cannot run here."""


_LIBRARY: NativeKernel | None = None
_LOADED_GENERATION: int | None = None  # build.GENERATION when _LIBRARY was loaded
_LOCK = threading.Lock()


def load(build_if_missing: bool = True) -> NativeKernel | None:
    """The kernel built from the current sources for this CPU, or None. Cached per process; a
    stale library is rebuilt (``build_if_missing``) or refused, never loaded."""
    global _LIBRARY, _LOADED_GENERATION
    with _LOCK:
        if _LOADED_GENERATION == _build.GENERATION:
            return _LIBRARY
    current = _build.current_library()
    library = (current[0], current[1]["variant"]) if current else None
    if library is None and build_if_missing:
        print(
            "bruno.kernels: no kernel library built from the current sources for this CPU; "
            "building one",
            file=sys.stderr,
        )
        built = _build.build()
        if built is not None:
            library = (built, json.loads(_build.manifest_path().read_text())["variant"])
    kernel = None
    if library is None:
        warnings.warn(
            "bruno.kernels: no fused FeLIF kernel built from the current sources (run `make setup` "
            "or `python -m bruno.kernels build`); using the slower torch reference fine path",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        try:
            kernel = ffi.open_library(*library)
        except OSError as error:
            warnings.warn(
                f"bruno.kernels: could not load {library[0]}: {error}", RuntimeWarning, stacklevel=2
            )
    if kernel is not None or build_if_missing:  # a refusal without a build attempt is not final
        with _LOCK:
            _LIBRARY, _LOADED_GENERATION = kernel, _build.GENERATION
    return kernel


def check_backend(backend: str) -> str:
    """``backend`` if it is a backend name (``"auto"`` resolved from $BRUNO_FINE_BACKEND)."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown fine-path backend {backend!r}; choose one of {BACKENDS}")
    return backend


def select(backend: str, like: torch.Tensor) -> NativeKernel | None:
    """The kernel that ``backend`` runs on tensors like ``like``; None means the torch loop."""
    backend = check_backend(backend)
    if backend in ("torch", "triton"):
        return None
    applies = like.device.type == "cpu" and like.dtype in (torch.float32, torch.float64)
    if backend == "auto":
        return load() if applies else None
    if not applies:
        raise BackendUnavailable(
            f"the native fine path runs CPU float32/float64 tensors, not {like.device} {like.dtype}"
        )
    kernel = load()
    if kernel is None:
        raise BackendUnavailable(
            "the native fine path was asked for but no kernel could be built or loaded here "
            "(python -m bruno.kernels build says why); use backend='torch' or 'auto'"
        )
    return kernel


def _as_bool(held: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if held is None:
        return torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    if held.shape != like.shape:
        raise ValueError(f"held has shape {tuple(held.shape)}, state has {tuple(like.shape)}")
    return held.to(dtype=torch.bool, device=like.device)


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


def _reference_inputs(
    state: FeLIFState, current: torch.Tensor, p: FeLIFParameters, held: torch.Tensor | None
) -> tuple[FeLIFState, torch.Tensor, torch.Tensor, FeLIFParameters]:
    """Detached state, held flags, the current in the state's dtype and ``p`` with its tensor
    fields in that dtype (no silent promotion): what the torch loops start from."""
    state = FeLIFState(state.v.detach(), state.polarization.detach())
    current = current.detach().to(state.v.dtype)
    return state, _as_bool(held, state.v), current, p.to(dtype=state.v.dtype)


def integrate_reference(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor]:
    """The ``"torch"`` backend: a per-step PyTorch loop (no autograd) of ``steps`` hold-steps."""
    _check(state, current, dt, steps)
    with torch.no_grad():
        state, held, current, p = _reference_inputs(state, current, p, held)
        for _ in range(int(steps)):
            state, held = hold_step(state, held, current, p, dt)
    return state, held


def _select_kernel(
    state: FeLIFState,
    current: torch.Tensor,
    dt: float,
    steps: int,
    backend: str,
    kernel: NativeKernel | None,
) -> NativeKernel | None:
    """Check the arguments; the kernel to run (``kernel`` if given), None for the torch loop."""
    _check(state, current, dt, steps)
    return kernel if kernel is not None else select(backend, state.v)


def _run_fused(
    run: Callable[..., None],
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    held: torch.Tensor | None,
    coefficients: torch.Tensor | None,
) -> tuple[FeLIFState, torch.Tensor]:
    """A fused kernel in HOLD mode on flat contiguous copies of the state:
    ``run(v, P, current, held_uint8, coefficients)`` integrates them in place (the current
    broadcast to the neurons, the coefficients packed for this shape, dtype and device)."""
    v = state.v
    shape = v.shape
    with torch.no_grad():
        v_out = v.detach().contiguous().clone().reshape(-1)
        p_out = state.polarization.detach().contiguous().clone().reshape(-1)
        drive = torch.broadcast_to(current.detach().to(v.dtype), shape).contiguous().reshape(-1)
        flags = _as_bool(held, v).to(torch.uint8).contiguous().reshape(-1).clone()
        if coefficients is None or coefficients.device != v.device:
            coefficients = ffi.pack_coefficients(p, shape, v.dtype).to(v.device)
        run(v_out, p_out, drive, flags, coefficients)
    return FeLIFState(v_out.reshape(shape), p_out.reshape(shape)), flags.reshape(shape).bool()


def _run_native(
    kernel: NativeKernel,
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None,
    coefficients: torch.Tensor | None,
    tangents: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor]:
    """The C kernel in HOLD mode (:func:`_run_fused`); ``tangents``: see
    :meth:`bruno.kernels.ffi.NativeKernel.run`."""

    def run(v, pol, drive, flags, packed):
        kernel.run(
            v, pol, drive, False, packed, float(dt), int(steps), ffi.MODE_HOLD,
            held=flags, tangents=tangents,
        )  # fmt: skip

    return _run_fused(run, state, current, p, held, coefficients)


def integrate(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    kernel: NativeKernel | None = None,
    coefficients: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor]:
    """The fine path (no autograd) on ``backend`` (module docstring); returns (state, held).

    ``kernel`` runs that native library instead of choosing one; ``coefficients`` (from
    :func:`bruno.kernels.ffi.pack_coefficients` for this shape and dtype) skip re-packing.
    """
    kernel = _select_kernel(state, current, dt, steps, backend, kernel)
    if kernel is None and _uses_triton(backend, state.v):
        return _run_triton(state, current, p, dt, steps, held, coefficients)
    if kernel is None:
        return integrate_reference(state, current, p, dt, steps, held)
    return _run_native(kernel, state, current, p, dt, steps, held, coefficients)


def _uses_triton(backend: str, like: torch.Tensor) -> bool:
    """Whether ``backend`` means the Triton kernel for tensors like ``like`` (raises if it was
    asked for by name and cannot run)."""
    backend = check_backend(backend)
    if backend not in ("triton", "auto"):
        return False
    from bruno.kernels import triton_kernel

    ok, why = triton_kernel.available(like)
    if backend == "triton" and not ok:
        raise BackendUnavailable(why)
    return ok and (backend == "triton" or like.device.type == "cuda")


def _run_triton(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None,
    coefficients: torch.Tensor | None,
) -> tuple[FeLIFState, torch.Tensor]:
    """The Triton kernel in HOLD mode (:func:`_run_fused`)."""
    from bruno.kernels import triton_kernel

    def run(v, pol, drive, flags, packed):
        triton_kernel.run_hold(v, pol, drive, flags, packed, float(dt), int(steps))

    return _run_fused(run, state, current, p, held, coefficients)


def _identity_jacobian(like: torch.Tensor) -> torch.Tensor:
    """The Jacobian of zero steps, shape (2, 3, *like.shape): d(v, P)/d(v0, P0, I) is
    [[1, 0, 0], [0, 1, 0]] for every neuron."""
    seed = torch.eye(2, 3, dtype=like.dtype, device=like.device)
    return seed.reshape(2, 3, *(1,) * like.dim()).expand(2, 3, *like.shape).contiguous()


def _local_jacobian(
    state: FeLIFState, held: torch.Tensor, current: torch.Tensor, p: FeLIFParameters, dt: float
) -> tuple[FeLIFState, torch.Tensor, torch.Tensor]:
    """One :func:`bruno.felif.hold_step` and its local Jacobian d(v', P')/d(v, P, I), (2, 3, ...),
    by autograd of the step itself: the equations, the clamps' and ties' conventions and the hold
    rule are those BPTT differentiates, not restated. Neurons are independent, so the gradient of
    a sum gives each neuron's entries."""
    with torch.enable_grad():
        inputs = tuple(
            t.detach().requires_grad_(True) for t in (state.v, state.polarization, current)
        )
        new, held = hold_step(FeLIFState(*inputs[:2]), held, inputs[2], p, dt)
        rows = [
            torch.autograd.grad(out.sum(), inputs, retain_graph=True, materialize_grads=True)
            for out in new
        ]
    local = torch.stack([torch.stack(row) for row in rows])
    return FeLIFState(new.v.detach(), new.polarization.detach()), held, local


def _integrate_with_jacobian_reference(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None,
) -> tuple[FeLIFState, torch.Tensor, torch.Tensor]:
    """The ``"torch"`` backend of :func:`integrate_with_jacobian`: per step, the local Jacobian
    (:func:`_local_jacobian`) applied to the tangents, ``J <- A J + (0, 0, b)``, in forward mode.
    Values are :func:`integrate_reference`'s bit for bit (the same step on the same tensors)."""
    with torch.no_grad():
        state, held, current, p = _reference_inputs(state, current, p, held)
        current = torch.broadcast_to(current, state.v.shape)  # one derivative per neuron
        jacobian = _identity_jacobian(state.v)
        for _ in range(int(steps)):
            state, held, local = _local_jacobian(state, held, current, p, dt)
            # rows v, P of the new Jacobian: sum over the old rows, plus the direct current term
            jacobian = (local[:, :2, None] * jacobian[None]).sum(1)
            jacobian[:, 2] += local[:, 2]
    return state, held, jacobian


def integrate_with_jacobian(
    state: FeLIFState,
    current: torch.Tensor,
    p: FeLIFParameters,
    dt: float,
    steps: int,
    held: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    kernel: NativeKernel | None = None,
    coefficients: torch.Tensor | None = None,
) -> tuple[FeLIFState, torch.Tensor, torch.Tensor]:
    """:func:`integrate` and the exact Jacobian of its map, propagated in forward mode through
    every step (BRUNO's ``"exact"`` coarse gradient); returns (state, held, jacobian).

    ``jacobian[i, j]`` (shape ``(2, 3, *state.v.shape)``) is the derivative of the end state's
    ``i`` (v, P) with respect to the start's ``j`` (v0, P0, and the neuron's own current, i.e. the
    current broadcast to the state's shape), as autograd through :func:`bruno.felif.hold_step`
    (``bptt``) gives it: a held neuron's row stops changing, the crossing step counts. Memory is
    O(1) per neuron, whatever ``steps``. Same backends and arguments as :func:`integrate`; the
    values equal its values on the same backend bit for bit.
    """
    if check_backend(backend) == "triton":
        raise BackendUnavailable(
            "the Triton fine path computes values only; use backend='torch' (or 'auto') for the "
            "exact coarse gradient on CUDA"
        )
    kernel = _select_kernel(state, current, dt, steps, backend, kernel)
    if kernel is None:
        return _integrate_with_jacobian_reference(state, current, p, dt, steps, held)
    tangents = _identity_jacobian(state.v.detach()).reshape(ffi.TANGENTS, -1)
    new, held = _run_native(kernel, state, current, p, dt, steps, held, coefficients, tangents)
    return new, held, tangents.reshape(2, 3, *state.v.shape)


def info() -> dict:
    """Which kernel a process would load (without building one), as JSON-ready data."""
    kernel = load(build_if_missing=False)
    current = _build.current_library()
    return {
        "available": kernel is not None,
        "library": str(kernel.path) if kernel else None,
        "variant": kernel.variant if kernel else None,
        "openmp": bool(kernel.handle.bruno_felif_has_openmp()) if kernel else None,
        "flags": current[1].get("flags") if current else None,
        "threads": torch.get_num_threads(),
        "backend": check_backend("auto"),
    }
