"""Build the fused FeLIF fine-path kernel (``felif_kernel.c`` beside this file) for this CPU.

``python -m bruno.kernels build`` (run by ``make setup``) compiles the kernel with the first flag
set that compiles, loads and passes a numerical self-test (:mod:`bruno.kernels.selftest`) in a
child process:

1. ``-O3 -ffast-math -march=native -mprefer-vector-width=512 -fopenmp`` (AVX-512 or AVX2; float32
   exp/log are inlined polynomials, float64 calls glibc's vector math, libmvec),
2. ``-O3 -ffast-math -mavx2 -mfma -fopenmp``,
3. ``-O3 -ffast-math -fopenmp`` (baseline x86-64 / the architecture's default vector ISA),
4. as 3. without OpenMP (one thread).

The library lands in ``bruno/kernels/build/`` (git-ignored; ``BRUNO_NATIVE_DIR`` overrides, and a
per-user cache directory is used when the package directory is read-only) under a name that hashes
the C source, the Python reference it is checked against (``REFERENCE_SOURCES``), the constants it
shares with :mod:`bruno.felif` (passed as ``-D`` flags, never restated in C), the compiler, the
flags and the CPU's feature flags. A rebuild only happens when one of them changed (idempotent,
~0.1 s when up to date); a library that is stale or was built on another CPU is never loaded
(:func:`current_library` is what :func:`bruno.kernels.load` trusts).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bruno.felif import PHI_SERIES, V_CLIP
from bruno.io import atomic_write_json
from bruno.kernels.ffi import ABI_VERSION, TAIL_LANES, TANGENTS

PACKAGE = Path(__file__).resolve().parent
SOURCE = PACKAGE / "felif_kernel.c"
# What the kernel is checked against (the self-test and the equivalence tests): the model's
# equations and spike rules, the reference loop, the coefficient packing and the self-test itself.
# A change to any of them, as to the C source, makes a built library stale.
REFERENCE_SOURCES = (
    PACKAGE.parent / "felif.py",
    PACKAGE / "__init__.py",
    PACKAGE / "ffi.py",
    PACKAGE / "selftest.py",
    PACKAGE / "accuracy.py",  # the self-test's ODE-reference check and its tolerances
    PACKAGE / "ode_reference.py",
)
BUILD_RECIPE = 4  # bump when the way the library is built changes (forces a rebuild)
GENERATION = 0  # libraries built by this process so far

FLAG_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
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


def compiler() -> str | None:
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
    local = PACKAGE / "build"
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bruno-native"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def manifest_path() -> Path:
    return build_dir() / "manifest.json"


def _definitions() -> tuple[str, ...]:
    """The constants the C source shares with :mod:`bruno.felif` and :mod:`bruno.kernels.ffi`, as
    compiler definitions."""
    return (
        f"-DBRUNO_ABI_VERSION={ABI_VERSION}",
        f"-DBRUNO_TAIL_LANES={TAIL_LANES}",
        f"-DBRUNO_TANGENTS={TANGENTS}",
        f"-DBRUNO_V_CLIP={float(V_CLIP)!r}",
        f"-DBRUNO_PHI_SERIES={float(PHI_SERIES)!r}",
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


def current_library() -> tuple[Path, dict] | None:
    """The manifest's library and manifest when that library was built from the current sources
    for this CPU; None when there is none or it is stale."""
    try:
        manifest = json.loads(manifest_path().read_text())
        library = build_dir() / manifest["library"]
        cc = compiler()
        if cc is None or manifest.get("abi") != ABI_VERSION or not library.exists():
            return None
        key = _build_key(manifest["flags"], _compiler_version(cc), _cpu_signature())
        return (library, manifest) if manifest.get("key") == key else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _self_test(library: Path) -> tuple[bool, str]:
    """Load the library in a child process and compare it with the torch reference there."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bruno.kernels.selftest", str(library)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(PACKAGE.parents[1]),
            env={**os.environ, "BRUNO_FINE_BACKEND": "torch"},
        )
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"self-test could not run: {error}"
    message = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode == 0, (message[-1] if message else f"exit {out.returncode}")


def build(
    force: bool = False, verbose: bool = True, variants: tuple[str, ...] | None = None
) -> Path | None:
    """Compile the kernel for this CPU (idempotent). Returns the library path or None.

    ``variants`` restricts the flag sets tried (names from ``FLAG_SETS``: native, avx2, generic,
    generic-serial), e.g. to test the portable fallbacks.
    """

    def say(message: str) -> None:
        if verbose:
            print(f"bruno.kernels: {message}", file=sys.stderr)

    cc = compiler()
    if cc is None:
        say("no C compiler found (gcc/cc/clang); the torch reference fine path will be used")
        return None
    current = None if force else current_library()
    if current is not None and (not variants or current[1].get("variant") in variants):
        say(f"up to date: {current[0].name} ({current[1]['variant']})")
        return current[0]
    cpu = _cpu_signature()
    version = _compiler_version(cc)
    directory = build_dir()
    manifest_file = manifest_path()
    errors = []
    flag_sets = [(name, flags) for name, flags in FLAG_SETS if not variants or name in variants]
    if not flag_sets:
        raise ValueError(f"unknown variant(s) {variants}; known: {[name for name, _ in FLAG_SETS]}")
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
        global GENERATION
        GENERATION += 1  # a process that loaded an older library loads this one next time
        return library
    say(
        "every flag set failed; the torch reference fine path will be used:\n  "
        + "\n  ".join(errors)
    )
    return None
