"""Build and load the fused FeLIF fine-path kernel (``bruno/_native/felif_kernel.c``).

``python -m bruno.native build`` (run by ``make setup``) compiles the kernel for *this* CPU with
the first flag set that compiles, loads and passes a numerical self-test in a child process:

1. ``-O3 -ffast-math -march=native -mprefer-vector-width=512 -fopenmp`` (AVX-512 or AVX2; float32
   exp/log are inlined polynomials, float64 calls glibc's vector math, libmvec),
2. ``-O3 -ffast-math -mavx2 -mfma -fopenmp``,
3. ``-O3 -ffast-math -fopenmp`` (baseline x86-64 / the architecture's default vector ISA),
4. as 3. without OpenMP (one thread).

The library lands in ``bruno/_native/build/`` (git-ignored; ``BRUNO_NATIVE_DIR`` overrides, and a
per-user cache directory is used when the package directory is read-only) under a name that hashes
the C source, the Python reference it is checked against (``REFERENCE_SOURCES``), the constants it
shares with :mod:`bruno.felif` (passed as ``-D`` flags, never restated in C), the compiler, the
flags and the CPU's feature flags. A rebuild only happens when one of them changed (idempotent,
~0.1 s when up to date); a library that is stale or was built on another CPU is never loaded:
:func:`load` rebuilds it (or, with ``build_if_missing=False``, refuses it with a warning). When
nothing compiles (no C compiler) the trainers and ``bruno.felif.simulate`` fall back to the torch
reference loop, slower but identical in meaning. ``BRUNO_NATIVE=0`` disables the kernel.

The kernel is called through ctypes on the data pointers of contiguous CPU float32/float64 tensors.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from bruno.felif import DECAY_CAP, V_CLIP, FeLIFParameters, ferroelectric_field
from bruno.io import atomic_write_json

PACKAGE = Path(__file__).resolve().parent
SOURCE = PACKAGE / "_native" / "felif_kernel.c"
# The Python reference the kernel must agree with (its self-test and the equivalence tests): a
# change to these files, like one to the C source, makes the built library stale.
REFERENCE_SOURCES = (PACKAGE / "felif.py", PACKAGE / "fine_path.py")
ABI_VERSION = 2  # bump when the kernel's equations change: an older library is not loaded
BUILD_RECIPE = 3  # bump when the way the library is built changes (forces a rebuild)

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
)

MODE_HOLD = 0
MODE_RESET = 1

_FLAG_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("native", ("-O3", "-ffast-math", "-march=native", "-mprefer-vector-width=512", "-fopenmp")),
    ("avx2", ("-O3", "-ffast-math", "-mavx2", "-mfma", "-fopenmp")),
    ("generic", ("-O3", "-ffast-math", "-fopenmp")),
    ("generic-serial", ("-O3", "-ffast-math", "-fopenmp-simd")),
)


def _cpu_signature() -> str:
    """Machine, CPU model, feature flags: a library is only loaded on the CPU it was built for."""
    parts = [platform.machine(), platform.system()]
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key = line.split(":")[0].strip()
            if key in ("flags", "model name", "Features", "CPU part"):
                parts.append(line.split(":", 1)[1].strip())
                if key == "flags":
                    break
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def build_dir() -> Path:
    """Where libraries and the manifest live (created on demand)."""
    override = os.environ.get("BRUNO_NATIVE_DIR")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return Path(override)
    local = SOURCE.parent / "build"
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bruno-native"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def _manifest_path() -> Path:
    return build_dir() / "manifest.json"


def _definitions() -> tuple[str, ...]:
    """The constants the C source shares with :mod:`bruno.felif`, as compiler definitions."""
    return (
        f"-DBRUNO_ABI_VERSION={ABI_VERSION}",
        f"-DBRUNO_V_CLIP={float(V_CLIP)!r}",
        f"-DBRUNO_DECAY_CAP={float(DECAY_CAP)!r}",
    )


def _build_key(flags: tuple[str, ...] | list[str], compiler_version: str, cpu: str) -> str:
    """What a library was built from: the C source, the Python reference it is tested against,
    the shared constants, the build recipe, compiler, flags and CPU."""
    digest = hashlib.sha256()
    parts = (
        SOURCE.read_bytes(),
        *(path.read_bytes() for path in REFERENCE_SOURCES),
        " ".join(_definitions()).encode(),
        f"recipe {BUILD_RECIPE}".encode(),
        compiler_version.encode(),
        " ".join(flags).encode(),
        cpu.encode(),
    )
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _current_library() -> tuple[Path, dict] | None:
    """The manifest's library and manifest when that library was built from the current sources
    for this CPU; None when there is none or it is stale."""
    try:
        manifest = json.loads(_manifest_path().read_text())
        library = build_dir() / manifest["library"]
        cc = _compiler()
        if cc is None or manifest.get("abi") != ABI_VERSION or not library.exists():
            return None
        key = _build_key(manifest["flags"], _compiler_version(cc), _cpu_signature())
        return (library, manifest) if manifest.get("key") == key else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _self_test(library: Path) -> tuple[bool, str]:
    """Load the library in a child process and compare a short integration with euler_step."""
    code = (
        "import sys; from bruno import native; "
        f"ok, msg = native._check_library({str(library)!r}); print(msg); sys.exit(0 if ok else 1)"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(SOURCE.parents[2]),
            env={**os.environ, "BRUNO_NATIVE": "0"},
        )
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"self-test could not run: {error}"
    message = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode == 0, (message[-1] if message else f"exit {out.returncode}")


def build(
    force: bool = False, verbose: bool = True, variants: tuple[str, ...] | None = None
) -> Path | None:
    """Compile the kernel for this CPU (idempotent). Returns the library path or None.

    ``variants`` restricts the flag sets tried (names from ``_FLAG_SETS``: native, avx2, generic,
    generic-serial), e.g. to test the portable fallbacks.
    """

    def say(message: str) -> None:
        if verbose:
            print(f"bruno.native: {message}", file=sys.stderr)

    cc = _compiler()
    if cc is None:
        say("no C compiler found (gcc/cc/clang); the torch reference fine path will be used")
        return None
    current = None if force else _current_library()
    if current is not None and (not variants or current[1].get("variant") in variants):
        say(f"up to date: {current[0].name} ({current[1]['variant']})")
        return current[0]
    cpu = _cpu_signature()
    version = _compiler_version(cc)
    directory = build_dir()
    manifest_file = _manifest_path()
    errors = []
    flag_sets = [(name, flags) for name, flags in _FLAG_SETS if not variants or name in variants]
    if not flag_sets:
        raise ValueError(
            f"unknown variant(s) {variants}; known: {[name for name, _ in _FLAG_SETS]}"
        )
    for variant, flags in flag_sets:
        key = _build_key(flags, version, cpu)
        library = directory / f"libbruno_felif-{variant}-{key}.so"
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            target = Path(scratch) / library.name
            objfile = Path(scratch) / "felif_kernel.o"
            # Compile and link separately: linking with -ffast-math pulls in crtfastmath.o, whose
            # constructor turns on flush-to-zero for the *whole process* when the library loads
            # (denormals in torch would silently become 0).
            compile_command = [
                cc,
                *flags,
                *_definitions(),
                "-fPIC",
                "-std=gnu11",
                "-c",
                str(SOURCE),
                "-o",
                str(objfile),
            ]
            link_flags = [f for f in flags if f in ("-fopenmp", "-fopenmp-simd")]
            link_command = [cc, "-shared", *link_flags, str(objfile), "-o", str(target), "-lm"]
            result = subprocess.run(compile_command, capture_output=True, text=True)
            if result.returncode == 0:
                result = subprocess.run(link_command, capture_output=True, text=True)
            if result.returncode != 0:
                errors.append(f"{variant}: {result.stderr.strip()[-300:]}")
                continue
            ok, message = _self_test(target)
            if not ok:
                errors.append(f"{variant}: self-test failed: {message}")
                continue
            os.replace(target, library)
        atomic_write_json(
            manifest_file,
            {
                "abi": ABI_VERSION,
                "library": library.name,
                "variant": variant,
                "flags": list(flags),
                "compiler": version,
                "cpu": cpu,
                "key": key,
                "self_test": message,
            },
        )
        for old in directory.glob("libbruno_felif-*.so"):
            if old != library:
                old.unlink(missing_ok=True)
        say(f"built {library.name} with {' '.join(flags)} ({message})")
        global _LIBRARY, _LOAD_TRIED
        with _LOCK:
            _LIBRARY, _LOAD_TRIED = None, False
        return library
    say(
        "every flag set failed; the torch reference fine path will be used:\n  "
        + "\n  ".join(errors)
    )
    return None


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
    ) -> None:
        """Integrate in place. Every tensor must be contiguous, on the CPU, of one dtype."""
        n = v.numel()
        dtype = v.dtype
        function = (
            self.handle.bruno_felif_run_f32
            if dtype == torch.float32
            else self.handle.bruno_felif_run_f64
        )
        for name, tensor in (("p", p), ("current", current), ("coefficients", coefficients)):
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
        block = _block_size(n, threads)

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
            ctypes.c_int64(block),
            ctypes.c_int(threads),
        )


def _block_size(n: int, threads: int) -> int:
    """Neurons per block. Small layers: one block (one thread; splitting < 512 neurons costs more
    than it gains). Otherwise ~4 blocks per thread of 256..1024 neurons, handed out dynamically so
    that a thread slowed by another process on a shared machine does not hold the others up."""
    if threads <= 1 or n < 512:
        block = n
    else:
        block = min(1024, max(256, -(-n // (4 * threads))))
    return max(16, -(-block // 16) * 16)


_LIBRARY: NativeKernel | None = None
_LOAD_TRIED = False
_LOCK = threading.Lock()


def _open(path: Path, variant: str) -> NativeKernel:
    handle = ctypes.CDLL(str(path))
    if handle.bruno_felif_abi_version() != ABI_VERSION:
        raise OSError(f"{path.name}: ABI {handle.bruno_felif_abi_version()} != {ABI_VERSION}")
    if handle.bruno_felif_coefficient_count() != len(COEFFICIENTS):
        raise OSError(f"{path.name}: coefficient count mismatch")
    for name in ("bruno_felif_run_f32", "bruno_felif_run_f64"):
        getattr(handle, name).restype = ctypes.c_int
    return NativeKernel(path=path, variant=variant, handle=handle)


def load(build_if_missing: bool = True) -> NativeKernel | None:
    """The kernel for this CPU, or None (no compiler, BRUNO_NATIVE=0). Cached per process."""
    global _LIBRARY, _LOAD_TRIED
    if os.environ.get("BRUNO_NATIVE", "1") == "0":
        return None
    with _LOCK:
        if _LOAD_TRIED:
            return _LIBRARY
        _LOAD_TRIED = True
    current = _current_library()
    library = (current[0], current[1]["variant"]) if current else None
    if library is None and build_if_missing:
        print(
            "bruno.native: no kernel library built from the current sources for this CPU; "
            "building one",
            file=sys.stderr,
        )
        built = build()
        if built is not None:
            library = (built, json.loads(_manifest_path().read_text())["variant"])
        with _LOCK:
            _LOAD_TRIED = True
    if library is None:
        warnings.warn(
            "bruno.native: no fused FeLIF kernel built from the current sources (run `make setup` "
            "or `python -m bruno.native build`); using the slower torch reference fine path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    try:
        kernel = _open(*library)
    except OSError as error:
        warnings.warn(
            f"bruno.native: could not load {library[0]}: {error}", RuntimeWarning, stacklevel=2
        )
        kernel = None
    with _LOCK:
        _LIBRARY = kernel
    return kernel


def available() -> bool:
    return load() is not None


def pack_coefficients(
    p: FeLIFParameters, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype
) -> torch.Tensor:
    """(len(COEFFICIENTS), n) contiguous CPU tensor of per-neuron kernel coefficients.

    The field's linear coefficients come from :func:`bruno.felif.ferroelectric_field` itself, so the
    equations are not restated here; everything else is a parameter or a reciprocal of one.
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
    )
    n = 1
    for size in shape:
        n *= int(size)
    out = torch.empty((len(COEFFICIENTS), n), dtype=dtype)
    for row, value in enumerate(values):
        out[row] = torch.broadcast_to(value, tuple(shape)).reshape(-1).to(dtype)
    return out


def _check_library(path: str) -> tuple[bool, str]:
    """Numerical self-test of a freshly built library against the torch reference loop."""
    from bruno import fine_path

    tiny = torch.tensor(1e-39, dtype=torch.float32)
    kernel = _open(Path(path), "candidate")
    if float(tiny * 1.0) == 0.0:
        return False, "loading the library switched on flush-to-zero for the whole process"
    generator = torch.Generator().manual_seed(0)
    n = 37
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        p = FeLIFParameters()
        state = fine_path.random_state((n,), p, generator, dtype)
        # the whole input range a neuron can see: sub-nA either sign, and up to +-1 uA, where the
        # membrane is driven to the clip and across threshold within a step
        magnitude = 10.0 ** (torch.rand(n, generator=generator, dtype=torch.float64) * 6 - 12)
        sign = torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0).to(torch.float64)
        current = (sign * magnitude).to(dtype)
        ref, ref_held = fine_path.integrate_reference(state, current, p, 1e-6, 200)
        got, got_held = fine_path.integrate(state, current, p, 1e-6, 200, kernel=kernel)
        error = (got.v - ref.v).abs().max().item()
        if not error <= tolerance * 5 or not torch.equal(ref_held, got_held):
            return (
                False,
                f"{dtype}: max |dv| {error:.3g} V, held equal {torch.equal(ref_held, got_held)}",
            )
    return True, f"self-test ok (float64/float32 vs euler_step, max |dv| {error:.2g} V)"


def info() -> dict:
    kernel = load(build_if_missing=False)
    manifest = {}
    try:
        manifest = json.loads(_manifest_path().read_text())
    except (OSError, ValueError):
        pass
    return {
        "available": kernel is not None,
        "library": str(kernel.path) if kernel else None,
        "variant": kernel.variant if kernel else None,
        "openmp": bool(kernel.handle.bruno_felif_has_openmp()) if kernel else None,
        "flags": manifest.get("flags"),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bruno.native", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the kernel for this CPU (idempotent)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument(
        "--variant",
        action="append",
        choices=[name for name, _ in _FLAG_SETS],
        help="only try this flag set (repeatable); default: all, best first",
    )
    sub.add_parser("info", help="print which kernel is loaded, as JSON")
    bench = sub.add_parser("bench", help="fused kernel vs plain torch loop, neuron-fine-steps/s")
    bench.add_argument("--neurons", type=int, nargs="+", default=[150, 3000, 10000])
    bench.add_argument("--steps", type=int, default=1000)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    if args.command == "build":
        library = build(force=args.force, variants=tuple(args.variant) if args.variant else None)
        # A missing compiler is not an error for `make setup`: the reference path still works.
        return 0 if library is not None or _compiler() is None else 1
    if args.command == "info":
        print(json.dumps(info(), indent=2))
        return 0
    from bruno import fine_path

    rows = fine_path.compare_throughput(
        args.neurons, steps=args.steps, repeats=args.repeats, dtype=getattr(torch, args.dtype)
    )
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
