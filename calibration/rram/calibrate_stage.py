"""RRAM calibration stage: sweep, fit the law, pick the 3-bit levels, Monte-Carlo them, write
the preset."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bruno import devices, presets
from calibration import (
    presets_location,
    spice,
)
from calibration.provenance import display_path, now_utc, versions
from calibration.rram.cell import (
    _report_failures,
    conductances_at,
    corner_devices,
    monte_carlo,
    read_disturb,
    run_jobs,
    sweep,
)
from calibration.rram.common import (
    CALIBRATION_SEED,
    CYCLE_TO_CYCLE_READ_NOISE_REL,
    CYCLE_TO_CYCLE_SOURCE,
    FIT_CURRENTS,
    I_PROG_MAX,
    I_PROG_MIN,
    LEVEL_CURRENT_RANGE,
    N_LEVELS,
    NETLIST,
    PRESET_NAME,
    READ_DISTURB_MAX_REL,
    READ_DISTURB_READS,
    READ_NETLIST,
    READ_VOLTAGE,
    READ_VOLTAGE_CANDIDATES,
    T_PULSE,
    V_SET,
    RRAMError,
    bounds,
    check_within_fit,
)
from calibration.rram.law import (
    fit_conductance_law,
    fit_distribution,
    law_from_payload,
    level_currents,
    separations,
)


def _curve(rows: Sequence[Mapping[str, Any] | None]) -> list[float | None]:
    return [None if r is None else float(r["g_read_S"]) for r in rows]


def _level_reads(
    v_read: float,
    currents: Sequence[float],
    mc_raw: Sequence[Sequence[Mapping[str, Any] | None]],
    nominal_rows: Sequence[Mapping[str, Any] | None],
    law: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The eight levels as read at ``v_read`` (V): the Monte-Carlo devices' conductances (in device
    order, the same devices as at every other voltage), the nominal device's and the law's."""
    law_fn = law_from_payload(law)
    nominal = conductances_at(nominal_rows, v_read)
    levels = []
    for i_prog, rows, g_nominal in zip(currents, mc_raw, nominal, strict=True):
        samples = [g for g in conductances_at(rows, v_read) if g is not None]
        levels.append(
            {
                "programming_current_A": float(i_prog),
                "conductance_mean_S": float(np.mean(samples)),
                "conductance_std_S": float(np.std(samples, ddof=1)),
                "conductance_samples_S": [float(g) for g in samples],
                "law_conductance_S": float(law_fn(i_prog)),
                "nominal_device_conductance_S": g_nominal,
            }
        )
    return levels


def _supported(disturb: Mapping[float, Mapping[str, Any]]) -> list[float]:
    """The read voltages (V) whose reads do not disturb the state, and :data:`READ_VOLTAGE` (kept
    even when they do: the levels are defined there; the warning and the preset's record say so)."""
    return [
        v for v, d in sorted(disturb.items()) if not d["disturbs"] or math.isclose(v, READ_VOLTAGE)
    ]


def _report_disturb(disturb: Mapping[float, Mapping[str, Any]]) -> None:
    for v, entry in sorted(disturb.items()):
        if entry["disturbs"]:
            print(
                f"rram calibrate: a read at {v:g} V disturbs the state (one read moves N_disc by "
                f"{entry['state_drift_per_read_rel_max']:.2e}: {entry['worst_device']} at "
                f"{entry['worst_programming_current_A'] * 1e6:.0f} uA): "
                + (
                    "WARNING: the default read voltage, kept"
                    if math.isclose(v, READ_VOLTAGE)
                    else "dropped"
                ),
                flush=True,
            )


def calibrate(quick: bool = False, presets_dir: str | Path | None = None) -> Path:
    """Sweep, fit, pick the 3-bit levels, Monte-Carlo them, read them at every supported read
    voltage; write ``<presets_dir>/rram.json`` (atomic JSON) and return its path. ``quick`` (smoke
    run): fewer sweep points and devices."""
    from calibration import contract

    for name in devices.KIND_NETLISTS["rram"]:
        contract.check(name)
    target = presets_location(quick, presets_dir, writing=True) / PRESET_NAME
    started = time.time()
    devices_per_state = 12 if quick else 100
    fit_currents = FIT_CURRENTS[::2] if quick else FIT_CURRENTS
    check_within_fit(LEVEL_CURRENT_RANGE, fit_currents, "the level currents")
    candidates = list(READ_VOLTAGE_CANDIDATES)
    print(
        f"rram calibrate: sweeping {len(fit_currents)} programming currents x 5 devices, read at "
        + ", ".join(f"{v:g}" for v in candidates)
        + " V",
        flush=True,
    )
    corners = corner_devices()
    table, sweep_failures = sweep(fit_currents, corners, read_voltages=candidates)
    nominal = _curve(table["nominal"])
    if any(g is None for g in nominal):
        _report_failures("sweep", sweep_failures)
        raise RRAMError(
            "the nominal programming sweep lost points (listed above); the conductance law is not "
            "fitted to an incomplete sweep"
        )
    sweep_reads = [
        (name, i, row)
        for name, rows in table.items()
        for i, row in zip(fit_currents, rows, strict=True)
    ]
    disturb = {d["read_voltage_V"]: d for d in read_disturb(sweep_reads, candidates)}
    mc_voltages = _supported(disturb)
    laws = {
        v: fit_conductance_law(fit_currents, conductances_at(table["nominal"], v))
        for v in mc_voltages
    }
    law = laws[READ_VOLTAGE]
    law_fn = law_from_payload(law)
    currents = level_currents(law_fn)
    print(
        "rram calibrate: law fitted over "
        f"{min(fit_currents) * 1e6:.0f}-{max(fit_currents) * 1e6:.0f} uA (max rel. error "
        + ", ".join(f"{laws[v]['fit_rel_error_max']:.2%} at {v:g} V" for v in mc_voltages)
        + "); level currents "
        + ", ".join(f"{i * 1e6:.1f}" for i in currents)
        + " uA",
        flush=True,
    )
    print(
        f"rram calibrate: Monte-Carlo {devices_per_state} devices x {N_LEVELS} states, read at "
        + ", ".join(f"{v:g}" for v in mc_voltages)
        + " V",
        flush=True,
    )
    per_state, mc_failures, raw = monte_carlo(
        currents, devices_per_state, CALIBRATION_SEED, read_voltages=mc_voltages
    )
    _report_failures("Monte-Carlo", mc_failures)
    for k, samples in enumerate(per_state):
        if len(samples) < 3:
            raise RRAMError(f"state {k}: only {len(samples)} Monte-Carlo samples survived")
    mc_reads = [
        (f"Monte-Carlo device {j}", i, row)
        for i, rows in zip(currents, raw, strict=True)
        for j, row in enumerate(rows)
    ]
    disturb.update(
        {d["read_voltage_V"]: d for d in read_disturb(sweep_reads + mc_reads, mc_voltages)}
    )
    _report_disturb(disturb)
    voltages = _supported(disturb)
    # the nominal device at each level current (a reference for Fig. 4b), at every read voltage
    nominal_rows, _ = run_jobs(
        [{"i_prog": i, "device": {}, "read_voltages_V": voltages} for i in currents]
    )
    reads = [
        {
            "read_voltage_V": v,
            "levels": _level_reads(v, currents, raw, nominal_rows, laws[v]),
            "conductance_law": laws[v],
        }
        for v in voltages
    ]
    levels = next(r["levels"] for r in reads if math.isclose(r["read_voltage_V"], READ_VOLTAGE))
    for level, samples in zip(levels, per_state, strict=True):
        level["distribution_fit"] = fit_distribution(samples)
    means = [lv["conductance_mean_S"] for lv in levels]
    if not all(b > a for a, b in zip(means, means[1:], strict=False)):
        raise RRAMError(f"level means are not strictly increasing: {means}")
    stds = [lv["conductance_std_S"] for lv in levels]
    seps = separations(means, stds)
    retries = sum(int(r.get("retries", 0)) for rows in raw for r in rows if r)
    deck_name = devices.netlist_path(NETLIST)
    limits = {k: tuple(float(f"{x:.6g}") for x in v) for k, v in bounds().items()}
    payload = {
        "schema": presets.RRAM_SCHEMA_WRITTEN,
        "device": "rram",
        "read_voltage_V": READ_VOLTAGE,
        "levels": levels,
        "reads": reads,
        "read_disturb": {
            "criterion": f"a read voltage is supported when {READ_DISTURB_READS:g} reads (the read "
            f"deck's 20 ns transient each) move N_disc by at most {READ_DISTURB_MAX_REL:.0%} "
            "(linear in the largest drift one read caused, over every sweep and Monte-Carlo "
            "read); the default read voltage is kept even when it disturbs",
            "candidates_V": candidates,
            "supported_V": voltages,
            "dropped_V": [v for v in candidates if v not in voltages],
            "voltages": [disturb[v] for v in sorted(disturb)],
        },
        "cycle_to_cycle_read_noise_rel": CYCLE_TO_CYCLE_READ_NOISE_REL,
        "cycle_to_cycle_read_noise_source": CYCLE_TO_CYCLE_SOURCE,
        "conductance_law": law,
        "separation_sigmas": seps,
        "monte_carlo": {
            "devices_per_state": devices_per_state,
            "seed": CALIBRATION_SEED,
            "same_devices_for_every_state": True,
            "distributions": {
                "r_fil": f"uniform {limits['r_fil']} m",
                "l_disc": f"uniform {limits['l_disc']} m",
                "ndiscmin": f"log-uniform {limits['ndiscmin']} x 1e26 m^-3",
                "ndiscmax": f"uniform {limits['ndiscmax']} x 1e26 m^-3",
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
            "device": devices.device_name(),
            "netlist": display_path(deck_name),
            "netlist_sha256": spice.netlist_hash(deck_name),
            "read_netlist": display_path(devices.netlist_path(READ_NETLIST)),
            "read_netlist_sha256": spice.netlist_hash(devices.netlist_path(READ_NETLIST)),
            "versions": versions(),
            "created_utc": now_utc(),
            "quick": quick,
            "wall_time_s": round(time.time() - started, 1),
            "command": "python -m calibration calibrate rram"
            + (" --quick" if quick else "")
            + (f" --presets {presets_dir}" if presets_dir is not None else ""),
        },
    }
    presets.write_preset(presets.rram_preset_from_payload(payload, target), target)
    print(
        f"rram calibrate: wrote {target} in {time.time() - started:.0f} s; levels (uS): "
        + ", ".join(f"{m * 1e6:.1f}" for m in means)
        + "; separations (sigma): "
        + ", ".join(f"{s:.1f}" for s in seps),
        flush=True,
    )
    return target
