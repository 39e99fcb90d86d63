"""RRAM validation stage: held-out programming currents and a fresh Monte-Carlo against the
preset; report and figures (Fig. 4a conductance vs current, Fig. 4b level distributions)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bruno.devices import KIND_NETLISTS
from bruno.io import atomic_save_figure, atomic_write_json
from bruno.presets import RRAMLevel, RRAMPreset
from bruno.presets import load_rram_preset as load_preset
from calibration import (
    presets_location,
    reports_location,
)
from calibration.provenance import display_path
from calibration.rram.cell import (
    _report_failures,
    conductances_at,
    monte_carlo,
    read_disturb,
    sweep,
)
from calibration.rram.common import (
    HELD_OUT_CURRENTS,
    I_PROG_MAX,
    I_PROG_MIN,
    PRESET_NAME,
    READ_VOLTAGE,
    SEPARATION_SIGMAS,
    TOL_LEVEL_REL_ERROR,
    VALIDATION_SEED,
    Device,
    within,
)
from calibration.rram.law import (
    fitted_range,
    ks_critical,
    law_from_payload,
    robust_separations,
    separations,
)


def _held_out_rows(
    held_out: Sequence[float],
    rows: Sequence[Mapping[str, Any] | None],
    v_read: float,
    law: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Held-out programming currents at ``v_read`` (V): ngspice vs the preset's law there; a
    current outside the law's fitted range is marked ``beyond`` (extrapolation, a failure)."""
    law_fn = law_from_payload(law)
    lo, hi = fitted_range(law)
    out = []
    for i, simulated in zip(held_out, conductances_at(rows, v_read), strict=True):
        predicted = float(law_fn(i))
        out.append(
            {
                "programming_current_A": i,
                "spice_S": simulated,
                "law_S": predicted,
                "rel_error": None if simulated is None else (predicted - simulated) / simulated,
                "position": "between" if within(i, lo, hi) else "beyond",
            }
        )
    return out


def _states(
    levels: Sequence[RRAMLevel], per_state: Sequence[Sequence[float]], keep_samples: bool
) -> list[dict[str, Any]]:
    """Held-out Monte-Carlo devices vs the preset's levels (one read voltage): means, two-sample KS
    against the calibration samples, KS against the level's normal fit where it has one."""
    from scipy.stats import ks_2samp, norm

    states = []
    for k, (level, samples) in enumerate(zip(levels, per_state, strict=True)):
        calib = np.asarray(level.conductance_samples_S, dtype=float)
        held = np.asarray(samples, dtype=float)
        fit = level.details.get("distribution_fit")
        ks2 = ks_2samp(calib, held) if held.size else None
        ks_fit = None
        if fit and held.size:
            ecdf = (np.arange(1, held.size + 1) - 0.5) / held.size
            cdf = norm.cdf(np.sort(held), fit["mu_S"], fit["sigma_S"])
            ks_fit = float(np.max(np.abs(cdf - ecdf)) + 0.5 / held.size)
        state = {
            "state": k,
            "programming_current_A": level.programming_current_A,
            "calibrated_mean_S": level.conductance_mean_S,
            "calibrated_std_S": level.conductance_std_S,
            "held_out_mean_S": float(np.mean(held)) if held.size else None,
            "held_out_std_S": float(np.std(held, ddof=1)) if held.size > 1 else None,
            "held_out_n": int(held.size),
            "mean_rel_error": float(np.mean(held) / level.conductance_mean_S - 1)
            if held.size
            else None,
            "ks_empirical": None if ks2 is None else float(ks2.statistic),
            "ks_empirical_pvalue": None if ks2 is None else float(ks2.pvalue),
            "ks_critical_alpha_0.01": ks_critical(calib.size, max(1, held.size)),
            "ks_normal_fit": ks_fit,
        }
        if keep_samples:
            state["held_out_samples_S"] = held.tolist()
        states.append(state)
    return states


def _interpolation_errors(
    raw: Sequence[Sequence[Mapping[str, Any] | None]], checked: Sequence[float], v: float
) -> list[float]:
    """Every held-out device at ``v`` (V, between two calibrated voltages): its read there vs the
    linear interpolation of its own reads at the two neighbours, the rule of ``at_read_voltage``."""
    below = max(x for x in checked if x < v)
    above = min(x for x in checked if x > v)
    weight = (above - v) / (above - below)
    errors = []
    for rows in raw:
        at = {x: conductances_at(rows, x) for x in (below, v, above)}
        for g_lo, g, g_hi in zip(at[below], at[v], at[above], strict=True):
            if g is not None:
                errors.append(abs((weight * g_lo + (1 - weight) * g_hi) / g - 1))
    return errors


def validate(
    quick: bool = False,
    presets_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
) -> bool:
    """Held-out programming currents and a fresh Monte-Carlo against ``<presets_dir>/rram.json``,
    at every supported read voltage and midway between them (the preset's interpolation); writes
    ``<reports_dir>/rram.json`` and figures; True when within tolerance."""
    from calibration import contract

    for name in KIND_NETLISTS["rram"]:
        contract.check(name)
    started = time.time()
    preset_path = presets_location(quick, presets_dir) / PRESET_NAME
    output_dir = reports_location(quick, reports_dir)
    calibrated = load_preset(preset_path)
    default = calibrated.at_read_voltage(READ_VOLTAGE)
    preset = default.to_payload()
    supported = list(calibrated.read_voltages_V)
    midpoints = [round(0.5 * (a + b), 12) for a, b in zip(supported, supported[1:], strict=False)]
    checked = sorted(supported + midpoints)
    fitted = set(round(i, 12) for i in preset["conductance_law"]["fit_currents_A"])
    held_out = [i for i in HELD_OUT_CURRENTS if round(i, 12) not in fitted]
    if quick:
        held_out = held_out[::2]
    print(
        f"rram validate: {len(held_out)} held-out programming currents, read at "
        + ", ".join(f"{v:g}" for v in checked)
        + f" V (supported: {', '.join(f'{v:g}' for v in supported)} V; the others interpolated)",
        flush=True,
    )
    table, law_failures = sweep(held_out, {"nominal": Device()}, read_voltages=checked)
    levels = preset["levels"]
    currents = [lv["programming_current_A"] for lv in levels]
    devices = 8 if quick else 40
    print(
        f"rram validate: held-out Monte-Carlo {devices} devices x {len(levels)} states", flush=True
    )
    _, mc_failures, raw = monte_carlo(currents, devices, VALIDATION_SEED, read_voltages=checked)
    _report_failures("validation", law_failures + mc_failures)

    per_voltage = []
    for v in checked:
        at_v = calibrated.at_read_voltage(v)
        rows = _held_out_rows(held_out, table["nominal"], v, at_v.conductance_law)
        errors = [abs(r["rel_error"]) for r in rows if r["rel_error"] is not None]
        samples = [[g for g in conductances_at(rs, v) if g is not None] for rs in raw]
        is_default = math.isclose(v, READ_VOLTAGE)
        states = _states(at_v.levels, samples, keep_samples=is_default)
        interpolation = [] if v in supported else _interpolation_errors(raw, checked, v)
        ks_ok = all(
            s["ks_empirical"] is not None and s["ks_empirical"] <= s["ks_critical_alpha_0.01"]
            for s in states
        )
        law_max = max(errors) if errors else float("nan")
        per_voltage.append(
            {
                "read_voltage_V": v,
                "calibrated": v in supported,
                "held_out_conductance_rel_error_max": law_max,
                "held_out_conductance_rel_error_median": float(np.median(errors))
                if errors
                else None,
                "beyond_fitted_range": [
                    r["programming_current_A"] for r in rows if r["position"] == "beyond"
                ],
                "ks_max": max((s["ks_empirical"] for s in states), default=float("nan")),
                "ks_ok": ks_ok,
                "level_mean_rel_error_max": max(
                    (abs(s["mean_rel_error"]) for s in states if s["mean_rel_error"] is not None),
                    default=None,
                ),
                "device_interpolation_rel_error_max": max(interpolation) if interpolation else None,
                "passed": bool(
                    errors
                    and len(errors) == len(held_out)
                    and law_max <= TOL_LEVEL_REL_ERROR
                    and all(r["position"] == "between" for r in rows)
                    and ks_ok
                    and all(e <= TOL_LEVEL_REL_ERROR for e in interpolation)
                ),
                "held_out_currents": rows,
                "states": states,
            }
        )
    by_voltage = {entry["read_voltage_V"]: entry for entry in per_voltage}
    rows, states = by_voltage[READ_VOLTAGE]["held_out_currents"], by_voltage[READ_VOLTAGE]["states"]
    law_error_max = max(e["held_out_conductance_rel_error_max"] for e in per_voltage)
    ks_max = max(e["ks_max"] for e in per_voltage)
    held_reads = [("nominal", i, r) for i, r in zip(held_out, table["nominal"], strict=True)]
    held_reads += [
        (f"held-out device {j}", i, row)
        for i, rs in zip(currents, raw, strict=True)
        for j, row in enumerate(rs)
    ]
    disturb = read_disturb(held_reads, checked)
    disturbing = [
        d["read_voltage_V"]
        for d in disturb
        if d["disturbs"]
        and d["read_voltage_V"] in supported
        and d["read_voltage_V"] != READ_VOLTAGE
    ]
    if any(d["disturbs"] for d in disturb if math.isclose(d["read_voltage_V"], READ_VOLTAGE)):
        print(
            f"rram validate: WARNING: reads at the default {READ_VOLTAGE:g} V disturb the state "
            "(read_disturb in the report)",
            flush=True,
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
        all(e["passed"] for e in per_voltage)
        and not disturbing
        and all(b > a for a, b in zip(means, means[1:], strict=False))
        and lost <= 0.01 * total_runs
    )
    figures = _figures(preset, rows, states, per_voltage, calibrated, output_dir)
    report = {
        "device": "rram",
        "passed": passed,
        "quick": quick,
        "read_voltage_V": READ_VOLTAGE,
        "levels_siemens": means,
        "level_stds_siemens": stds,
        "level_programming_currents_A": currents,
        "level_rel_error_max": law_error_max,
        "ks_max": ks_max,
        "supported_read_voltages_V": supported,
        "interpolation_checks_V": midpoints,
        "read_voltages": [
            {k: v for k, v in e.items() if k not in ("held_out_currents", "states")}
            for e in per_voltage
        ],
        "tolerances": {
            "held_out_conductance_rel_error_max": TOL_LEVEL_REL_ERROR,
            "held_out_conductance": "at every supported read voltage and midway between "
            "neighbouring ones (the preset's interpolation), at held-out programming currents "
            "strictly inside the law's fitted range",
            "device_interpolation_rel_error_max": TOL_LEVEL_REL_ERROR,
            "ks": "two-sample KS distance (calibration vs held-out Monte-Carlo samples) below its "
            "critical value at alpha = 0.01, every state, every read voltage checked",
            "read_disturb": "no held-out read at a supported read voltage other than the default "
            "disturbs the state (calibration's criterion, read_disturb)",
            "separation_sigmas_target": SEPARATION_SIGMAS,
            "lost_runs_max_fraction": 0.01,
        },
        "held_out_currents": rows,
        "held_out_by_read_voltage": {
            f"{e['read_voltage_V']:g}": e["held_out_currents"] for e in per_voltage
        },
        "states": states,
        "states_by_read_voltage": {f"{e['read_voltage_V']:g}": e["states"] for e in per_voltage},
        "read_disturb": disturb,
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
        "preset": display_path(preset_path),
        "preset_created_utc": preset["provenance"]["created_utc"],
        "wall_time_s": round(time.time() - started, 1),
    }
    atomic_write_json(output_dir / PRESET_NAME, report)  # named like the preset it validates
    for e in per_voltage:
        print(
            f"rram validate: {e['read_voltage_V']:g} V "
            f"({'calibrated' if e['calibrated'] else 'interpolated'}): held-out conductance error "
            f"max {e['held_out_conductance_rel_error_max']:.2%}, median "
            f"{e['held_out_conductance_rel_error_median'] or float('nan'):.2%}; KS max "
            f"{e['ks_max']:.3f}"
            + (
                f"; device interpolation max {e['device_interpolation_rel_error_max']:.2%}"
                if e["device_interpolation_rel_error_max"] is not None
                else ""
            )
            + ("" if e["passed"] else " -- FAILED")
            + (
                f" (beyond the law's fitted range: {e['beyond_fitted_range']})"
                if e["beyond_fitted_range"]
                else ""
            ),
            flush=True,
        )
    print(
        f"rram validate: {'PASSED' if passed else 'FAILED'}; held-out conductance error max "
        f"{law_error_max:.2%} over {len(checked)} read voltages (tol {TOL_LEVEL_REL_ERROR:.0%}); "
        f"KS max {ks_max:.3f}; separations "
        + ", ".join(f"{s:.1f}" for s in seps)
        + f" sigma; overlapping: {[o['states'] for o in overlapping]}; "
        + (f"disturbing supported read voltages: {disturbing}; " if disturbing else "")
        + f"{time.time() - started:.0f} s",
        flush=True,
    )
    return passed


def _figures(
    preset: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    states: Sequence[Mapping[str, Any]],
    per_voltage: Sequence[Mapping[str, Any]],
    calibrated: RRAMPreset,
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

    # the read I-V of every level: mean conductance vs read voltage, relative to the default read
    fig, ax = plt.subplots(figsize=(6, 4.2))
    supported = calibrated.read_voltages_V
    grid = np.linspace(supported[0], supported[-1], 61)
    reference = np.asarray(calibrated.at_read_voltage(READ_VOLTAGE).means)
    curve = np.asarray([calibrated.at_read_voltage(float(v)).means for v in grid]) / reference
    for k in range(reference.size):
        ax.plot(grid, (curve[:, k] - 1) * 100, "-", color=f"C{k}", lw=1, label=f"state {k}")
        ax.plot(
            supported,
            [(calibrated.at_read_voltage(v).means[k] / reference[k] - 1) * 100 for v in supported],
            "o",
            color=f"C{k}",
            ms=3,
        )
        held = {
            e["read_voltage_V"]: e["states"][k]["held_out_mean_S"]
            for e in per_voltage
            if e["states"][k]["held_out_mean_S"] is not None
        }
        if READ_VOLTAGE not in held:
            continue
        ax.plot(
            list(held),
            [(g / held[READ_VOLTAGE] - 1) * 100 for g in held.values()],
            "s",
            mfc="none",
            color=f"C{k}",
            ms=4,
        )
    ax.set_xlabel("read voltage (V)")
    ax.set_ylabel(f"level mean conductance vs its value at {READ_VOLTAGE:g} V (%)")
    ax.set_title("Read I-V of the levels: preset (dots, lines interpolated), held-out (squares)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path_c = output_dir / "rram_fig4c_read_voltage.png"
    atomic_save_figure(fig, path_c, dpi=130)
    return [p.name for p in (path_a, path_b, path_c)]
