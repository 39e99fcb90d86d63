"""`python -m pipelines report`: gather ``results/train/*`` into tables and comparison figures.

Every run directory with a ``metrics.json`` and a ``config.json`` counts. Runs are grouped by
experiment (seeds pooled: mean ± std over seeds) and experiments by their config's ``group`` (one
table per group, like the paper's tables). Writes ``results/report/report.md``, one CSV per group
and figures (``<group>.png``: the headline metric per experiment with seed spread; for JSB also the
validation learning curves).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

from bruno.io import atomic_save_figure, atomic_write_text
from pipelines import config as cfg
from pipelines.schema import AnyExperiment

TRAIN_DIR = Path("results/train")
REPORT_DIR = Path("results/report")

# (metric key, column title, digits, lower is better)
JSB_METRICS = [
    ("test_nll_per_step", "test NLL (nats/step)", 3, True),
    ("test_frame_accuracy", "test frame acc. (%)", 1, False),
]
BRAILLE_METRICS = [("test_accuracy", "test acc. (%)", 1, False)]
COST_METRICS = [
    ("train_epoch_time_s", "train time/epoch (s)", 1, True),
    ("train_peak_mb", "peak memory (MB)", 0, True),
    ("memory_increase_mb", "peak − baseline (MB)", 0, True),
]


def _percent(key: str) -> bool:
    return "accuracy" in key


def load_runs(root: Path) -> list[dict]:
    runs = []
    for failure_path in sorted(root.glob("*/failure.json")):
        run_dir = failure_path.parent
        if (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
            continue
        failure = json.loads(failure_path.read_text())
        config = _run_config(run_dir)
        if config is None:
            continue
        metrics = {"seed": failure.get("seed", config.seeds[0]), "failed": failure["reason"]}
        runs.append({"dir": run_dir, "metrics": metrics, "config": config})
    for metrics_path in sorted(root.glob("*/metrics.json")):
        config_path = metrics_path.parent / "config.json"
        if not config_path.is_file():
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
        except json.JSONDecodeError as error:
            print(f"report: skipping {metrics_path.parent} ({error})", file=sys.stderr)
            continue
        config = _run_config(metrics_path.parent)
        if config is None:
            continue
        metrics["train_peak_mb"] = metrics.get("peak_gpu_mb") or metrics.get("peak_rss_mb")
        if metrics.get("train_time_s") is not None and metrics.get("epochs_run"):
            # training only (forward + backward + update), validation excluded
            metrics["train_epoch_time_s"] = metrics["train_time_s"] / metrics["epochs_run"]
        if metrics.get("peak_gpu_mb") is None and metrics.get("baseline_rss_mb") is not None:
            # what training added on top of the process after data loading and model set-up
            metrics["memory_increase_mb"] = metrics["peak_rss_mb"] - metrics["baseline_rss_mb"]
        runs.append({"dir": metrics_path.parent, "metrics": metrics, "config": config})
    return runs


def _run_config(run_dir: Path) -> AnyExperiment | None:
    """A run's resolved config, or None (said on stderr) when it cannot be read in today's schema
    (a run of an older config format: rerun it)."""
    try:
        raw = json.loads((run_dir / "config.json").read_text())
        return cfg.resolve(raw, name=raw.get("name"))
    except (json.JSONDecodeError, cfg.ConfigError) as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        print(f"report: skipping {run_dir} (config.json: {first[0].strip()})", file=sys.stderr)
        return None


def _neuron_label(neuron) -> str:
    return neuron.kind.upper().replace("FELIF", "FeLIF")


def describe(config: AnyExperiment) -> dict:
    """What a table row and a summary record say about an experiment: the network
    (``"lif->felif"``, ``"felif"``, ``"lstm"``), how it was trained, its synapses and sigma."""
    model = config.model
    if model.kind == "lstm":
        return {
            "network": "lstm",
            "display": f"LSTM({model.hidden})",
            "algorithm": "bptt",
            "algorithm_display": "BPTT (autograd)",
            "synapses": "fp",
            "synapses_display": "fp",
            "sigma": 0.0,
        }
    neurons = model.neurons()
    sizes = [model.hidden.size] + ([27] if len(neurons) == 2 else [])
    felif = model.felif()
    if felif is None:
        algorithm, shown = "bptt", "BPTT (surrogate)"
    else:
        algorithm = felif.algorithm
        shown = f"{algorithm}, n={felif.fine_steps}"
        if algorithm == "bruno":
            algorithm = f"bruno-{felif.coarse_gradient}"
            shown += f", {felif.coarse_gradient} coarse gradient"
    precision = model.synapse.precision
    sigmas = [n.variability_sigma for n in neurons if n.variability_sigma is not None]
    return {
        "network": "->".join(n.kind for n in neurons),
        "display": " -> ".join(
            f"{_neuron_label(n)}({size})" for n, size in zip(neurons, sizes, strict=True)
        ),
        "algorithm": algorithm,
        "algorithm_display": shown,
        "synapses": precision,
        "synapses_display": "RRAM 3-bit (calibrated)" if precision == "rram" else precision,
        "sigma": max(sigmas, default=0.0),
    }


def _stat(values: list[float], key: str, digits: int) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    scale = 100.0 if _percent(key) else 1.0
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = statistics.stdev(values) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(runs: list[dict]) -> dict[str, list[dict]]:
    """``{group: [experiment summary]}``, experiments in name order."""
    experiments: dict[str, dict] = {}
    for run in runs:
        config = run["config"]
        entry = experiments.setdefault(
            config.name,
            {"name": config.name, "config": config, "group": config.group, "runs": []},
        )
        entry["runs"].append(run)
    groups: dict[str, list[dict]] = {}
    for name in sorted(experiments):
        entry = experiments[name]
        group = entry["group"] or entry["config"].task
        groups.setdefault(group, []).append(entry)
    return groups


def _metrics_for(entry: dict) -> list[tuple]:
    task = entry["config"].task
    return (JSB_METRICS if task == "jsb" else BRAILLE_METRICS) + COST_METRICS


def table(entries: list[dict]) -> tuple[str, list[dict]]:
    metric_spec = _metrics_for(entries[0])
    header = ["experiment", "network", "algorithm", "synapses", "σ", "seeds"] + [
        title for _, title, _, _ in metric_spec
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for entry in entries:
        about = describe(entry["config"])
        seeds = sorted(run["metrics"]["seed"] for run in entry["runs"])
        failures = [run["metrics"]["failed"] for run in entry["runs"] if "failed" in run["metrics"]]
        cells = [
            entry["name"],
            about["display"],
            about["algorithm_display"],
            about["synapses_display"],
            f"{about['sigma']:g}",
            f"{len(seeds)} ({','.join(map(str, seeds))})",
        ]
        row = {"experiment": entry["name"], **about, "seeds": len(seeds)}
        for key, _, digits, _ in metric_spec:
            values = [run["metrics"].get(key) for run in entry["runs"]]
            cells.append(_stat(values, key, digits))
            finite = [v for v in values if v is not None and math.isfinite(v)]
            row[f"{key}_mean"] = statistics.fmean(finite) if finite else None
            row[f"{key}_std"] = statistics.stdev(finite) if len(finite) > 1 else 0.0
        if failures:
            cells[-len(metric_spec)] += f" ({len(failures)} run(s) stopped: {failures[0]})"
            row["failed"] = "; ".join(failures)
        skipped = sum(run["metrics"].get("skipped_batches", 0) for run in entry["runs"])
        if skipped:
            total = sum(run["metrics"].get("batches", 0) for run in entry["runs"])
            cells[-len(metric_spec)] += f" ({skipped}/{total} updates skipped: non-finite gradient)"
        lines.append("| " + " | ".join(cells) + " |")
        rows.append(row)
    return "\n".join(lines), rows


def matrix(entries: list[dict]) -> str | None:
    """The headline metric as the paper's comparison grid: one row per network and training
    algorithm, one column per synapse type and variability; None when the group has only one
    row or one column."""
    key, title, digits, _ = _metrics_for(entries[0])[0]
    cells: dict[tuple[str, str], str] = {}
    rows: list[str] = []
    columns: list[str] = []
    for entry in entries:
        about = describe(entry["config"])
        row = f"{about['display']}, {about['algorithm_display']}"
        column = f"{about['synapses_display']}, σ = {about['sigma']:g}"
        rows += [row] if row not in rows else []
        columns += [column] if column not in columns else []
        values = [run["metrics"].get(key) for run in entry["runs"]]
        cells[row, column] = f"{_stat(values, key, digits)} (n={len(entry['runs'])})"
    if len(rows) < 2 or len(columns) < 2:
        return None
    columns.sort(key=lambda c: (c.startswith("RRAM"), c))
    lines = [
        f"{title}, mean ± std over n seeds:",
        "",
        "| network, training | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(cells.get((row, c), "-") for c in columns) + " |")
    return "\n".join(lines)


def _figure(path: Path, group: str, entries: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_spec = _metrics_for(entries[0])
    headline = metric_spec[0]
    jsb = entries[0]["config"].task == "jsb"
    panels = 2 if jsb else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 0.45 * len(entries) + 2.0))
    axes = axes if panels > 1 else [axes]
    names = [entry["name"] for entry in entries]
    scale = 100.0 if _percent(headline[0]) else 1.0
    means, stds = [], []
    for entry in entries:
        values = [run["metrics"].get(headline[0]) for run in entry["runs"]]
        values = [v * scale for v in values if v is not None and math.isfinite(v)]
        means.append(statistics.fmean(values) if values else float("nan"))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    axes[0].barh(range(len(names)), means, xerr=stds, color="C0", alpha=0.8, capsize=3)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_xlabel(headline[1])
    if not jsb:
        axes[0].set_xlim(0, 100)
    if jsb:
        for entry in entries:
            run = entry["runs"][0]
            rows = _read_csv(run["dir"] / "metrics.csv")
            if rows:
                axes[1].plot(
                    [int(r["epoch"]) for r in rows],
                    [float(r["valid_nll_per_step"]) for r in rows],
                    label=entry["name"],
                )
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("validation NLL (nats/step)")
        axes[1].legend(fontsize=7)
    fig.suptitle(group)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines report", description=__doc__)
    parser.add_argument("--train-dir", type=Path, default=TRAIN_DIR)
    parser.add_argument("--out", type=Path, default=REPORT_DIR)
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    runs = load_runs(args.train_dir)
    if not runs:
        print(
            f"report: no finished runs under {args.train_dir} (run `make train` first)",
            file=sys.stderr,
        )
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    groups = summarise(runs)
    parts = [
        "# Training results",
        "",
        f"{len(runs)} runs from `{args.train_dir}`; mean ± std over seeds; test split, model "
        "selected on the validation split. Peak memory: peak RSS of the training process on CPU "
        "(max_memory_allocated on GPU); peak − baseline: the increase over the RSS before the "
        "first epoch (data and model loaded). Times: training wall-clock per epoch on the machine "
        "that ran the run (a run resumed elsewhere averages over both).",
    ]
    for group, entries in groups.items():
        markdown, rows = table(entries)
        parts += ["", f"## {group}", ""]
        descriptions = {e["config"].description for e in entries}
        if len(descriptions) == 1 and next(iter(descriptions)):
            parts += [next(iter(descriptions)), ""]
        grid = matrix(entries)
        if grid:
            parts += [grid, ""]
        parts.append(markdown)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(args.out / f"{group}.csv", out.getvalue())
        if not args.no_figures:
            _figure(args.out / f"{group}.png", group, entries)
            parts += ["", f"![{group}]({group}.png)"]
    text = "\n".join(parts) + "\n"
    atomic_write_text(args.out / "report.md", text)
    print(text)
    print(f"report: wrote {args.out / 'report.md'}")
    return 0
