"""The 1T1R RRAM cell in ngspice: program (SET with compliance) and read one device, batches of
devices in recycled worker processes (sweeps over programming current, Monte-Carlo over devices)."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from bruno import execution
from calibration import (
    spice,
)
from calibration.rram.common import (
    NETLIST,
    READ_DISTURB_MAX_REL,
    READ_DISTURB_READS,
    READ_NETLIST,
    READ_VOLTAGE,
    T_PULSE,
    V_SET,
    Device,
    RRAMError,
    bounds,
    check_device,
    check_programming_current,
)


def _strip_control(deck: str) -> str:
    """The deck without its ``.control`` block (that block is for plain ngspice runs)."""
    return re.sub(r"(?ims)^\s*\.control\b.*?^\s*\.endc\b[^\n]*\n?", "", deck)


_DECKS: dict[str, str] = {}


def _deck(name: str) -> str:
    """The chosen device's deck ``name`` without its control block (kept per file)."""
    path = str(spice.netlist_path(name))
    if path not in _DECKS:
        _DECKS[path] = _strip_control(spice.read_netlist(path))
    return _DECKS[path]


def program(
    i_prog: float,
    device: Device | None = None,
    *,
    v_set: float = V_SET,
    t_pulse: float = T_PULSE,
    n_init: float | None = None,
) -> dict[str, float]:
    """SET one cell with compliance ``i_prog`` from its RESET state; the final N_disc and more."""
    i_prog = check_programming_current(i_prog)
    device = check_device(device or Device())
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


class CellRead(NamedTuple):
    """One read of a cell: its conductance and how far the read moved its state."""

    conductance_S: float  # G = I / v_read at the end of the read
    state_drift_rel: float  # (N_disc after - N_disc before) / N_disc before, over the one read


def read_cell(
    n_disc: float, device: Device | None = None, *, v_read: float = READ_VOLTAGE
) -> CellRead:
    """Read a cell in state ``n_disc`` at ``v_read`` (V): conductance (S) and the state's drift."""
    device = check_device(device or Device())
    if not (math.isfinite(n_disc) and n_disc > 0):
        raise RRAMError(f"state N_disc={n_disc!r} must be a positive number (1e26 m^-3)")
    deck = spice.set_parameters(
        _deck(READ_NETLIST), {**device.parameters(), "n_state": n_disc, "v_read": v_read}
    )
    name = f"rram read N_disc={n_disc:.4g} at {v_read:g} V {_describe(device)}"
    result = spice.simulate(deck, "tran 0.1n 20n 0 0.5n uic", name=name)
    current = -float(result["vrd#branch"][-1])
    voltage = float(result["oe"][-1])
    conductance = current / voltage
    if not (math.isfinite(conductance) and conductance > 0):
        raise spice.ConvergenceError(f"{name}: read gave G={conductance!r} S")
    return CellRead(conductance, float(result["xcell.nd"][-1]) / n_disc - 1.0)


def read(n_disc: float, device: Device | None = None, *, v_read: float = READ_VOLTAGE) -> float:
    """Read conductance (S) of a cell in state ``n_disc`` at the read voltage (V)."""
    return read_cell(n_disc, device, v_read=v_read).conductance_S


def _describe(device: Device) -> str:
    return (
        f"(r={device.r_fil * 1e9:.3g} nm, l_disc={device.l_disc * 1e9:.3g} nm, "
        f"Ndiscmin={device.ndiscmin:.3g}, Ndiscmax={device.ndiscmax:.3g})"
    )


def program_and_read(job: Mapping[str, Any]) -> dict[str, Any]:
    """Worker entry point: ``{"i_prog": A, "device": {...}, "read_voltages_V": [V, ...]}`` -> the
    programmed state, its conductance at :data:`READ_VOLTAGE` (``g_read_S``) and, when read
    voltages are given, those and its conductance and state drift at each (``read_voltages_V``,
    ``g_reads_S``, ``state_drifts_rel``; one programmed state read at every voltage, the default
    read reused)."""
    device = Device(**job.get("device", {}))
    programmed = program(job["i_prog"], device)
    voltages = [float(v) for v in job.get("read_voltages_V", ())]
    reads = {
        v: read_cell(programmed["n_disc"], device, v_read=v) for v in {READ_VOLTAGE, *voltages}
    }
    out: dict[str, Any] = {**programmed, "g_read_S": reads[READ_VOLTAGE].conductance_S}
    if voltages:
        out["read_voltages_V"] = voltages
        out["g_reads_S"] = [reads[v].conductance_S for v in voltages]
        out["state_drifts_rel"] = [reads[v].state_drift_rel for v in voltages]
    return out


def _at(row: Mapping[str, Any], key: str, v_read: float) -> float:
    """``row[key]`` (a per-read-voltage list of :func:`program_and_read`) at ``v_read`` (V)."""
    voltages = [round(float(v), 9) for v in row["read_voltages_V"]]
    return float(row[key][voltages.index(round(v_read, 9))])


def conductances_at(rows: Sequence[Mapping[str, Any] | None], v_read: float) -> list[float | None]:
    """The conductances (S) at ``v_read`` (V) of :func:`program_and_read` results (None stays)."""
    return [None if r is None else _at(r, "g_reads_S", v_read) for r in rows]


def read_disturb(
    reads: Iterable[tuple[str, float, Mapping[str, Any] | None]], voltages: Sequence[float]
) -> list[dict[str, Any]]:
    """Per read voltage (V), the largest state drift one read caused over ``reads`` (``(device
    label, programming current, program_and_read result)``) and whether that read disturbs:
    :data:`READ_DISTURB_READS` such reads move N_disc by more than :data:`READ_DISTURB_MAX_REL`."""
    worst: list[tuple[float, str, float]] = [(0.0, "", math.nan) for _ in voltages]
    for label, i_prog, row in reads:
        if row is None:
            continue
        for k, v in enumerate(voltages):
            drift = abs(_at(row, "state_drifts_rel", v))
            if drift >= worst[k][0]:
                worst[k] = (drift, label, i_prog)
    return [
        {
            "read_voltage_V": float(v),
            "state_drift_per_read_rel_max": drift,
            "worst_device": label,
            "worst_programming_current_A": i_prog,
            "reads_to_max_drift": READ_DISTURB_MAX_REL / drift if drift > 0 else None,
            "disturbs": drift * READ_DISTURB_READS > READ_DISTURB_MAX_REL,
        }
        for v, (drift, label, i_prog) in zip(voltages, worst, strict=True)
    ]


def run_jobs(
    jobs: Sequence[Mapping[str, Any]],
    *,
    function: Any = None,
    workers: int | None = None,
    runs_per_worker: int = 20,
    progress: str | None = None,
) -> tuple[list[dict[str, float] | None], list[execution.RunFailure]]:
    """``program_and_read`` over ``jobs`` in recycled worker processes (bruno.execution.run_many).

    Failures keep their index in ``jobs``.
    """
    return execution.run_many(
        function or program_and_read,
        list(jobs),
        workers=workers,
        runs_per_worker=runs_per_worker,
        progress=progress,
    )


def corner_devices() -> dict[str, Device]:
    """The nominal cell and the four corners of the Fig. 4a bounds (r_fil x l_disc)."""
    limits = bounds()
    (r_lo, r_hi), (l_lo, l_hi) = limits["r_fil"], limits["l_disc"]
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
    limits = bounds()
    devices = []
    for _ in range(count):
        r = rng.uniform(*limits["r_fil"])
        length = rng.uniform(*limits["l_disc"])
        lo, hi = limits["ndiscmin"]
        nmin = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        nmax = rng.uniform(*limits["ndiscmax"])
        devices.append(
            Device(r_fil=float(r), l_disc=float(length), ndiscmin=nmin, ndiscmax=float(nmax))
        )
    return devices


def sweep(
    currents: Sequence[float],
    devices: Mapping[str, Device],
    *,
    read_voltages: Sequence[float] = (),
    workers: int | None = None,
) -> tuple[dict[str, list[dict[str, Any] | None]], list[dict[str, Any]]]:
    """Program-and-read every device at every current (and at every one of ``read_voltages``);
    failures are returned, never dropped."""
    currents = [check_programming_current(i) for i in currents]
    names = list(devices)
    jobs = [
        {"i_prog": i, "device": devices[name].parameters(), "read_voltages_V": list(read_voltages)}
        for name in names
        for i in currents
    ]
    results, failures = run_jobs(jobs, workers=workers, progress="rram sweep")
    table: dict[str, list[dict[str, float] | None]] = {}
    for k, name in enumerate(names):
        table[name] = results[k * len(currents) : (k + 1) * len(currents)]
    return table, [_failure_record(f, names, len(currents)) for f in failures]


def _failure_record(
    failure: execution.RunFailure, names: Sequence[str], per: int
) -> dict[str, Any]:
    return {
        "index": failure.index,
        "device": names[failure.index // per] if names else None,
        "arguments": failure.arguments,
        "error": failure.error,
    }


def monte_carlo(
    currents: Sequence[float],
    devices_per_state: int,
    seed: int,
    *,
    read_voltages: Sequence[float] = (),
    workers: int | None = None,
) -> tuple[list[list[float]], list[dict[str, Any]], list[list[dict[str, Any] | None]]]:
    """Program ``devices_per_state`` sampled devices to each current; conductances per state at
    :data:`READ_VOLTAGE`, and the raw results (each read at every one of ``read_voltages``).

    The same devices are used for every state (device-to-device variability: a device with a wide
    filament is wide at every level). Failed runs are returned with their device and reason.
    """
    devices = sample_devices(devices_per_state, seed)
    currents = [check_programming_current(i) for i in currents]
    jobs = [
        {
            "i_prog": i,
            "device": d.parameters(),
            "state": s,
            "device_index": j,
            "read_voltages_V": list(read_voltages),
        }
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
