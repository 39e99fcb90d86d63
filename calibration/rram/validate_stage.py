"""RRAM validation stage: held-out programming currents and a fresh Monte-Carlo against the
preset; report and figures (Fig. 4a conductance vs current, Fig. 4b level distributions)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bruno.devices import KIND_NETLISTS
from bruno.io import atomic_save_figure, atomic_write_json
from bruno.presets import load_rram_preset as load_preset
from calibration import (
    presets_location,
    reports_location,
)
from calibration.provenance import display_path
from calibration.rram.cell import _report_failures, monte_carlo, sweep
from calibration.rram.common import (
    HELD_OUT_CURRENTS,
    I_PROG_MAX,
    I_PROG_MIN,
    PRESET_NAME,
    SEPARATION_SIGMAS,
    TOL_LEVEL_REL_ERROR,
    VALIDATION_SEED,
    Device,
)
from calibration.rram.law import ks_critical, law_from_payload, robust_separations, separations


def validate(
    quick: bool = False,
    presets_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
) -> bool:
    """Held-out programming currents and a fresh Monte-Carlo against ``<presets_dir>/rram.json``;
    writes ``<reports_dir>/rram.json`` and figures; True when within tolerance."""
    from scipy.stats import ks_2samp, norm

    from calibration import contract

    for name in KIND_NETLISTS["rram"]:
        contract.check(name)
    started = time.time()
    preset_path = presets_location(quick, presets_dir) / PRESET_NAME
    output_dir = reports_location(quick, reports_dir)
    preset = load_preset(preset_path).to_payload()
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
        "preset": display_path(preset_path),
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
