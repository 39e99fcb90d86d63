"""`python -m pipelines devices [DEVICE ...] [--experiment NAME] [--out DIR]`: the devices side by
side, the answer a device researcher came for.

For each device (default: the shipped one and every directory under ``devices/``): the compact
model's calibrated parameters (with lmfit's standard errors), its validation against ngspice on
held-out stimuli, the ngspice firing rate at a few currents, the RRAM levels its synapses use, and
the test accuracy of every finished training run of ``--experiment`` on that device (a run
records its device in ``config.json``). Runs are compared only when their configs are identical
but for the device; the table says so. Writes ``<out>/devices.md`` and ``devices.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bruno import devices, presets
from bruno.io import atomic_write_json, atomic_write_text
from calibration import reports_location

TRAIN_DIR = Path("results/train")
REPORT_DIR = Path("docs/results")
#: Compact-model fields shown, with their display unit (SI value / unit).
FIELDS = (
    ("area", "µm²", 1e-12),
    ("activation_field", "GV/m", 1e9),
    ("saturation_polarization", "C/m²", 1.0),
    ("interlayer_thickness", "nm", 1e-9),
    ("parasitic_capacitance", "fF", 1e-15),
    ("leak_current_density", "mA/m²", 1e-3),
    ("discharge_current", "pA", 1e-12),
    ("leak_thermal_voltage", "V", 1.0),
    ("switching_exponent", "1", 1.0),
)
RATE_CURRENTS_A = (1e-10, 2.7e-10, 8e-10, 2e-9)  # of the validation's f-I curve


def _device_list(names: list[str]) -> list[str | None]:
    if names:
        return [None if n == "shipped" else n for n in names]
    found = sorted(p.name for p in devices.DEVICES_ROOT.iterdir() if p.is_dir())
    return [None, *found]


def _runs(train_dir: Path, experiment: str, device: str | None) -> list[dict]:
    runs = []
    for config_file in sorted(train_dir.glob("*/config.json")):
        metrics_file = config_file.parent / "metrics.json"
        if not metrics_file.exists():
            continue
        config = json.loads(config_file.read_text())
        if config.get("name") != experiment or config.get("device") != device:
            continue
        metrics = json.loads(metrics_file.read_text())
        runs.append(
            {
                "run": config_file.parent.name,
                "seed": metrics.get("seed"),
                "test_accuracy": metrics.get("test_accuracy"),
                "config": {k: v for k, v in config.items() if k != "device"},
            }
        )
    return runs


def describe(device: str | None, train_dir: Path, experiment: str) -> dict[str, Any]:
    """One device's row: parameters, validation, firing rates, RRAM levels, accuracy."""
    directory = devices.use(device)
    try:
        felif = presets.load_felif_preset()
        rram = presets.load_rram_preset()
        report_file = reports_location(False) / "felif.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else None
        rram_file = reports_location(False) / "rram.json"
        rram_report = json.loads(rram_file.read_text()) if rram_file.exists() else None
    finally:
        devices.use(None)
    errors = felif.uncertainties
    row: dict[str, Any] = {
        "device": devices.recorded(directory) or "shipped",
        "felif_preset": devices.recorded(Path(felif.source)),
        "rram_preset": devices.recorded(Path(rram.source)),
        "parameters": {
            f: {
                "value": getattr(felif.parameters, f) / unit,
                "stderr": None if errors.get(f) is None else errors[f] / unit,
                "unit": u,
            }
            for f, u, unit in FIELDS
        },
        "leak_saturation_current_fA": felif.parameters.leak_current_density
        * felif.parameters.area
        / 1e-15,
        "rram_levels_uS": [round(g * 1e6, 1) for g in rram.means],
        "validation": None,
        "rram_validation": None
        if rram_report is None
        else {
            "report": devices.recorded(rram_file.resolve()),
            "passed": rram_report["passed"],
            "held_out_conductance_rel_error_max": rram_report["level_rel_error_max"],
            "ks_max": rram_report["ks_max"],
            "separation_sigmas_min": min(rram_report["separation_sigmas"]),
            "supported_read_voltages_V": rram_report.get("supported_read_voltages_V", [0.2]),
        },
        "runs": _runs(train_dir, experiment, devices.recorded(directory)),
    }
    if report is not None:
        rates = {round(r["current_A"], 12): r["rate_spice_hz"] for r in report["fi_curve"]}
        row["validation"] = {
            "report": devices.recorded(report_file.resolve()),
            "passed": report["passed"],
            "isi_rel_error_median": report["isi_rel_error_median"],
            "isi_rel_error_max": report["isi_rel_error_max"],
            "first_spike_rel_error_max": report["first_spike_rel_error_max"],
            "v_nrmse": report["v_nrmse"],
            "rheobase_pA": None
            if "leak" not in report
            else {
                "circuit": report["leak"]["rheobase_circuit_A"] * 1e12,
                "compact": report["leak"]["rheobase_compact_A"] * 1e12,
            },
            "spice_rate_hz": {f"{i * 1e9:g} nA": rates.get(round(i, 12)) for i in RATE_CURRENTS_A},
        }
    return row


def _percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def markdown(rows: list[dict], experiment: str) -> str:
    """The comparison as a Markdown table a reader can check against the JSON."""
    head = ["| | " + " | ".join(f"`{r['device']}`" for r in rows) + " |"]
    head.append("|---|" + "---|" * len(rows))
    lines = []
    for field, unit, _ in FIELDS:
        cells = []
        for r in rows:
            p = r["parameters"][field]
            se_text = "" if not p["stderr"] else f" ± {p['stderr']:.2g}"
            cells.append(f"{p['value']:.4g}{se_text}")
        lines.append(f"| {field} ({unit}) | " + " | ".join(cells) + " |")
    cells = [f"{r['leak_saturation_current_fA']:.3g}" for r in rows]
    lines.append("| leak saturation current, density × area (fA) | " + " | ".join(cells) + " |")
    for key, label in (
        ("isi_rel_error_median", "FeLIF validation: ISI error, median"),
        ("isi_rel_error_max", "FeLIF validation: ISI error, max"),
        ("first_spike_rel_error_max", "FeLIF validation: first-spike error, max"),
        ("v_nrmse", "FeLIF validation: membrane NRMSE"),
    ):
        cells = [_percent(r["validation"][key]) if r["validation"] else "—" for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for r in rows:
        rheobase = (r["validation"] or {}).get("rheobase_pA")
        cells.append(
            "—" if not rheobase else f"{rheobase['circuit']:.4g} / {rheobase['compact']:.4g}"
        )
    lines.append("| rheobase, ngspice / compact model (pA) | " + " | ".join(cells) + " |")
    cells = [("PASSED" if r["validation"]["passed"] else "FAILED") if r["validation"] else
             "not validated" for r in rows]  # fmt: skip
    lines.append("| FeLIF validation | " + " | ".join(cells) + " |")
    for current in RATE_CURRENTS_A:
        key = f"{current * 1e9:g} nA"
        cells = []
        for r in rows:
            rate = r["validation"]["spice_rate_hz"].get(key) if r["validation"] else None
            cells.append("—" if rate is None else f"{rate:.1f}")
        lines.append(f"| ngspice firing rate at {key} (Hz) | " + " | ".join(cells) + " |")
    lines.append(
        "| RRAM levels (µS) | "
        + " | ".join(", ".join(f"{g:g}" for g in r["rram_levels_uS"]) for r in rows)
        + " |"
    )
    for key, label in (
        (
            "held_out_conductance_rel_error_max",
            "RRAM validation: held-out conductance error, max over read voltages",
        ),
        ("separation_sigmas_min", "RRAM: closest pair of levels (σ)"),
    ):
        cells = []
        for r in rows:
            value = (r["rram_validation"] or {}).get(key)
            text = "—" if value is None else f"{value:.2f}"
            cells.append(_percent(value) if "error" in key and value is not None else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [
        ", ".join(f"{v:g}" for v in r["rram_validation"]["supported_read_voltages_V"])
        if r["rram_validation"]
        else "—"
        for r in rows
    ]
    lines.append("| RRAM supported read voltages (V) | " + " | ".join(cells) + " |")
    cells = [("PASSED" if r["rram_validation"]["passed"] else "FAILED") if r["rram_validation"]
             else "not validated" for r in rows]  # fmt: skip
    lines.append("| RRAM validation | " + " | ".join(cells) + " |")
    cells = []
    for r in rows:
        accs = [f"{100 * x['test_accuracy']:.2f} % ({x['run']})" for x in r["runs"]]
        cells.append("<br>".join(accs) or "no run")
    lines.append(f"| `{experiment}` test accuracy | " + " | ".join(cells) + " |")
    configs = [json.dumps(x["config"], sort_keys=True) for r in rows for x in r["runs"]]
    same = len(set(configs)) == 1 and len(configs) == len(rows)
    note = (
        "The training runs compared have identical configs except for the device."
        if same
        else "The training runs listed do not all share one config (or a device has none or "
        "several): compare with care."
    )
    return "\n".join(
        [
            "# Devices side by side",
            "",
            "Written by `python -m pipelines devices` (`make devices`) from each device's presets, "
            "validation report and training runs. Parameters: calibrated compact-model values "
            "± lmfit standard error (area: the netlist's design value).",
            "",
            *head,
            *lines,
            "",
            note,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines devices", description=__doc__)
    parser.add_argument("devices", nargs="*", help="'shipped' and/or device directories")
    parser.add_argument("--experiment", default="braille_felif_rram_v0")
    parser.add_argument("--train-dir", type=Path, default=TRAIN_DIR)
    parser.add_argument("--out", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)
    if os.environ.get(devices.ENV):
        parser.error("compares devices itself: unset BRUNO_DEVICE / DEVICE= and name them")
    try:
        rows = [describe(d, args.train_dir, args.experiment) for d in _device_list(args.devices)]
    except (devices.DeviceError, presets.PresetError) as error:
        print(f"devices: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "devices.json", {"experiment": args.experiment, "devices": rows})
    atomic_write_text(args.out / "devices.md", markdown(rows, args.experiment))
    print(markdown(rows, args.experiment))
    return 0
