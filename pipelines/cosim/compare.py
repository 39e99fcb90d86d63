"""Agreement of the three views of a co-simulated layer (the trained PyTorch layer, the compact
model with circuit reset, ngspice): per sample, over the samples, as a CSV and a figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _counts(spikes: list[list[float]]) -> list[int]:
    return [len(s) for s in spikes]


def _bins(
    spikes: list[list[float]], steps: int, dt: float, count_every_spike: bool = False
) -> np.ndarray:
    """Spike trains as the readout sees them: 1 in every coarse step holding a spike (a crossing
    at t in (k dt, (k + 1) dt] belongs to step k, as the trained layer's spike test at the step's
    end does), or, with ``count_every_spike`` (a layer with ``spike_rule="reset"``), the number of
    spikes in the step."""
    out = np.zeros((steps, len(spikes)))
    for j, times in enumerate(spikes):
        for t in times:
            k = min(max(math.ceil(t / dt - 1e-6) - 1, 0), steps - 1)
            out[k, j] = out[k, j] + 1.0 if count_every_spike else 1.0
    return out


def _frames(binned: np.ndarray, steps_per_frame: int) -> torch.Tensor:
    """Coarse-step spikes [T * S, N] as the readout's input [T, 1, N]: each frame's count."""
    counts = binned.reshape(-1, steps_per_frame, binned.shape[1]).sum(1)
    return torch.from_numpy(counts).float().unsqueeze(1)


def _timing(a: list[list[float]], b: list[list[float]]) -> list[float]:
    """|t_a - t_b| of spikes paired in order per neuron (s)."""
    return [abs(x - y) for ta, tb in zip(a, b, strict=True) for x, y in zip(ta, tb, strict=False)]


def compare_sample(
    views: dict[str, list[list[float]]], dt: float, steps: int, label: Any, layer, task_kind: str
) -> dict:
    """Per-sample agreement of the three views (module docstring)."""
    row: dict[str, Any] = {"counts": {k: _counts(v) for k, v in views.items()}}
    if task_kind == "braille":
        row["label"] = int(label)
        row["prediction"] = {k: int(np.argmax(c)) for k, c in row["counts"].items()}
    else:  # JSB: the software readout on the binned spikes; NLL per step of this chorale
        targets, mask = label
        frames = float(mask.sum())
        row["nll_per_step"] = {}
        readout = layer.readout
        noise, readout.read_noise = readout.read_noise, False  # the same deterministic readout
        for name, spikes in views.items():
            every = layer.neurons.spike_rule == "reset"
            binned = _frames(_bins(spikes, steps, dt, every), layer.neurons.coarse_steps_per_frame)
            try:
                with torch.no_grad():
                    logits = readout(binned)
            finally:
                readout.read_noise = noise
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, targets, reduction="none"
            ).sum(-1)
            row["nll_per_step"][name] = float((bce * mask).sum() / max(frames, 1.0))
        row["frames"] = frames
    row["spike_time_abs_error_s"] = {
        "compact_vs_spice": _timing(views["compact"], views["spice"]),
        "model_vs_spice": _timing(views["model"], views["spice"]),
    }
    return row


def _fraction(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list[dict], exported) -> dict:
    """Agreement, accuracy, timing errors and ngspice cost over the samples of an
    :class:`pipelines.cosim.Export`."""
    config, layer, gains = exported.config, exported.layer, exported.gains
    neuron_seconds = sum(r["duration_s"] for r in rows) * layer.neurons.size
    views = ("model", "compact", "spice")
    walls = [r["wall_s"] for r in rows]
    neurons = layer.neurons.size
    summary: dict[str, Any] = {
        "run": str(exported.run_dir),
        "checkpoint": exported.checkpoint,
        "experiment": config.name,
        "split": exported.split,
        "samples": len(rows),
        # every view's prediction is the argmax of its spike counts; a run trained with a
        # voltage_readout term is compared on its counts (README, Training: what that term does)
        "readout": "spike counts" if config.task == "braille" else "software readout of spikes",
        "layer": {
            "neurons": neurons,
            "presynaptic": layer.synapses.in_features,
            "gain_stage_A_per_A": [float(gains.min()), float(gains.max())],
        },
        "array": exported.array["summary"],
        "drive_rel_error_max": max(r["drive_rel_error"] for r in rows),
        "cost": {
            "ngspice_s_per_sample_median": float(np.median(walls)),
            "ngspice_s_per_neuron_second": float(np.sum(walls) / neuron_seconds),
            "ngspice_s_total": float(np.sum(walls)),
            "time_points_per_sample_median": float(np.median([r["points"] for r in rows])),
        },
        "count_abs_difference_mean": {},
        "spike_time_abs_error_s": {},
    }
    for a, b in (("model", "spice"), ("compact", "spice"), ("model", "compact")):
        diffs = [
            abs(x - y) for r in rows for x, y in zip(r["counts"][a], r["counts"][b], strict=True)
        ]
        summary["count_abs_difference_mean"][f"{a}_vs_{b}"] = float(np.mean(diffs))
    for key in ("compact_vs_spice", "model_vs_spice"):
        errors = [e for r in rows for e in r["spike_time_abs_error_s"][key]]
        summary["spike_time_abs_error_s"][key] = {
            "median": float(np.median(errors)) if errors else None,
            "p95": float(np.percentile(errors, 95)) if errors else None,
            "pairs": len(errors),
        }
    # where the circuit leaves the compact model's range: membranes below -V_CLIP
    below = np.array([b for r in rows for b in r["spice_below_clip_s"]])
    deficit = np.array(
        [
            s - c
            for r in rows
            for s, c in zip(r["counts"]["spice"], r["counts"]["compact"], strict=True)
        ]
    )
    went_below = below > 0
    summary["spice_membrane"] = {
        "v_min_V": float(min(v for r in rows for v in r["spice_v_min_V"])),
        "neurons_below_clip_fraction": float(went_below.mean()),
        "time_below_clip_fraction": float(below.sum() / neuron_seconds),
        "count_spice_minus_compact_mean": {
            "neurons_below_clip": float(deficit[went_below].mean()) if went_below.any() else None,
            "neurons_within_clip": float(deficit[~went_below].mean())
            if (~went_below).any()
            else None,
        },
    }
    summary["spikes_per_sample_mean"] = {
        v: float(np.mean([sum(r["counts"][v]) for r in rows])) for v in views
    }
    if config.task == "braille":
        summary["prediction_agreement"] = {
            f"{a}_vs_{b}": _fraction([r["prediction"][a] == r["prediction"][b] for r in rows])
            for a, b in (("spice", "model"), ("spice", "compact"), ("compact", "model"))
        }
        summary["accuracy"] = {
            v: _fraction([r["prediction"][v] == r["label"] for r in rows]) for v in views
        }
    else:
        frames = sum(r["frames"] for r in rows)
        summary["nll_per_step"] = {
            v: float(sum(r["nll_per_step"][v] * r["frames"] for r in rows) / frames) for v in views
        }
        summary["nll_difference_spice_minus_model"] = (
            summary["nll_per_step"]["spice"] - summary["nll_per_step"]["model"]
        )
    return summary


def write_csv(path: Path, rows: list[dict]) -> None:
    from pipelines.runfiles import write_csv

    flat = []
    for r in rows:
        entry = {
            "index": r["index"],
            "wall_s": r["wall_s"],
            "drive_rel_error": r["drive_rel_error"],
        }
        for view, counts in r["counts"].items():
            entry[f"spikes_{view}"] = sum(counts)
        if "prediction" in r:
            entry["label"] = r["label"]
            entry.update({f"prediction_{k}": v for k, v in r["prediction"].items()})
        else:
            entry.update({f"nll_{k}": v for k, v in r["nll_per_step"].items()})
        flat.append(entry)
    write_csv(path, flat)


def figure(path: Path, rows: list[dict], title: str, membranes: dict) -> None:
    """Rasters of the first sample, the layer's spikes per sample, and the membrane of the
    neuron where ngspice and the compact model differ most (with its drive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bruno.io import atomic_save_figure

    fig, (raster, counts, membrane) = plt.subplots(1, 3, figsize=(16, 4.2))
    first = rows[0]["spikes"]
    style = {"model": ("C0", 0.25), "compact": ("C2", 0.0), "spice": ("C3", -0.25)}
    for view, (color, offset) in style.items():
        xs = [t * 1e3 for times in first[view] for t in times]
        ys = [j + offset for j, times in enumerate(first[view]) for _ in times]
        raster.scatter(xs, ys, s=14, c=color, marker="|", label=view)
    raster.set_xlabel("time (ms)")
    raster.set_ylabel("neuron")
    raster.set_title(f"sample {rows[0]['index']}: spikes")
    raster.legend(loc="upper right", fontsize=8)
    x = np.arange(len(rows))
    for view, (color, _) in style.items():
        counts.plot(x, [sum(r["counts"][view]) for r in rows], "o-", ms=3, c=color, label=view)
    if "prediction" in rows[0]:
        wrong = [
            k for k, r in enumerate(rows) if r["prediction"]["spice"] != r["prediction"]["model"]
        ]
        counts.scatter(
            wrong,
            [sum(rows[k]["counts"]["spice"]) for k in wrong],
            s=60,
            facecolors="none",
            edgecolors="k",
            label="class differs (spice vs model)",
        )
    counts.set_xlabel("sample")
    counts.set_ylabel("spikes of the layer")
    counts.legend(fontsize=8)
    for view in ("compact", "spice"):
        t, v = membranes[view]
        membrane.plot(np.asarray(t) * 1e3, v, c=style[view][0], lw=0.8, label=view)
    lowest = min(float(np.min(membranes[view][1])) for view in ("compact", "spice"))
    if lowest < -10.0:  # a membrane far below the rails (a netlist without a clamp)
        membrane.set_yscale("symlog", linthresh=5.0)
        membrane.set_ylabel("membrane (V; symlog beyond ±5 V)")
    else:
        membrane.set_ylabel("membrane (V)")
    membrane.set_xlabel("time (ms)")
    membrane.set_title(f"sample {membranes['sample']}, neuron {membranes['neuron']}")
    drive = membrane.twinx()
    steps = np.arange(len(membranes["drive_A"]) + 1) * membranes["step_s"] * 1e3
    drive.stairs(np.asarray(membranes["drive_A"]) * 1e9, steps, color="0.6", lw=0.8)
    drive.set_ylabel("drive (nA)", color="0.4")
    membrane.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"co-simulation {title}: PyTorch model vs compact model (circuit reset) vs ngspice"
    )
    fig.tight_layout()
    atomic_save_figure(fig, path)
