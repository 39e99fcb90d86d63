"""RRAM synapse calibration: 1T1R JART VCM v1b cell in ngspice -> 3-bit conductance levels.

SPICE decks: ``netlists/rram.cir`` (1T1R programming: SET with compliance, or RESET),
``netlists/rram_read.cir`` (read at a small voltage), both including ``netlists/rram_cell.inc``.

``calibrate`` sweeps the programming (compliance) current for the nominal cell and the
variability corners (the paper's Fig. 4a), fits a conductance-vs-programming-current law with lmfit,
picks eight programming currents for the 3-bit states, runs a Monte-Carlo over the device-to-device
variability (recycled worker processes, failures reported per device) and fits each state's
distribution (Fig. 4b). It writes ``rram.json`` into the preset directory atomically.

``validate`` checks the calibrated law against SPICE at programming currents the fit never
saw (between and beyond the fitted points) and the calibrated distributions against a fresh
Monte-Carlo (different seed, two-sample KS per state); it writes ``rram.json`` and the two figures
(Fig. 4a, 4b) into the reports directory. Signatures and default locations are those of every device
module (:mod:`calibration`).

Programming protocol: each device starts in its RESET state (N_disc = its N_discmin) and gets one
SET pulse with the compliance current; the read is at 0.2 V (SET polarity) on the cell alone.
Device-to-device variability: r_fil, l_disc, N_discmax uniform over the JART v1b bounds, N_discmin
log-uniform over 4e-3..0.25 (assumed shapes; the source gives bounds only). Devices whose N_discmin
exceeds the filament a low compliance grows cannot be programmed that low: they make the lowest
states overlap, which the validation report names (the synapse layer samples the calibrated
per-state Monte-Carlo conductances, so training sees it).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bruno.io import atomic_save_figure, atomic_write_json
from calibration import (
    COMMITTED_PRESETS,
    CalibrationError,
    presets_location,
    reports_location,
    spice,
)

ROOT = Path(__file__).resolve().parent.parent
PRESET_NAME = "rram.json"
PRESET_PATH = COMMITTED_PRESETS / PRESET_NAME  # the committed preset of the shipped device
NETLIST = "rram.cir"
READ_NETLIST = "rram_read.cir"
SCHEMA = "bruno.rram-preset/1"

#: JART VCM v1b nominal values of the parameters that vary from device to device (SI units, except
#: N in 1e26 m^-3), and the variability bounds (Bengel et al. 2020).
NOMINAL: dict[str, float] = {"r_fil": 45e-9, "l_disc": 0.4e-9, "ndiscmin": 0.008, "ndiscmax": 20.0}
BOUNDS: dict[str, tuple[float, float]] = {
    "r_fil": (40.5e-9, 49.5e-9),
    "l_disc": (0.36e-9, 0.44e-9),
    "ndiscmin": (4e-3, 0.25),
    "ndiscmax": (18.0, 22.0),
}
#: Programming conditions (see netlists/rram.cir). The SET pulse is long enough that the programmed
#: state is set by the compliance current (self-limiting), not by the pulse width.
V_SET = 2.0
T_PULSE = 200e-9
READ_VOLTAGE = 0.2
#: The cell's useful programming-current range: below it the SET does not complete within the
#: pulse for every device in the bounds (the state stays near N_discmin); above it the access
#: transistor leaves saturation at V_SET (no compliance) and N_disc approaches N_discmax.
I_PROG_MIN = 20e-6
I_PROG_MAX = 400e-6
#: Assumed cycle-to-cycle read noise (relative, 1 sigma). SPICE here is deterministic, so this is an
#: assumption, not a measurement: read-to-read fluctuations of a few percent are typical for the
#: low-resistance states of filamentary HfOx cells in the literature.
CYCLE_TO_CYCLE_READ_NOISE_REL = 0.02
CYCLE_TO_CYCLE_SOURCE = (
    "assumption (not from SPICE, which is deterministic): 2 % relative 1-sigma read-to-read "
    "fluctuation, the order of magnitude reported for low-resistance states of filamentary HfOx "
    "VCM cells (1-5 %); replace with a measured value for your devices"
)
#: Validation tolerances.
TOL_LEVEL_REL_ERROR = 0.03
SEPARATION_SIGMAS = 3.0


class RRAMError(CalibrationError, ValueError):
    """A request the RRAM calibration cannot honour (bad input, a failed sweep)."""


# --------------------------------------------------------------------------------------------
# one device: program (SET with compliance) then read


@dataclasses.dataclass(frozen=True)
class Device:
    """Device-to-device parameters of one cell (the JART v1b variability parameters)."""

    r_fil: float = NOMINAL["r_fil"]
    l_disc: float = NOMINAL["l_disc"]
    ndiscmin: float = NOMINAL["ndiscmin"]
    ndiscmax: float = NOMINAL["ndiscmax"]

    def parameters(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def check_programming_current(i_prog: float) -> float:
    """``i_prog`` as a float, or an error naming the cell's useful range."""
    try:
        value = float(i_prog)
    except (TypeError, ValueError):
        raise RRAMError(f"programming current {i_prog!r} is not a number") from None
    if not math.isfinite(value) or not (
        I_PROG_MIN * (1 - 1e-9) <= value <= I_PROG_MAX * (1 + 1e-9)
    ):
        raise RRAMError(
            f"programming current {value!r} A is outside the cell's useful range "
            f"[{I_PROG_MIN:g}, {I_PROG_MAX:g}] A (below it the SET does not complete for every "
            "device in the variability bounds; above it the access transistor loses compliance)"
        )
    return value


def check_device(device: Device) -> Device:
    for name, value in device.parameters().items():
        if not math.isfinite(value) or value <= 0:
            raise RRAMError(f"device parameter {name}={value!r} must be a positive number")
    if device.ndiscmin >= device.ndiscmax:
        raise RRAMError(f"ndiscmin={device.ndiscmin} must be below ndiscmax={device.ndiscmax}")
    return device


def _strip_control(deck: str) -> str:
    """The deck without its ``.control`` block (that block is for plain ngspice runs)."""
    return re.sub(r"(?ims)^\s*\.control\b.*?^\s*\.endc\b[^\n]*\n?", "", deck)


_DECKS: dict[str, str] = {}


def _deck(name: str) -> str:
    if name not in _DECKS:
        _DECKS[name] = _strip_control(spice.read_netlist(name))
    return _DECKS[name]


def program(
    i_prog: float,
    device: Device = Device(),
    *,
    v_set: float = V_SET,
    t_pulse: float = T_PULSE,
    n_init: float | None = None,
) -> dict[str, float]:
    """SET one cell with compliance ``i_prog`` from its RESET state; the final N_disc and more."""
    i_prog = check_programming_current(i_prog)
    check_device(device)
    overrides: dict[str, float] = {
        **device.parameters(),
        "i_prog": i_prog,
        "v_set": v_set,
        "v_reset": 0.0,
        "t_pulse": t_pulse,
        "n_init": -1.0 if n_init is None else n_init,
    }
    deck = spice.set_parameters(_deck(NETLIST), overrides)
    t_end = 2 * 20e-9 + 2 * 10e-9 + t_pulse
    name = f"rram SET i_prog={i_prog:.4g} A {_describe(device)}"
    result, retries = _tran_with_retries(deck, t_end, name)
    n_disc = result["xcell.nd"]
    current = -result["vbl#branch"]  # current delivered by the bit line into the cell
    final = float(n_disc[-1])
    if not math.isfinite(final) or final <= 0:
        raise spice.ConvergenceError(f"{name}: N_disc ended at {final!r}")
    return {
        "n_disc": final,
        "i_peak_A": float(np.max(np.abs(current))),
        "t_max_rise_K": float(np.max(result["xcell.tn"])),
        "retries": retries,
    }


#: Maximum time steps tried in turn for a programming transient. The SET is a thermal runaway that
#: ngspice's step control can step over; 1 ns converged for every corner of the variability bounds
#: over the useful current range, the others are fall-backs. Each retry is counted in the result.
MAX_STEPS = ("1n", "0.5n", "0.25n")


def _tran_with_retries(deck: str, t_end: float, name: str) -> tuple[spice.SpiceResult, int]:
    errors = []
    for attempt, max_step in enumerate(MAX_STEPS):
        try:
            result = spice.simulate(deck, f"tran 0.1n {t_end!r} 0 {max_step} uic", name=name)
        except spice.ConvergenceError as error:
            errors.append(f"max step {max_step}: {error}")
            continue
        return result, attempt
    raise spice.ConvergenceError(
        f"{name}: the programming transient did not converge with any of the maximum time steps "
        f"{', '.join(MAX_STEPS)}: " + " || ".join(errors)
    )


def read(n_disc: float, device: Device = Device(), *, v_read: float = READ_VOLTAGE) -> float:
    """Read conductance (S) of a cell in state ``n_disc`` at the read voltage."""
    check_device(device)
    if not (math.isfinite(n_disc) and n_disc > 0):
        raise RRAMError(f"state N_disc={n_disc!r} must be a positive number (1e26 m^-3)")
    deck = spice.set_parameters(
        _deck(READ_NETLIST), {**device.parameters(), "n_state": n_disc, "v_read": v_read}
    )
    name = f"rram read N_disc={n_disc:.4g} {_describe(device)}"
    result = spice.simulate(deck, "tran 0.1n 20n 0 0.5n uic", name=name)
    current = -float(result["vrd#branch"][-1])
    voltage = float(result["oe"][-1])
    conductance = current / voltage
    if not (math.isfinite(conductance) and conductance > 0):
        raise spice.ConvergenceError(f"{name}: read gave G={conductance!r} S")
    return conductance


def _describe(device: Device) -> str:
    return (
        f"(r={device.r_fil * 1e9:.3g} nm, l_disc={device.l_disc * 1e9:.3g} nm, "
        f"Ndiscmin={device.ndiscmin:.3g}, Ndiscmax={device.ndiscmax:.3g})"
    )


def program_and_read(job: Mapping[str, Any]) -> dict[str, float]:
    """Worker entry point: ``{"i_prog": A, "device": {...}}`` -> state and read conductance."""
    device = Device(**job.get("device", {}))
    programmed = program(job["i_prog"], device)
    conductance = read(programmed["n_disc"], device)
    return {**programmed, "g_read_S": conductance}


def run_jobs(
    jobs: Sequence[Mapping[str, Any]],
    *,
    function: Any = None,
    workers: int | None = None,
    runs_per_worker: int = 20,
    progress: str | None = None,
) -> tuple[list[dict[str, float] | None], list[spice.RunFailure]]:
    """``program_and_read`` over ``jobs`` in recycled worker processes (calibration.spice.run_many).

    Failures keep their index in ``jobs``.
    """
    return spice.run_many(
        function or program_and_read,
        list(jobs),
        workers=workers,
        runs_per_worker=runs_per_worker,
        progress=progress,
    )


# --------------------------------------------------------------------------------------------
# variability, sweeps, fits

#: Programming currents of the nominal sweep the conductance law is fitted to, and the held-out
#: ones used only by ``validate`` (between the fitted points and beyond both ends of the fit).
FIT_CURRENTS = tuple(float(x) for x in np.geomspace(30e-6, 350e-6, 12))
HELD_OUT_CURRENTS = (20e-6, 25e-6, 41e-6, 67e-6, 105e-6, 175e-6, 280e-6, 380e-6, 400e-6)
#: Conductance range the eight states are spread over (equally spaced in conductance between the
#: law's values at these two currents; the synapse layer maps weights linearly onto conductance).
LEVEL_CURRENT_RANGE = (30e-6, 400e-6)
N_LEVELS = 8


def corner_devices() -> dict[str, Device]:
    """The nominal cell and the four corners of the Fig. 4a bounds (r_fil x l_disc)."""
    (r_lo, r_hi), (l_lo, l_hi) = BOUNDS["r_fil"], BOUNDS["l_disc"]
    return {
        "nominal": Device(),
        "r_min,l_min": Device(r_fil=r_lo, l_disc=l_lo),
        "r_min,l_max": Device(r_fil=r_lo, l_disc=l_hi),
        "r_max,l_min": Device(r_fil=r_hi, l_disc=l_lo),
        "r_max,l_max": Device(r_fil=r_hi, l_disc=l_hi),
    }


def sample_devices(count: int, seed: int) -> list[Device]:
    """``count`` devices drawn independently within the JART v1b variability bounds.

    r_fil, l_disc and N_discmax: uniform over their bounds. N_discmin spans 1.8 decades
    (4e-3-0.25, nominal 8e-3 near the low end): log-uniform, i.e. uniform in its order of magnitude.
    The bounds are all the source gives; the distribution shapes are this calibration's assumption.
    """
    if count < 1:
        raise RRAMError(f"Monte-Carlo needs at least one device per state, got {count}")
    rng = np.random.default_rng(seed)
    devices = []
    for _ in range(count):
        r = rng.uniform(*BOUNDS["r_fil"])
        length = rng.uniform(*BOUNDS["l_disc"])
        lo, hi = BOUNDS["ndiscmin"]
        nmin = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        nmax = rng.uniform(*BOUNDS["ndiscmax"])
        devices.append(
            Device(r_fil=float(r), l_disc=float(length), ndiscmin=nmin, ndiscmax=float(nmax))
        )
    return devices


def sweep(
    currents: Sequence[float], devices: Mapping[str, Device], *, workers: int | None = None
) -> tuple[dict[str, list[dict[str, float] | None]], list[dict[str, Any]]]:
    """Program-and-read every device at every current; failures are returned, never dropped."""
    currents = [check_programming_current(i) for i in currents]
    names = list(devices)
    jobs = [{"i_prog": i, "device": devices[name].parameters()} for name in names for i in currents]
    results, failures = run_jobs(jobs, workers=workers, progress="rram sweep")
    table: dict[str, list[dict[str, float] | None]] = {}
    for k, name in enumerate(names):
        table[name] = results[k * len(currents) : (k + 1) * len(currents)]
    return table, [_failure_record(f, names, len(currents)) for f in failures]


def _failure_record(failure: spice.RunFailure, names: Sequence[str], per: int) -> dict[str, Any]:
    return {
        "index": failure.index,
        "device": names[failure.index // per] if names else None,
        "arguments": failure.arguments,
        "error": failure.error,
    }


def conductance_law(i_prog: np.ndarray, r_s: float, k: float, p: float, q: float) -> np.ndarray:
    """Read conductance (S) vs programming current (A).

    A series resistance ``r_s`` (interface at high N, plug, TiOx and electrodes) in series with a
    filament whose conductance grows as a bent power of the compliance current:
    ``1/G = r_s + 1/g_f``, ``g_f = k x^(p + q ln x)``, ``x = i_prog / 100 uA``.
    """
    x = np.asarray(i_prog, dtype=float) / 100e-6
    log_x = np.log(x)
    g_f = k * np.exp((p + q * log_x) * log_x)
    return 1.0 / (r_s + 1.0 / g_f)


LAW_NAME = "1/G = r_s + 1/(k x^(p + q ln x)), x = I_prog / 100 uA"


def fit_conductance_law(currents: Sequence[float], conductances: Sequence[float]) -> dict[str, Any]:
    """lmfit least squares in relative error; parameters, 1-sigma uncertainties and the report."""
    import lmfit

    currents = np.asarray(currents, dtype=float)
    conductances = np.asarray(conductances, dtype=float)
    if currents.size < 5 or not np.all(np.isfinite(conductances)):
        raise RRAMError(
            f"the conductance law needs >= 5 finite sweep points, got {currents.size} "
            f"({int(np.sum(~np.isfinite(conductances)))} not finite)"
        )
    model = lmfit.Model(conductance_law, independent_vars=["i_prog"])
    params = model.make_params(r_s=1400.0, k=3e-4, p=1.5, q=0.0)
    params["r_s"].set(min=0.0, max=1e5)
    params["k"].set(min=1e-7, max=1.0)
    params["p"].set(min=0.0, max=5.0)
    params["q"].set(min=-2.0, max=2.0)
    result = model.fit(conductances, params, i_prog=currents, weights=1.0 / conductances)
    if not result.success:
        raise RRAMError(f"conductance-law fit did not converge: {result.message}")
    predicted = result.eval(i_prog=currents)
    rel = (predicted - conductances) / conductances
    return {
        "model": LAW_NAME,
        "parameters": {name: float(par.value) for name, par in result.params.items()},
        "uncertainties": {
            name: (float(par.stderr) if par.stderr is not None else None)
            for name, par in result.params.items()
        },
        "units": {"r_s": "Ohm", "k": "S", "p": "1", "q": "1"},
        "fit_currents_A": currents.tolist(),
        "fit_conductances_S": conductances.tolist(),
        "fit_rel_error_max": float(np.max(np.abs(rel))),
        "chi_square_rel": float(np.sum(rel**2)),
        "report": result.fit_report(),
    }


def law_from_payload(law: Mapping[str, Any]) -> Any:
    parameters = dict(law["parameters"])
    return lambda i: conductance_law(np.asarray(i, dtype=float), **parameters)


def invert_law(law: Any, target: float, lo: float = I_PROG_MIN, hi: float = I_PROG_MAX) -> float:
    """Programming current that the law maps to ``target`` S (bisection in log current)."""
    from scipy.optimize import brentq

    f = lambda log_i: float(law(np.exp(log_i))) - target  # noqa: E731
    if f(np.log(lo)) > 0 or f(np.log(hi)) < 0:
        raise RRAMError(f"conductance {target:g} S is outside the law's range over [{lo}, {hi}] A")
    return float(np.exp(brentq(f, np.log(lo), np.log(hi), xtol=1e-10)))


def level_currents(law: Any) -> list[float]:
    """Eight programming currents whose conductances are equally spaced over LEVEL_CURRENT_RANGE."""
    g_lo, g_hi = (float(law(i)) for i in LEVEL_CURRENT_RANGE)
    targets = np.linspace(g_lo, g_hi, N_LEVELS)
    currents = [LEVEL_CURRENT_RANGE[0]]
    currents += [invert_law(law, float(g)) for g in targets[1:-1]]
    currents.append(LEVEL_CURRENT_RANGE[1])
    return currents


def fit_distribution(samples: Sequence[float]) -> dict[str, Any]:
    """Normal distribution fitted (lmfit) to a state's empirical CDF: mean, std, uncertainties."""
    import lmfit
    from scipy.stats import norm

    x = np.sort(np.asarray(samples, dtype=float))
    if x.size < 3:
        raise RRAMError(f"a distribution fit needs >= 3 samples, got {x.size}")
    ecdf = (np.arange(1, x.size + 1) - 0.5) / x.size

    def cdf(g: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        return norm.cdf(g, loc=mu, scale=sigma)

    model = lmfit.Model(cdf, independent_vars=["g"])
    std0 = float(np.std(x, ddof=1)) or abs(float(np.mean(x))) * 1e-3 or 1e-9
    params = model.make_params(mu=float(np.mean(x)), sigma=std0)
    params["sigma"].set(min=std0 * 1e-3)
    result = model.fit(ecdf, params, g=x)
    mu, sigma = float(result.params["mu"].value), float(result.params["sigma"].value)
    return {
        "model": "normal (lmfit to the empirical CDF)",
        "mu_S": mu,
        "sigma_S": sigma,
        "mu_stderr_S": _stderr(result.params["mu"]),
        "sigma_stderr_S": _stderr(result.params["sigma"]),
        "ks_to_own_samples": float(np.max(np.abs(norm.cdf(x, mu, sigma) - ecdf)) + 0.5 / x.size),
        "sample_mean_S": float(np.mean(x)),
        "sample_std_S": float(np.std(x, ddof=1)),
        "sample_median_S": float(np.median(x)),
        "n": int(x.size),
    }


def _stderr(par: Any) -> float | None:
    return float(par.stderr) if par.stderr is not None else None


def monte_carlo(
    currents: Sequence[float], devices_per_state: int, seed: int, *, workers: int | None = None
) -> tuple[list[list[float]], list[dict[str, Any]], list[list[dict[str, float] | None]]]:
    """Program ``devices_per_state`` sampled devices to each current; conductances per state.

    The same devices are used for every state (device-to-device variability: a device with a wide
    filament is wide at every level). Failed runs are returned with their device and reason.
    """
    devices = sample_devices(devices_per_state, seed)
    currents = [check_programming_current(i) for i in currents]
    jobs = [
        {"i_prog": i, "device": d.parameters(), "state": s, "device_index": j}
        for s, i in enumerate(currents)
        for j, d in enumerate(devices)
    ]
    results, failures = run_jobs(jobs, workers=workers, progress="rram Monte-Carlo")
    per_state: list[list[float]] = [[] for _ in currents]
    raw: list[list[dict[str, float] | None]] = [[] for _ in currents]
    for job, result in zip(jobs, results, strict=True):
        raw[job["state"]].append(result)
        if result is not None:
            per_state[job["state"]].append(float(result["g_read_S"]))
    records = [
        {
            "state": jobs[f.index]["state"],
            "device_index": jobs[f.index]["device_index"],
            "programming_current_A": jobs[f.index]["i_prog"],
            "device": jobs[f.index]["device"],
            "error": f.error,
        }
        for f in failures
    ]
    return per_state, records, raw


def separations(means: Sequence[float], stds: Sequence[float]) -> list[float]:
    """Gap between adjacent state means in units of the larger of the two standard deviations."""
    out = []
    for k in range(len(means) - 1):
        sigma = max(stds[k], stds[k + 1])
        # a zero spread (identical samples) counts as a very large separation; JSON has no inf
        out.append(float((means[k + 1] - means[k]) / sigma) if sigma > 0 else 1e12)
    return out


def robust_separations(samples: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Median gap over the larger 1.4826 MAD, and the fractions read nearer the neighbour state."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        med_a, med_b = float(np.median(a)), float(np.median(b))
        mad = max(1.4826 * float(np.median(np.abs(x - np.median(x)))) for x in (a, b))
        mid = 0.5 * (med_a + med_b)
        out.append(
            {
                "separation": (med_b - med_a) / mad if mad > 0 else 1e12,
                "lower_above_midpoint": float(np.mean(a > mid)),
                "upper_below_midpoint": float(np.mean(b < mid)),
            }
        )
    return out


def _versions() -> dict[str, str]:
    import lmfit
    import scipy

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "lmfit": lmfit.__version__,
    }
    try:
        import PySpice

        versions["PySpice"] = PySpice.__version__
    except Exception:  # noqa: BLE001 - provenance only
        pass
    try:
        ng = spice._ngspice()
        versions["ngspice"] = str(getattr(ng, "ngspice_version", "unknown"))
    except Exception:  # noqa: BLE001
        versions["ngspice"] = "unknown"
    return versions


def _display(path: Path) -> str:
    """A path as a report names it: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _report_failures(stage: str, failures: Sequence[Mapping[str, Any]]) -> None:
    if failures:
        print(
            f"rram {stage}: {len(failures)} run(s) failed and are listed in the JSON:",
            file=sys.stderr,
        )
        for failure in failures[:10]:
            print(f"  - {failure}", file=sys.stderr)
        if len(failures) > 10:
            print(f"  ... and {len(failures) - 10} more", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# calibrate / validate

CALIBRATION_SEED = 20250523
VALIDATION_SEED = 777


def _curve(rows: Sequence[Mapping[str, float] | None]) -> list[float | None]:
    return [None if r is None else float(r["g_read_S"]) for r in rows]


def calibrate(quick: bool = False, presets_dir: str | Path | None = None) -> Path:
    """Sweep, fit, pick the 3-bit levels, Monte-Carlo them; write ``<presets_dir>/rram.json``
    (atomic JSON) and return its path. ``quick`` (smoke run): fewer sweep points and devices."""
    target = presets_location(quick, presets_dir, writing=True) / PRESET_NAME
    started = time.time()
    devices_per_state = 12 if quick else 100
    fit_currents = FIT_CURRENTS[::2] if quick else FIT_CURRENTS
    print(
        f"rram calibrate: sweeping {len(fit_currents)} programming currents x 5 devices", flush=True
    )
    table, sweep_failures = sweep(fit_currents, corner_devices())
    nominal = _curve(table["nominal"])
    if any(g is None for g in nominal):
        _report_failures("sweep", sweep_failures)
        raise RRAMError(
            "the nominal programming sweep lost points (listed above); the conductance law is not "
            "fitted to an incomplete sweep"
        )
    law = fit_conductance_law(fit_currents, nominal)
    law_fn = law_from_payload(law)
    currents = level_currents(law_fn)
    print(
        "rram calibrate: law fitted (max rel. error "
        f"{law['fit_rel_error_max']:.2%}); level currents "
        + ", ".join(f"{i * 1e6:.1f}" for i in currents)
        + " uA",
        flush=True,
    )
    print(
        f"rram calibrate: Monte-Carlo {devices_per_state} devices x {N_LEVELS} states", flush=True
    )
    per_state, mc_failures, raw = monte_carlo(currents, devices_per_state, CALIBRATION_SEED)
    _report_failures("Monte-Carlo", mc_failures)
    levels = []
    for k, (i_prog, samples) in enumerate(zip(currents, per_state, strict=True)):
        if len(samples) < 3:
            raise RRAMError(f"state {k}: only {len(samples)} Monte-Carlo samples survived")
        dist = fit_distribution(samples)
        levels.append(
            {
                "programming_current_A": float(i_prog),
                "conductance_mean_S": float(np.mean(samples)),
                "conductance_std_S": float(np.std(samples, ddof=1)),
                "conductance_samples_S": [float(g) for g in samples],
                "law_conductance_S": float(law_fn(i_prog)),
                "nominal_device_conductance_S": None,
                "distribution_fit": dist,
            }
        )
    means = [lv["conductance_mean_S"] for lv in levels]
    if not all(b > a for a, b in zip(means, means[1:], strict=False)):
        raise RRAMError(f"level means are not strictly increasing: {means}")
    stds = [lv["conductance_std_S"] for lv in levels]
    seps = separations(means, stds)
    retries = sum(int(r.get("retries", 0)) for rows in raw for r in rows if r)
    deck_name = spice.NETLIST_DIR / NETLIST
    payload = {
        "schema": SCHEMA,
        "device": "rram",
        "read_voltage_V": READ_VOLTAGE,
        "levels": levels,
        "cycle_to_cycle_read_noise_rel": CYCLE_TO_CYCLE_READ_NOISE_REL,
        "cycle_to_cycle_read_noise_source": CYCLE_TO_CYCLE_SOURCE,
        "conductance_law": law,
        "separation_sigmas": seps,
        "monte_carlo": {
            "devices_per_state": devices_per_state,
            "seed": CALIBRATION_SEED,
            "same_devices_for_every_state": True,
            "distributions": {
                "r_fil": f"uniform {BOUNDS['r_fil']} m",
                "l_disc": f"uniform {BOUNDS['l_disc']} m",
                "ndiscmin": f"log-uniform {BOUNDS['ndiscmin']} x 1e26 m^-3",
                "ndiscmax": f"uniform {BOUNDS['ndiscmax']} x 1e26 m^-3",
            },
            "failures": mc_failures,
            "transient_retries": retries,
        },
        "sweep": {
            "currents_A": list(fit_currents),
            "curves_S": {name: _curve(rows) for name, rows in table.items()},
            "devices": {name: d.parameters() for name, d in corner_devices().items()},
            "failures": sweep_failures,
        },
        "programming": {
            "protocol": "cell in its RESET state (N_disc = N_discmin), one SET pulse on the bit "
            "line with the access transistor's gate set for the compliance current, then a read",
            "v_set_V": V_SET,
            "pulse_width_s": T_PULSE,
            "edge_s": 10e-9,
            "useful_current_range_A": [I_PROG_MIN, I_PROG_MAX],
        },
        "provenance": {
            "netlist": f"netlists/{NETLIST}",
            "netlist_sha256": spice.netlist_hash(deck_name),
            "read_netlist": f"netlists/{READ_NETLIST}",
            "read_netlist_sha256": spice.netlist_hash(spice.NETLIST_DIR / READ_NETLIST),
            "versions": _versions(),
            "created_utc": _now(),
            "quick": quick,
            "wall_time_s": round(time.time() - started, 1),
            "command": "python -m calibration calibrate rram"
            + (" --quick" if quick else "")
            + (f" --presets {presets_dir}" if presets_dir is not None else ""),
        },
    }
    # the nominal device at each level current (a reference for Fig. 4b)
    nominal_rows, _ = run_jobs([{"i_prog": i, "device": {}} for i in currents])
    for level, row in zip(levels, nominal_rows, strict=True):
        level["nominal_device_conductance_S"] = None if row is None else float(row["g_read_S"])
    atomic_write_json(target, payload)
    print(
        f"rram calibrate: wrote {target} in {time.time() - started:.0f} s; levels (uS): "
        + ", ".join(f"{m * 1e6:.1f}" for m in means)
        + "; separations (sigma): "
        + ", ".join(f"{s:.1f}" for s in seps),
        flush=True,
    )
    return target


def load_preset(path: Path | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else PRESET_PATH
    if not path.exists():
        raise RRAMError(
            f"{path} does not exist; run `make calibrate` (or python -m calibration calibrate rram)"
        )
    payload = json.loads(path.read_text())
    if payload.get("schema") != SCHEMA:
        raise RRAMError(f"{path}: schema {payload.get('schema')!r} is not {SCHEMA!r}")
    return payload


def ks_critical(n: int, m: int, alpha: float = 0.01) -> float:
    """Two-sample Kolmogorov-Smirnov critical distance (asymptotic) at level ``alpha``."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))


def validate(
    quick: bool = False,
    presets_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
) -> bool:
    """Held-out programming currents and a fresh Monte-Carlo against ``<presets_dir>/rram.json``;
    writes ``<reports_dir>/rram.json`` and figures; True when within tolerance."""
    from scipy.stats import ks_2samp, norm

    started = time.time()
    preset_path = presets_location(quick, presets_dir) / PRESET_NAME
    output_dir = reports_location(quick, reports_dir)
    preset = load_preset(preset_path)
    law_fn = law_from_payload(preset["conductance_law"])
    fitted = set(round(i, 12) for i in preset["conductance_law"]["fit_currents_A"])
    held_out = [i for i in HELD_OUT_CURRENTS if round(i, 12) not in fitted]
    if quick:
        held_out = held_out[::2]
    print(f"rram validate: {len(held_out)} held-out programming currents", flush=True)
    table, law_failures = sweep(held_out, {"nominal": Device()})
    rows = []
    for i, row in zip(held_out, table["nominal"], strict=True):
        simulated = None if row is None else float(row["g_read_S"])
        predicted = float(law_fn(i))
        rows.append(
            {
                "programming_current_A": i,
                "spice_S": simulated,
                "law_S": predicted,
                "rel_error": None if simulated is None else (predicted - simulated) / simulated,
                "position": "beyond" if i < min(fitted) or i > max(fitted) else "between",
            }
        )
    errors = [abs(r["rel_error"]) for r in rows if r["rel_error"] is not None]
    law_error_max = max(errors) if errors else float("nan")

    levels = preset["levels"]
    currents = [lv["programming_current_A"] for lv in levels]
    devices = 8 if quick else 40
    print(
        f"rram validate: held-out Monte-Carlo {devices} devices x {len(levels)} states", flush=True
    )
    per_state, mc_failures, _ = monte_carlo(currents, devices, VALIDATION_SEED)
    _report_failures("validation", law_failures + mc_failures)
    states = []
    for k, (level, samples) in enumerate(zip(levels, per_state, strict=True)):
        calib = np.asarray(level["conductance_samples_S"], dtype=float)
        held = np.asarray(samples, dtype=float)
        fit = level["distribution_fit"]
        ks2 = ks_2samp(calib, held) if held.size else None
        ks_fit = (
            float(
                np.max(
                    np.abs(
                        norm.cdf(np.sort(held), fit["mu_S"], fit["sigma_S"])
                        - (np.arange(1, held.size + 1) - 0.5) / held.size
                    )
                )
                + 0.5 / held.size
            )
            if held.size
            else None
        )
        states.append(
            {
                "state": k,
                "programming_current_A": level["programming_current_A"],
                "calibrated_mean_S": level["conductance_mean_S"],
                "calibrated_std_S": level["conductance_std_S"],
                "held_out_mean_S": float(np.mean(held)) if held.size else None,
                "held_out_std_S": float(np.std(held, ddof=1)) if held.size > 1 else None,
                "held_out_n": int(held.size),
                "mean_rel_error": float(np.mean(held) / level["conductance_mean_S"] - 1)
                if held.size
                else None,
                "ks_empirical": None if ks2 is None else float(ks2.statistic),
                "ks_empirical_pvalue": None if ks2 is None else float(ks2.pvalue),
                "ks_critical_alpha_0.01": ks_critical(calib.size, max(1, held.size)),
                "ks_normal_fit": ks_fit,
                "held_out_samples_S": held.tolist(),
            }
        )
    ks_values = [s["ks_empirical"] for s in states if s["ks_empirical"] is not None]
    ks_max = max(ks_values) if ks_values else float("nan")
    ks_ok = all(
        s["ks_empirical"] is not None and s["ks_empirical"] <= s["ks_critical_alpha_0.01"]
        for s in states
    )
    means = [lv["conductance_mean_S"] for lv in levels]
    stds = [lv["conductance_std_S"] for lv in levels]
    seps = separations(means, stds)
    samples = [np.asarray(lv["conductance_samples_S"], dtype=float) for lv in levels]
    robust = robust_separations(samples)
    overlapping = [
        {
            "states": [k, k + 1],
            "separation_sigmas": s,
            "robust_separation_mad_sigmas": robust[k]["separation"],
            "fraction_of_lower_state_nearer_the_upper": robust[k]["lower_above_midpoint"],
            "fraction_of_upper_state_nearer_the_lower": robust[k]["upper_below_midpoint"],
        }
        for k, s in enumerate(seps)
        if s <= SEPARATION_SIGMAS
    ]
    total_runs = len(held_out) + devices * len(levels)
    lost = len(law_failures) + len(mc_failures)
    passed = bool(
        errors
        and len(errors) == len(held_out)
        and law_error_max <= TOL_LEVEL_REL_ERROR
        and ks_ok
        and all(b > a for a, b in zip(means, means[1:], strict=False))
        and lost <= 0.01 * total_runs
    )
    figures = _figures(preset, rows, states, output_dir)
    report = {
        "device": "rram",
        "passed": passed,
        "quick": quick,
        "levels_siemens": means,
        "level_stds_siemens": stds,
        "level_programming_currents_A": currents,
        "level_rel_error_max": law_error_max,
        "ks_max": ks_max,
        "tolerances": {
            "held_out_conductance_rel_error_max": TOL_LEVEL_REL_ERROR,
            "ks": "two-sample KS distance (calibration vs held-out Monte-Carlo samples) below its "
            "critical value at alpha = 0.01, every state",
            "separation_sigmas_target": SEPARATION_SIGMAS,
            "lost_runs_max_fraction": 0.01,
        },
        "held_out_currents": rows,
        "states": states,
        "separation_sigmas": seps,
        "separation_robust": robust,
        "overlapping_states": overlapping,
        "overlap_handling": (
            "Overlaps come from devices whose RESET floor N_discmin (log-uniform up to 0.25) lies "
            "above the filament a low compliance current would grow: such a device cannot be "
            "programmed below G(N_discmin), so the lower state gets a tail of stuck-high devices "
            "(the bulk of each state stays separated: see robust_separation_mad_sigmas). "
            "The synapse layer (bruno.synapses, precision 'rram') "
            "does not assume separated levels: every cell reads a fixed quantile of its level's "
            "calibrated Monte-Carlo samples (device-to-device latent) plus read noise, so training "
            "sees the overlap and the stuck-high cells, and the weights adapt to them. Program-and-"
            "verify, or using only the upper states for such devices, would separate them in "
            "hardware."
        )
        if overlapping
        else "all adjacent states separated by more than the target",
        "failures": {"held_out_sweep": law_failures, "monte_carlo": mc_failures},
        "figures": figures,
        "preset": _display(preset_path),
        "preset_created_utc": preset["provenance"]["created_utc"],
        "wall_time_s": round(time.time() - started, 1),
    }
    atomic_write_json(output_dir / PRESET_NAME, report)  # named like the preset it validates
    print(
        f"rram validate: {'PASSED' if passed else 'FAILED'}; held-out conductance error max "
        f"{law_error_max:.2%} (tol {TOL_LEVEL_REL_ERROR:.0%}); KS max {ks_max:.3f}; separations "
        + ", ".join(f"{s:.1f}" for s in seps)
        + f" sigma; overlapping: {[o['states'] for o in overlapping]}; "
        + f"{time.time() - started:.0f} s",
        flush=True,
    )
    return passed


def _figures(
    preset: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    states: Sequence[Mapping[str, Any]],
    output_dir: Path,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    law_fn = law_from_payload(preset["conductance_law"])
    sweep_data = preset["sweep"]
    currents = np.asarray(sweep_data["currents_A"])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    curves = sweep_data["curves_S"]
    corners = [n for n in curves if n != "nominal"]
    lo = np.nanmin([[np.nan if g is None else g for g in curves[n]] for n in corners], axis=0)
    hi = np.nanmax([[np.nan if g is None else g for g in curves[n]] for n in corners], axis=0)
    ax.fill_between(
        currents * 1e6,
        lo * 1e6,
        hi * 1e6,
        color="C0",
        alpha=0.25,
        label="variability bounds (r 40.5-49.5 nm, l_disc 0.36-0.44 nm)",
    )
    nominal = np.asarray([np.nan if g is None else g for g in curves["nominal"]])
    ax.plot(currents * 1e6, nominal * 1e6, "o", color="C0", label="SPICE nominal (fit points)")
    grid = np.geomspace(I_PROG_MIN, I_PROG_MAX, 200)
    ax.plot(grid * 1e6, law_fn(grid) * 1e6, "-", color="k", lw=1, label="fitted law")
    held = [r for r in rows if r["spice_S"] is not None]
    ax.plot(
        [r["programming_current_A"] * 1e6 for r in held],
        [r["spice_S"] * 1e6 for r in held],
        "s",
        mfc="none",
        color="C3",
        label="SPICE held-out",
    )
    for level in preset["levels"]:
        ax.axvline(level["programming_current_A"] * 1e6, color="0.8", lw=0.6, zorder=0)
    ax.set_xlabel("programming (compliance) current (uA)")
    ax.set_ylabel(f"read conductance at {preset['read_voltage_V']} V (uS)")
    ax.set_title("1T1R JART VCM v1b: conductance vs programming current")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path_a = output_dir / "rram_fig4a_conductance_vs_current.png"
    atomic_save_figure(fig, path_a, dpi=130)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    all_g = np.concatenate([np.asarray(lv["conductance_samples_S"]) for lv in preset["levels"]])
    bins = np.linspace(all_g.min(), all_g.max(), 90) * 1e6
    for k, (level, state) in enumerate(zip(preset["levels"], states, strict=True)):
        ax.hist(
            np.asarray(level["conductance_samples_S"]) * 1e6,
            bins=bins,
            alpha=0.55,
            color=f"C{k}",
            label=f"{k}: {level['programming_current_A'] * 1e6:.0f} uA",
        )
        if state["held_out_samples_S"]:
            ax.hist(
                np.asarray(state["held_out_samples_S"]) * 1e6,
                bins=bins,
                histtype="step",
                color=f"C{k}",
                lw=1.2,
            )
    ax.set_xlabel(f"read conductance at {preset['read_voltage_V']} V (uS)")
    ax.set_ylabel("devices")
    ax.set_title("3-bit states: Monte-Carlo (filled) vs held-out devices (outline)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path_b = output_dir / "rram_fig4b_level_distributions.png"
    atomic_save_figure(fig, path_b, dpi=130)
    return [p.name for p in (path_a, path_b)]
