"""RRAM calibration stage: sweep, fit the law, pick the 3-bit levels, Monte-Carlo them, write
the preset."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bruno import devices, presets
from calibration import (
    presets_location,
    spice,
)
from calibration.provenance import display_path, now_utc, versions
from calibration.rram.cell import _report_failures, corner_devices, monte_carlo, run_jobs, sweep
from calibration.rram.common import (
    CALIBRATION_SEED,
    CYCLE_TO_CYCLE_READ_NOISE_REL,
    CYCLE_TO_CYCLE_SOURCE,
    FIT_CURRENTS,
    I_PROG_MAX,
    I_PROG_MIN,
    N_LEVELS,
    NETLIST,
    PRESET_NAME,
    READ_NETLIST,
    READ_VOLTAGE,
    T_PULSE,
    V_SET,
    RRAMError,
    bounds,
)
from calibration.rram.law import (
    fit_conductance_law,
    fit_distribution,
    law_from_payload,
    level_currents,
    separations,
)


def _curve(rows: Sequence[Mapping[str, float] | None]) -> list[float | None]:
    return [None if r is None else float(r["g_read_S"]) for r in rows]


def calibrate(quick: bool = False, presets_dir: str | Path | None = None) -> Path:
    """Sweep, fit, pick the 3-bit levels, Monte-Carlo them; write ``<presets_dir>/rram.json``
    (atomic JSON) and return its path. ``quick`` (smoke run): fewer sweep points and devices."""
    from calibration import contract

    for name in devices.KIND_NETLISTS["rram"]:
        contract.check(name)
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
    deck_name = devices.netlist_path(NETLIST)
    limits = {k: tuple(float(f"{x:.6g}") for x in v) for k, v in bounds().items()}
    payload = {
        "schema": f"{presets.RRAM_SCHEMA}/{presets.SUPPORTED_MAJOR}",
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
    # the nominal device at each level current (a reference for Fig. 4b)
    nominal_rows, _ = run_jobs([{"i_prog": i, "device": {}} for i in currents])
    for level, row in zip(levels, nominal_rows, strict=True):
        level["nominal_device_conductance_S"] = None if row is None else float(row["g_read_S"])
    presets.write_preset(presets.rram_preset_from_payload(payload, target), target)
    print(
        f"rram calibrate: wrote {target} in {time.time() - started:.0f} s; levels (uS): "
        + ", ".join(f"{m * 1e6:.1f}" for m in means)
        + "; separations (sigma): "
        + ", ".join(f"{s:.1f}" for s in seps),
        flush=True,
    )
    return target
