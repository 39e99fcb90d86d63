"""Run SPICE decks from ``netlists/`` in ngspice's shared library through PySpice.

One in-process ngspice instance per Python process; batches of runs go through the execution
layer (:func:`bruno.execution.run_many`: a local process pool or Ray), whose workers are recycled
after a few runs because ngspice leaks memory per run in shared mode. Every failure names the
deck and what went wrong: a missing ngspice, an unknown ``.param``, a run that did not converge.
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import glob
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bruno import devices
from calibration import CalibrationError

_ANALYSIS_LINE = re.compile(r"^\s*\.(tran|dc|op|ac|noise)\b", re.IGNORECASE)
_PARAM_LINE = re.compile(r"^\s*\.param\s+(.*)$", re.IGNORECASE)
_INCLUDE_LINE = re.compile(r"^\s*\.(include|inc|lib)\s+['\"]?([^'\"\s]+)", re.IGNORECASE)
# Messages after which ngspice's results cannot be trusted. Warnings it recovers from (gmin or
# source stepping, a singular matrix during the operating point) are judged by the results instead:
# a transient must reach its stop time.
_FATAL_MESSAGES = (
    "timestep too small",
    "simulation(s) aborted",
    "error on line",
    "unknown subckt",
    "unknown parameter",
    "could not find",
    "no such vector",
)


class SpiceError(CalibrationError, RuntimeError):
    """A SPICE run that could not be set up or did not produce a trustworthy result."""


class NgspiceNotFoundError(SpiceError):
    """The ngspice shared library (libngspice) is not installed or cannot be loaded."""


class ConvergenceError(SpiceError):
    """ngspice stopped before the end of the analysis (time step too small, singular matrix...)."""


@dataclasses.dataclass(frozen=True)
class SpiceResult:
    """Vectors of one analysis (``time`` or the sweep variable, node voltages, branch currents)."""

    vectors: Mapping[str, np.ndarray]
    log: tuple[str, ...]

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.vectors[name.lower()]
        except KeyError:
            raise KeyError(
                f"no vector {name!r} in the SPICE result; available: {sorted(self.vectors)}"
            ) from None


def find_ngspice_library() -> str:
    """Path of libngspice, honouring ``NGSPICE_LIBRARY_PATH``; raises with the install command."""
    configured = os.environ.get("NGSPICE_LIBRARY_PATH")
    if configured:
        if Path(configured).exists():
            return configured
        raise NgspiceNotFoundError(
            f"NGSPICE_LIBRARY_PATH={configured} does not exist. Unset it, or point it at "
            "libngspice.so (Debian: apt-get install -y ngspice libngspice0)."
        )
    candidates: list[str] = []
    for pattern in (
        "/usr/lib/x86_64-linux-gnu/libngspice.so*",
        "/usr/lib/aarch64-linux-gnu/libngspice.so*",
        "/usr/lib/*/libngspice.so*",
        "/usr/lib/libngspice.so*",
        "/usr/local/lib/libngspice.so*",
        "/opt/homebrew/lib/libngspice*.dylib",
    ):
        candidates.extend(sorted(glob.glob(pattern)))
    found = ctypes.util.find_library("ngspice")
    if found and os.path.isabs(found):
        candidates.insert(0, found)
    if candidates:
        return candidates[0]
    raise NgspiceNotFoundError(
        "ngspice's shared library (libngspice) was not found. Install it with "
        "`make setup` (as root) or `apt-get install -y ngspice libngspice0`, or set "
        "NGSPICE_LIBRARY_PATH to libngspice.so."
    )


_instance: Any = None
_circuit_loaded = False


def _ngspice() -> Any:
    """The process's PySpice ``NgSpiceShared`` instance, created on first use."""
    global _instance
    if _instance is not None:
        return _instance
    library = find_ngspice_library()
    os.environ["NGSPICE_LIBRARY_PATH"] = library
    # PySpice logs every stderr line of ngspice as an error and warns about versions it has
    # not seen; we read ngspice's own output instead.
    logging.getLogger("PySpice").setLevel(logging.CRITICAL)
    try:
        from PySpice.Spice.NgSpice.Shared import NgSpiceShared
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise NgspiceNotFoundError(
            f"PySpice is not installed ({error}); run `make setup`."
        ) from error
    try:
        _instance = NgSpiceShared.new_instance()
    except OSError as error:
        raise NgspiceNotFoundError(
            f"could not load ngspice from {library}: {error}. Reinstall with "
            "`apt-get install -y --reinstall libngspice0`."
        ) from error
    return _instance


def netlist_path(path: str | Path) -> Path:
    """A deck's file: an existing path as it is; a bare name is the chosen device's netlist
    (:mod:`bruno.devices`)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute():
        path = devices.netlist_path(str(path))
    return path


def read_netlist(path: str | Path) -> str:
    """The text of a deck (:func:`netlist_path`) with its includes inlined."""
    path = netlist_path(path)
    if not path.exists():
        raise SpiceError(f"netlist {path} does not exist")
    return _inline_includes(path.read_text(), path.parent)


def _inline_includes(deck: str, base: Path) -> str:
    """Replace ``.include`` lines with the files' text, so ngspice needs no working directory."""
    lines = []
    for line in deck.splitlines():
        match = _INCLUDE_LINE.match(line)
        if match and match.group(1).lower() in ("include", "inc"):
            included = (base / match.group(2)).resolve()
            if not included.exists():  # a device directory may take the shipped include
                included = devices.netlist_path(match.group(2))
            if not included.exists():
                raise SpiceError(f"{line.strip()!r}: {included} does not exist")
            body = _inline_includes(included.read_text(), included.parent)
            lines.extend(ln for ln in body.splitlines() if ln.strip().lower() not in (".end",))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def netlist_hash(path: str | Path) -> str:
    """sha256 of a deck with its includes inlined: the provenance of a calibration."""
    return hashlib.sha256(read_netlist(path).encode()).hexdigest()


def deck_parameters(deck: str) -> dict[str, str]:
    """The ``.param`` assignments of a deck, as written (expressions stay strings)."""
    found: dict[str, str] = {}
    for line in deck.splitlines():
        match = _PARAM_LINE.match(line)
        if match:
            for name, value in _split_assignments(match.group(1)):
                found[name.lower()] = value
    return found


def _split_assignments(text: str) -> list[tuple[str, str]]:
    text = text.split(";")[0]
    pairs = []
    for match in re.finditer(r"(\w+)\s*=\s*(\{[^}]*\}|'[^']*'|[^\s]+)", text):
        pairs.append((match.group(1), match.group(2)))
    return pairs


def set_parameters(deck: str, overrides: Mapping[str, float | str]) -> str:
    """A copy of ``deck`` with ``.param`` values replaced; unknown names are an error."""
    remaining = {name.lower(): value for name, value in overrides.items()}
    lines = []
    for line in deck.splitlines():
        match = _PARAM_LINE.match(line)
        if match:
            new = []
            for name, value in _split_assignments(match.group(1)):
                if name.lower() in remaining:
                    value = _format_value(remaining.pop(name.lower()))
                new.append(f"{name}={value}")
            line = ".param " + " ".join(new)
        lines.append(line)
    if remaining:
        raise SpiceError(
            f"parameters {sorted(remaining)} are not .param names of this deck; known: "
            f"{sorted(deck_parameters(deck))}"
        )
    return "\n".join(lines) + "\n"


def _format_value(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if not np.isfinite(value):
        raise SpiceError(f"parameter value {value!r} is not finite")
    return repr(float(value))


def simulate(
    deck: str,
    analysis: str | None = None,
    *,
    name: str = "deck",
    expect_stop_time: float | None = None,
) -> SpiceResult:
    """Run one analysis of a deck in this process's ngspice and return its vectors.

    ``analysis`` is an ngspice command such as ``"tran 1u 10m 0 1u uic"``; when given, the deck's
    own analysis lines are dropped, otherwise they run. A transient that ends before its stop time
    (given, or parsed from ``analysis``) raises :class:`ConvergenceError`.
    """
    global _circuit_loaded
    ng = _ngspice()
    if analysis is not None:
        deck = "\n".join(ln for ln in deck.splitlines() if not _ANALYSIS_LINE.match(ln)) + "\n"
        tran = analysis if analysis.split()[0].lower() == "tran" else None
    else:
        tran = next(
            (ln.strip()[1:] for ln in deck.splitlines() if ln.strip().lower().startswith(".tran")),
            None,
        )
    if expect_stop_time is None and tran is not None:
        expect_stop_time = _parse_spice_number(tran.split()[2])
    lines = deck.splitlines()
    if not lines or lines[-1].strip().lower() != ".end":
        lines.append(".end")
    _release_previous_run(ng)
    try:
        ng.load_circuit("\n".join(lines))
        _circuit_loaded = True
    except Exception as error:
        raise SpiceError(f"{name}: ngspice rejected the deck: {_log_tail(ng)}") from error
    _check_log(ng, name, "loading")
    command = analysis if analysis is not None else "run"
    try:
        ng.exec_command(command)
    except Exception:
        pass  # judged below from ngspice's own messages and the vectors it produced
    _check_log(ng, name, command)
    plot_name = ng.last_plot
    if plot_name in (None, "const"):
        raise SpiceError(f"{name}: '{command}' produced no results: {_log_tail(ng)}")
    plot = ng.plot(None, plot_name)
    vectors = {key.lower(): np.real(np.asarray(vec._data)) for key, vec in plot.items()}
    if expect_stop_time is not None:
        time = vectors.get("time")
        if time is None or time.size == 0 or time[-1] < expect_stop_time * (1 - 1e-6):
            reached = float(time[-1]) if time is not None and time.size else 0.0
            raise ConvergenceError(
                f"{name}: transient stopped at t = {reached:.6g} s of {expect_stop_time:.6g} s. "
                f"ngspice said: {_log_tail(ng)}. Tighten the time step (maximum step) or relax "
                "reltol/abstol in the deck's .options."
            )
    log = tuple(ng.stdout.splitlines() + ng.stderr.splitlines())
    return SpiceResult(vectors=vectors, log=log)


def _release_previous_run(ng: Any) -> None:
    """Drop the previous circuit and its plots, so memory and names do not pile up."""
    global _circuit_loaded
    for command in ("destroy all", "remcirc") if _circuit_loaded else ("destroy all",):
        try:
            ng.exec_command(command)
        except Exception:  # noqa: BLE001 - nothing to release is fine
            pass
    _circuit_loaded = False
    ng.clear_output()


def _parse_spice_number(text: str) -> float:
    suffixes = {
        "f": 1e-15,
        "p": 1e-12,
        "n": 1e-9,
        "u": 1e-6,
        "m": 1e-3,
        "k": 1e3,
        "meg": 1e6,
        "g": 1e9,
        "t": 1e12,
    }
    match = re.fullmatch(r"([-+]?[\d.]+(?:e[-+]?\d+)?)([a-z]*)", text.strip().lower())
    if not match:
        raise SpiceError(f"cannot read SPICE number {text!r}")
    value, suffix = float(match.group(1)), match.group(2)
    for key in ("meg", "f", "p", "n", "u", "m", "k", "g", "t"):
        if suffix.startswith(key):
            return value * suffixes[key]
    return value


def _log_tail(ng: Any, lines: int = 6) -> str:
    text = [ln for ln in (ng.stderr + "\n" + ng.stdout).splitlines() if ln.strip()]
    return " | ".join(text[-lines:]) or "(no output)"


def _check_log(ng: Any, name: str, stage: str) -> None:
    for line in ng.stderr.splitlines() + ng.stdout.splitlines():
        lowered = line.lower()
        if any(message in lowered for message in _FATAL_MESSAGES):
            convergence = any(
                word in lowered for word in ("step", "singular", "aborted", "iteration")
            )
            error = ConvergenceError if convergence else SpiceError
            raise error(f"{name}: ngspice failed while {stage}: {line.strip()} ({_log_tail(ng)})")
