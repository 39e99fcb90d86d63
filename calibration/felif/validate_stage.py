"""FeLIF validation stage: the calibrated preset against ngspice on held-out stimuli; the report,
its tolerances and figures (Python vs SPICE traces, f-I curve)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bruno.felif import V_CLIP
from bruno.io import atomic_save_figure
from bruno.presets import load_felif_preset as load_preset
from calibration import (
    presets_location,
    reports_location,
    spice,
)
from calibration.felif.calibrate_stage import _finite_or_none, _say
from calibration.felif.common import (
    DT,
    NETLIST,
    PRESET_NAME,
    TARGETS,
    VALIDATION_DTYPE,
    FeLIFCalibrationError,
)
from calibration.felif.fit import (
    compact_leak,
    compact_runs,
    design_parameters,
    fit_leak,
    near_rheobase_scale,
)
from calibration.felif.stimuli import Stimulus, dc_stimulus, training_stimuli, validation_stimuli
from calibration.felif.traces import netlist_parameters, spice_runs, subthreshold_mask

# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _matched_isi_errors(model: np.ndarray, reference: np.ndarray) -> np.ndarray:
    n = min(len(model), len(reference))
    if n < 2:
        return np.asarray([])
    m, r = np.diff(model[:n]), np.diff(reference[:n])
    return np.abs(m - r) / r


def comparison_horizon(reference_spikes: np.ndarray, duration: float) -> float:
    """Where spikes stop being compared (s): half an interval after the circuit's last spike.

    A window ends wherever it ends relative to the spikes; without a horizon a model spike 1 %
    early could fall just inside it and the circuit's just outside, a count mismatch that says
    nothing. Past the circuit's last spike plus half its last interval (its first spike time
    if it fired once) neither neuron is compared; with no circuit spike, the whole window is
    (the model must not fire either).
    """
    spikes = np.asarray(reference_spikes, dtype=float)
    if spikes.size == 0:
        return float(duration)
    last = float(np.diff(spikes)[-1]) if spikes.size > 1 else float(spikes[0])
    return float(min(duration, spikes[-1] + 0.5 * last))


def _nrmse(a: np.ndarray, b: np.ndarray, span: float) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / span) if a.size else float("nan")


def validate(
    quick: bool = False,
    presets_dir: str | Path | None = None,
    reports_dir: str | Path | None = None,
    netlist: str | Path = NETLIST,
) -> bool:
    """Compact model (``<presets_dir>/felif.json``) vs ngspice on held-out stimuli; writes
    ``<reports_dir>/felif.json`` and figures; True if within targets."""
    from calibration import contract

    contract.check("felif.cir", netlist)
    preset = presets_location(quick, presets_dir) / PRESET_NAME
    output_dir = reports_location(quick, reports_dir)
    payload = load_preset(preset).to_payload()
    parameters = payload["parameters"]
    # the circuit's leak, measured as calibration measures it, against the preset's
    leak = fit_leak(netlist, design_parameters(netlist))
    compact_leak_a = compact_leak(leak.voltages, parameters)
    positive = leak.voltages > 0
    leak_error = float(np.max(np.abs(compact_leak_a[positive] / leak.measured[positive] - 1)))
    compact_rheobase = float(
        compact_leak(np.asarray([parameters["threshold_voltage"]]), parameters)[0]
    )
    # the near-rheobase levels are placed for this circuit as calibration places them (from
    # ngspice alone, the same scale for both sets)
    scale = near_rheobase_scale(leak.rheobase, netlist, quick)[0]
    main, extra = validation_stimuli(quick, leak.rheobase, scale)
    training = {s.name for q in (False, True) for s in training_stimuli(q, leak.rheobase, scale)}
    leaked = [s.name for s in main + extra if s.name in training]
    if leaked:
        raise FeLIFCalibrationError(f"validation stimuli {leaked} are training stimuli")
    stimuli = main + extra
    _say(f"felif validate: {len(stimuli)} held-out stimuli through ngspice and the compact model")
    spice_traces = spice_runs(stimuli, netlist, progress="ngspice felif")
    runs, compact_wall = compact_runs(stimuli, [parameters], dtype=VALIDATION_DTYPE)
    runs64, _ = compact_runs(stimuli, [parameters], dtype="float64")
    precision_shift = 0.0
    for a, b in zip(runs[0], runs64[0], strict=True):
        n = min(len(a.spike_times), len(b.spike_times))
        if len(a.spike_times) != len(b.spike_times):
            precision_shift = float("inf")
        elif n:
            precision_shift = max(
                precision_shift,
                float(np.max(np.abs(a.spike_times - b.spike_times) / b.spike_times)),
            )
    compact_traces = runs[0]
    v_span = float(parameters["threshold_voltage"] - parameters["reset_voltage"])
    per_stimulus, all_isi, pooled_v, pooled_p, first_spike = [], [], [], [], []
    failures: list[str] = []
    for s, sp, cm_full in zip(stimuli, spice_traces, compact_traces, strict=True):
        horizon = comparison_horizon(sp.spike_times, s.duration)
        cm = dataclasses.replace(
            cm_full, spike_times=cm_full.spike_times[cm_full.spike_times <= horizon]
        )
        errors = _matched_isi_errors(cm.spike_times, sp.spike_times)
        n = min(len(cm.spike_times), len(sp.spike_times))
        spike_err = (
            np.abs(cm.spike_times[:n] - sp.spike_times[:n]) / sp.spike_times[:n]
            if n
            else np.asarray([])
        )
        mask = subthreshold_mask(sp.time, sp.spike_times, cm.spike_times) & (sp.time <= horizon)
        v_model = np.interp(sp.time, cm.time, cm.v)
        p_model = np.interp(sp.time, cm.time, cm.polarization)
        dv = (v_model - sp.v)[mask]
        p_span = 2 * float(np.max(np.abs(sp.polarization)))
        dp = (p_model - sp.polarization)[mask]
        if s in main:
            all_isi.extend(errors.tolist())
            if n:
                first_spike.append(float(spike_err[0]))
            pooled_v.append(dv)
            pooled_p.append(dp / p_span)
        count_ok = len(cm.spike_times) == len(sp.spike_times)
        if s in main and not count_ok:
            failures.append(
                f"{s.name}: {len(cm.spike_times)} compact vs {len(sp.spike_times)} SPICE spikes"
            )
        per_stimulus.append(
            {
                "stimulus": s.describe(),
                "held_out_role": "traces+isi" if s in main else "f-I only",
                "spikes_spice": sp.spike_times.tolist(),
                "spikes_compact": cm.spike_times.tolist(),
                "spike_count_equal": count_ok,
                "compared_until_s": horizon,
                "isi_rel_errors": errors.tolist(),
                "spike_time_rel_errors": spike_err.tolist(),
                "v_nrmse": _nrmse(v_model[mask], sp.v[mask], v_span),
                "p_nrmse": _nrmse(p_model[mask], sp.polarization[mask], p_span),
                "subthreshold_fraction": float(mask.mean()),
                "v_min_spice_V": float(np.min(sp.v)),
                "v_min_compact_V": float(np.min(cm.v)),
                "spice_wall_s": sp.wall_s,
                "spice_points": sp.points,
            }
        )
    all_isi = np.asarray(all_isi)
    v_all, p_all = np.concatenate(pooled_v), np.concatenate(pooled_p)
    v_nrmse = float(np.sqrt(np.mean(v_all**2)) / v_span)
    p_nrmse = float(np.sqrt(np.mean(p_all**2)))
    # f-I curve: steady rate = 1 / last ISI (or 1 / first spike time when only one spike)
    fi = []
    for s, sp, cm in zip(stimuli, spice_traces, compact_traces, strict=True):
        if s.dc is None:
            continue

        def rate(spikes):
            return (
                float(1 / np.diff(spikes)[-1])
                if len(spikes) >= 2
                else (float(1 / spikes[0]) if len(spikes) else 0.0)
            )

        fi.append(
            {
                "current_A": s.dc,
                "rate_spice_hz": rate(sp.spike_times),
                "rate_compact_hz": rate(cm.spike_times),
            }
        )
    fi.sort(key=lambda row: row["current_A"])
    fi_err = [
        abs(r["rate_compact_hz"] - r["rate_spice_hz"]) / r["rate_spice_hz"]
        for r in fi
        if r["rate_spice_hz"] > 0
    ]
    # convergence of the SPICE reference: halve the maximum step on one held-out stimulus
    conv_stimulus = dc_stimulus(2.0e-9, 0.03, name="convergence_dc_2nA") if quick else main[1]
    max_step = netlist_parameters(netlist).get("t_max", 2e-6)
    coarse = spice_runs([conv_stimulus], netlist, max_step=max_step)[0]
    fine = spice_runs([conv_stimulus], netlist, max_step=max_step / 2)[0]
    # for information: tolerances ten times tighter, and ngspice's defaults (what the deck's
    # explicit options protect against)
    tolerance_study = {}
    studies = (
        ()
        if quick
        else (
            (
                "reltol_abstol_tenfold_tighter",
                ".options reltol=1e-6 abstol=1e-17 vntol=1e-8 chgtol=1e-21 method=gear maxord=2",
            ),
            ("ngspice_default_tolerances_no_max_step", ".options reltol=1e-3"),
        )
    )
    for label, options in studies:
        step = max_step if label.startswith("reltol") else conv_stimulus.duration / 50
        try:
            other = spice_runs([conv_stimulus], netlist, max_step=step, options=options)[0]
            n = min(len(other.spike_times), len(fine.spike_times))
            shift = (
                float(
                    np.max(
                        np.abs(other.spike_times[:n] - fine.spike_times[:n]) / fine.spike_times[:n]
                    )
                )
                if n
                else None
            )
            tolerance_study[label] = {
                "options": options,
                "max_step_s": step,
                "spike_times_s": other.spike_times.tolist(),
                "max_rel_spike_time_change": shift,
            }
        except FeLIFCalibrationError as error:
            tolerance_study[label] = {"options": options, "error": str(error)}
    n_conv = min(len(coarse.spike_times), len(fine.spike_times))
    conv_shift = (
        float(
            np.max(
                np.abs(coarse.spike_times[:n_conv] - fine.spike_times[:n_conv])
                / fine.spike_times[:n_conv]
            )
        )
        if n_conv
        else float("nan")
    )
    # speed: simulated neuron-seconds per wall second; the compact model also as the trainer
    # uses it, a large batch (copies of the spike-train neuron, 0.1 s)
    speed_stimulus = next(s for s in main if s.dc is None)
    speed_stimulus = dataclasses.replace(speed_stimulus, duration=min(0.1, speed_stimulus.duration))
    batch = 128 if quick else 1024
    _, batch_wall = compact_runs(
        [speed_stimulus], [parameters] * batch, record=1e-3, dtype=VALIDATION_DTYPE
    )
    neuron_seconds = len(stimuli) * max(s.duration for s in stimuli)
    spice_sim = sum(s.duration for s in stimuli)
    spice_wall = sum(t.wall_s for t in spice_traces)
    isi_median = float(np.median(all_isi)) if all_isi.size else float("nan")
    isi_max = float(np.max(all_isi)) if all_isi.size else float("nan")
    first_max = float(np.max(first_spike)) if first_spike else float("nan")
    # the negative clamp: where ngspice's membrane settles under negative drive, against the
    # compact model's hard floor
    negative = [r for r in per_stimulus if r["v_min_compact_V"] <= -V_CLIP + 1e-3]
    checks = {
        "isi_rel_error_median": isi_median <= TARGETS["isi_rel_error_median"],
        "isi_rel_error_max": isi_max <= TARGETS["isi_rel_error_max"],
        "first_spike_rel_error_max": first_max <= TARGETS["first_spike_rel_error_max"],
        "v_nrmse": v_nrmse <= TARGETS["v_nrmse"],
        "spike_counts_equal": not failures,
        "spice_convergence": bool(conv_shift < 0.005),
        "leak_rel_error_max": leak_error <= TARGETS["leak_rel_error_max"],
    }
    passed = all(checks.values())
    report = {
        "device": "felif",
        "passed": passed,
        "checks": checks,
        "targets": TARGETS,
        "isi_rel_error_median": isi_median,
        "isi_rel_error_max": isi_max,
        "isi_count": int(all_isi.size),
        "first_spike_rel_error_max": first_max,
        "first_spike_definition": "|t1_compact - t1_spice| / t1_spice, first spike of each "
        "held-out trace stimulus, times from the stimulus start",
        "leak": {
            "definition": "the circuit's leak with the membrane voltage-clamped in ngspice "
            "(traces.membrane_leak) against the preset's compact leak; the rheobase is the "
            "leak at threshold, the lowest DC current that fires",
            "voltages_V": leak.voltages.tolist(),
            "circuit_A": leak.measured.tolist(),
            "compact_A": compact_leak_a.tolist(),
            "rel_error_max_positive": leak_error,
            "rheobase_circuit_A": leak.rheobase,
            "rheobase_compact_A": compact_rheobase,
            "near_rheobase_scale": scale,
            "near_rheobase_stimuli": [
                s.name for s in stimuli if s.dc is not None and s.dc < 4 * leak.rheobase
            ],
        },
        "negative_clamp": {
            "compact_floor_V": -V_CLIP,
            "stimuli": [r["stimulus"]["name"] for r in negative],
            "spice_floor_V": [r["v_min_spice_V"] for r in negative],
        },
        "v_nrmse": v_nrmse,
        "p_nrmse": p_nrmse,
        "v_nrmse_definition": "RMS(v_compact - v_spice) over the sub-threshold samples of the "
        "held-out "
        "trace stimuli (same inter-spike interval, 0.2 ms guard around each reset), divided by "
        "threshold - reset voltage",
        "p_nrmse_definition": "same samples, divided by 2*max|P_spice|",
        "v_nrmse_max_stimulus": max(
            r["v_nrmse"] for r in per_stimulus if r["held_out_role"] != "f-I only"
        ),
        "compact_dtype": VALIDATION_DTYPE,
        "compact_float32_vs_float64_max_rel_spike_shift": _finite_or_none(precision_shift),
        "fi_curve": fi,
        "fi_rate_rel_error_max": float(max(fi_err)) if fi_err else float("nan"),
        "spice_convergence": {
            "stimulus": conv_stimulus.name,
            "max_step_s": [max_step, max_step / 2],
            "spike_times_s": [coarse.spike_times.tolist(), fine.spike_times.tolist()],
            "max_rel_spike_time_change": conv_shift,
            "target": 0.005,
            "tolerance_study": tolerance_study,
        },
        "speed": {
            "compact_neuron_seconds_per_wall_second": neuron_seconds / compact_wall,
            "compact_wall_s": compact_wall,
            "compact_neurons": len(stimuli),
            "compact_dt_s": DT,
            "compact_dtype": VALIDATION_DTYPE,
            "compact_batched_neuron_seconds_per_wall_second": batch
            * speed_stimulus.duration
            / batch_wall,
            "compact_batched_neurons": batch,
            "compact_batched_wall_s": batch_wall,
            "ngspice_neuron_seconds_per_wall_second": spice_sim / spice_wall,
            "ngspice_wall_s": spice_wall,
            "ngspice_runs": len(stimuli),
            "note": "compact: one batched bruno.device.simulate call over all validation stimuli; "
            "ngspice: one neuron per run, summed over runs (single core each)",
        },
        "per_stimulus": per_stimulus,
        "failures": failures,
        "preset": str(preset),
        "preset_created_utc": payload["provenance"].get("created_utc"),
        "netlist_sha256": spice.netlist_hash(netlist),
        "preset_netlist_sha256": payload["provenance"].get("netlist_sha256"),
        "quick": quick,
        "figures": ["felif_traces.png", "felif_fi.png"],
    }
    if report["netlist_sha256"] != report["preset_netlist_sha256"]:
        report["warning"] = (
            "the netlist changed since the preset was calibrated; run make calibrate"
        )
    _figures(output_dir, main, spice_traces, compact_traces, fi, parameters)
    from bruno.io import atomic_write_json

    name = PRESET_NAME  # the report is named like the preset it validates
    atomic_write_json(output_dir / name, report)
    _say(
        f"felif validate: ISI rel. error median {isi_median:.4f} max {isi_max:.4f} "
        f"(targets {TARGETS['isi_rel_error_median']}, {TARGETS['isi_rel_error_max']}); "
        f"first spike max {first_max:.4f} (target {TARGETS['first_spike_rel_error_max']}); "
        f"v NRMSE {v_nrmse:.4f} (target {TARGETS['v_nrmse']}); P NRMSE {p_nrmse:.4f}; "
        f"leak max error {leak_error:.2%} (target {TARGETS['leak_rel_error_max']:.0%}), "
        f"rheobase compact {compact_rheobase * 1e12:.4g} vs circuit "
        f"{leak.rheobase * 1e12:.4g} pA; "
        f"SPICE max-step halving moves spikes {conv_shift:.2e}; "
        f"speed compact {report['speed']['compact_neuron_seconds_per_wall_second']:.3g} "
        f"({report['speed']['compact_batched_neuron_seconds_per_wall_second']:.3g} at {batch} "
        f"neurons) vs ngspice "
        f"{report['speed']['ngspice_neuron_seconds_per_wall_second']:.3g} neuron-s/s -> "
        f"{'PASSED' if passed else 'FAILED: ' + ', '.join(k for k, ok in checks.items() if not ok)}"
    )
    _say(f"felif validate: wrote {output_dir / name}")
    return passed


def _figures(
    output_dir: Path, main: Sequence[Stimulus], spice_traces, compact_traces, fi, parameters
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [i for i, s in enumerate(main) if s.dc is not None][:2]
    shown += [i for i, s in enumerate(main) if s.dc is None][:1]
    shown += [i for i, s in enumerate(main) if s.dc is None and min(s.currents) < 0][:1]
    fig, axes = plt.subplots(
        3, len(shown), figsize=(4.8 * len(shown), 7.5), squeeze=False, sharex="col"
    )
    for col, i in enumerate(shown):
        s, sp, cm = main[i], spice_traces[i], compact_traces[i]
        ms = 1e3
        axes[0, col].plot(sp.time * ms, s.current(sp.time) * 1e9, color="0.3", lw=0.8)
        axes[0, col].set_title(s.name)
        axes[1, col].plot(sp.time * ms, sp.v, label="ngspice", lw=1.2)
        axes[1, col].plot(cm.time * ms, cm.v, "--", label="compact (Python)", lw=1.0)
        axes[2, col].plot(sp.time * ms, sp.polarization, lw=1.2)
        axes[2, col].plot(cm.time * ms, cm.polarization, "--", lw=1.0)
        axes[2, col].set_xlabel("time (ms)")
    axes[0, 0].set_ylabel("input (nA)")
    axes[1, 0].set_ylabel("membrane v (V)")
    axes[2, 0].set_ylabel("polarisation P (C/m²)")
    axes[1, 0].legend(loc="lower right", fontsize=8)
    fig.suptitle("FeLIF: calibrated compact model vs ngspice (held-out stimuli)")
    atomic_save_figure(fig, output_dir / "felif_traces.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.8))
    current = np.asarray([r["current_A"] for r in fi]) * 1e9
    ax.plot(current, [r["rate_spice_hz"] for r in fi], "o-", label="ngspice")
    ax.plot(current, [r["rate_compact_hz"] for r in fi], "x--", label="compact (Python)")
    ax.set_xlabel("DC input current (nA)")
    ax.set_ylabel("firing rate (Hz)")
    ax.set_title("FeLIF f-I curve (held-out levels)")
    ax.legend()
    atomic_save_figure(fig, output_dir / "felif_fi.png")
    plt.close(fig)
