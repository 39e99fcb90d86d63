"""Peak memory and step time of BRUNO vs BPTT vs checkpointing, and fine-path throughput.

The paper's benchmark network: Linear(512 -> H) followed by a FeLIF layer of H neurons, loss = sum
of spikes squared, one training step = forward + backward + optimiser step. Every configuration runs
in a fresh Python process so that its peak memory is its own:

* CPU: ``peak_memory_bytes`` is the process's peak resident set size (``ru_maxrss``) minus its
  resident size just before the first training step (model, data and the torch runtime already
  loaded) — the memory the training step itself needs. ``peak_rss_bytes`` is the raw peak.
* CUDA: ``torch.cuda.max_memory_allocated`` during the steps.
* Both: ``saved_bytes``, the bytes autograd keeps for backward after one forward pass
  (:func:`saved_for_backward_bytes`: every tensor packed by a saved-tensor hook, each storage
  counted once, the model's parameters left out). Peak RSS includes allocator and runtime
  overhead, which at small sizes hides the algorithm; this measure is the algorithm's own.

Step time is the median over ``repeats`` timed steps after one warm-up step. Where BPTT would need
more memory than ``--memory-cap-gb``, predicted from a linear fit of its measured memory in T, it is
not run; its memory and time are extrapolated from that fit and marked ``"extrapolated": true``.

Fine-path throughput (neuron-fine-steps per second) compares the fused kernel with a plain per-step
PyTorch loop of the same equations, side by side in one process, and with a transcendental-bound
estimate: the measured rate of torch's vectorised ``exp`` over a large float32 array divided by
the four transcendental evaluations one FeLIF fine step needs. torch's exp is accurate to the last
ulp; the fused kernel's inlined polynomial exp/log is cheaper, so the kernel can beat this
estimate: read it as the limit for a kernel built on library-accurate transcendentals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bruno.io import atomic_save_figure

RESULTS_DIR = Path("results/bench")
METHODS = ("bptt", "checkpoint", "bruno", "coarse")
INPUT_FEATURES = 512


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One measurement: a method on ``hidden`` FeLIF neurons over ``steps`` coarse steps."""

    method: str
    hidden: int
    steps: int  # T, coarse steps
    fine_steps: int  # n, fine steps per coarse step
    batch: int = 1
    repeats: int = 3
    device: str = "cpu"
    seed: int = 0

    def label(self) -> str:
        return f"{self.method} H={self.hidden} T={self.steps} n={self.fine_steps} B={self.batch}"


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def saved_for_backward_bytes(forward, parameters) -> tuple[object, int]:
    """Run ``forward()`` under a saved-tensor hook; return (its output, the bytes of the distinct
    tensor storages autograd saved for backward, parameters excluded).

    Everything ``save_for_backward`` or a built-in op keeps passes the hook (torch's
    non-reentrant checkpointing installs its own hook inside, so what it recomputes is not
    counted, which is the point of it; the segment it recomputes lives during backward, and
    peak memory, not this measure, shows that).
    """
    import torch

    skip = {p.untyped_storage().data_ptr() for p in parameters}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in skip:
            seen[pointer] = max(seen.get(pointer, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    return output, int(sum(seen.values()))


def measure(config: BenchConfig) -> dict:
    """Run ``config`` in this process: warm-up step, then ``repeats`` timed training steps."""
    import torch

    from bruno.layers import FeLIFLayer

    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    linear = torch.nn.Linear(INPUT_FEATURES, config.hidden).to(device)
    layer = FeLIFLayer(
        config.hidden, algorithm=config.method, fine_steps=config.fine_steps, seed=config.seed
    ).to(device)
    optimizer = torch.optim.Adam(list(linear.parameters()) + list(layer.parameters()), lr=1e-3)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = (
        (torch.rand(config.steps, config.batch, INPUT_FEATURES, generator=generator) < 0.2)
        .float()
        .to(device)
    )

    parameters = list(linear.parameters()) + list(layer.parameters())

    def step(count_saved: bool = False) -> tuple[float, int]:
        """One training step; with ``count_saved``, also the bytes its forward saved."""
        optimizer.zero_grad(set_to_none=True)
        saved = 0
        if count_saved:
            spikes, saved = saved_for_backward_bytes(lambda: layer(linear(inputs)), parameters)
        else:
            spikes = layer(linear(inputs))
        loss = (spikes**2).sum()
        loss.backward()
        optimizer.step()
        return float(loss.detach()), saved

    baseline = _current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _, saved = step(count_saved=True)  # warm-up (allocator pools, kernels), untimed
    times = []
    for _ in range(config.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        spike_count, _ = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated())
        peak_rss = None
    else:
        peak_rss = _peak_rss_bytes()
        peak = max(0, peak_rss - baseline)
    return {
        **dataclasses.asdict(config),
        "H": config.hidden,
        "T": config.steps,
        "n": config.fine_steps,
        "peak_memory_bytes": peak,
        "peak_rss_bytes": peak_rss,
        "baseline_rss_bytes": baseline if device.type == "cpu" else None,
        "saved_bytes": saved,
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        "loss": spike_count,
        "threads": torch.get_num_threads(),
        "extrapolated": False,
    }


def run_in_fresh_process(config: BenchConfig, timeout_s: float) -> dict:
    """Measure ``config`` in a new interpreter; a crash or time-out is reported, not hidden."""
    command = [
        sys.executable,
        "-m",
        "pipelines.bench",
        "--worker",
        json.dumps(dataclasses.asdict(config)),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**dataclasses.asdict(config), "error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {**dataclasses.asdict(config), "error": f"exit {done.returncode}: {tail}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept); with one point, proportional through the origin."""
    if len(xs) == 1:
        return ys[0] / xs[0], 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, mean_y - slope * mean_x


def extrapolate(measured: list[dict], config: BenchConfig) -> dict | None:
    """Predict memory and time of ``config`` from same-method records at other T (linear in T)."""
    same = [
        r
        for r in measured
        if "error" not in r
        and not r["extrapolated"]
        and r["method"] == config.method
        and r["H"] == config.hidden
        and r["n"] == config.fine_steps
        and r["batch"] == config.batch
    ]
    if not same:
        return None
    xs = [float(r["T"]) for r in same]
    memory = _linear_fit(xs, [float(r["peak_memory_bytes"]) for r in same])
    saved = _linear_fit(xs, [float(r.get("saved_bytes", 0)) for r in same])
    step = _linear_fit(xs, [float(r["step_time_s"]) for r in same])
    return {
        **dataclasses.asdict(config),
        "H": config.hidden,
        "T": config.steps,
        "n": config.fine_steps,
        "peak_memory_bytes": int(memory[0] * config.steps + memory[1]),
        "peak_rss_bytes": None,
        "saved_bytes": int(saved[0] * config.steps + saved[1]),
        "step_time_s": step[0] * config.steps + step[1],
        "extrapolated": True,
        "extrapolated_from_T": sorted(int(x) for x in xs),
    }


def machine_limit_estimate(elements: int = 1 << 22, repeats: int = 5) -> dict:
    """Rate of vectorised float32 exp on all cores, and the FeLIF fine-step bound it implies."""
    import torch

    x = torch.rand(elements) * -10.0
    out = torch.empty_like(x)
    torch.exp(x, out=out)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            torch.exp(x, out=out)
        rates.append(10 * elements / (time.perf_counter() - start))
    exp_rate = statistics.median(rates)
    return {
        "exp_per_s": exp_rate,
        "transcendentals_per_fine_step": 4,
        "neuron_fine_steps_per_s_limit": exp_rate / 4,
        "method": (
            "median rate of torch.exp over 4M float32 values (vectorised, all threads) / 4; "
            "a bound for library-accurate transcendentals, not for the kernel's polynomial ones"
        ),
    }


def run_throughput(neuron_counts: list[int], steps: int, repeats: int) -> dict:
    """Fused kernel vs plain PyTorch loop, side by side, plus the machine-limit estimate."""
    from bruno.kernels import throughput

    rows = throughput.compare_throughput(neuron_counts, steps=steps, repeats=repeats)
    return {"rows": rows, "machine_limit": machine_limit_estimate()}


def _configs(args: argparse.Namespace) -> list[BenchConfig]:
    configs = []
    for hidden in args.hidden:
        for n in args.fine_steps:
            for steps in args.steps:
                for method in args.methods:
                    configs.append(
                        BenchConfig(method, hidden, steps, n, args.batch, args.repeats, args.device)
                    )
    return configs


def _figures(records: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    good = [r for r in records if "error" not in r]
    for quantity, label, scale in (
        ("peak_memory_bytes", "peak memory (MiB)", 1 / 2**20),
        ("step_time_s", "time per training step (s)", 1.0),
    ):
        for axis_name in ("T", "n"):
            fig, axes = plt.subplots(1, 1, figsize=(6, 4))
            fixed = "n" if axis_name == "T" else "T"
            fixed_value = max((r[fixed] for r in good), default=None)
            hidden = max((r["H"] for r in good), default=None)
            for method in METHODS:
                points = sorted(
                    (r[axis_name], r[quantity] * scale, r["extrapolated"])
                    for r in good
                    if r["method"] == method and r["H"] == hidden and r[fixed] == fixed_value
                )
                if len(points) < 1:
                    continue
                xs = [p[0] for p in points]
                ys = [p[1] for p in points]
                (line,) = axes.plot(xs, ys, marker="o", label=method)
                extra = [(p[0], p[1]) for p in points if p[2]]
                if extra:
                    axes.scatter(
                        *zip(*extra, strict=True), marker="x", s=80, color=line.get_color()
                    )
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.set_xlabel(
                "sequence length T (coarse steps)" if axis_name == "T" else "fine steps n"
            )
            axes.set_ylabel(label)
            axes.set_title(f"H={hidden}, {fixed}={fixed_value} (x: extrapolated)")
            axes.legend()
            fig.tight_layout()
            path = out_dir / f"{quantity.split('_')[0]}_vs_{axis_name}.png"
            atomic_save_figure(fig, path)
            written.append(str(path))
    return written


def ratios(records: list[dict]) -> list[dict]:
    """BRUNO / BPTT (and checkpoint / BPTT) memory and time ratios per configuration."""
    table = []
    index = {
        (r["method"], r["H"], r["T"], r["n"], r["batch"]): r for r in records if "error" not in r
    }
    for (method, hidden, steps, n, batch), bptt in index.items():
        if method != "bptt":
            continue
        row = {
            "H": hidden,
            "T": steps,
            "n": n,
            "batch": batch,
            "bptt_extrapolated": bptt["extrapolated"],
        }
        for other in ("bruno", "checkpoint", "coarse"):
            record = index.get((other, hidden, steps, n, batch))
            if record and bptt["peak_memory_bytes"] > 0:
                row[f"{other}_memory_ratio"] = (
                    record["peak_memory_bytes"] / bptt["peak_memory_bytes"]
                )
                row[f"{other}_time_ratio"] = record["step_time_s"] / bptt["step_time_s"]
            if record and bptt.get("saved_bytes") and "saved_bytes" in record:
                row[f"{other}_saved_ratio"] = record["saved_bytes"] / bptt["saved_bytes"]
        table.append(row)
    return sorted(table, key=lambda r: (r["H"], r["n"], r["T"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines bench", description=__doc__)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 8, 16, 32])
    parser.add_argument("--fine-steps", nargs="+", type=int, default=[1000])
    parser.add_argument(
        "--scaling-n",
        nargs="*",
        type=int,
        default=[10, 100, 1000],
        help="fine-step counts for the n-scaling curve (H=max, T=min of --steps)",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--throughput-neurons", nargs="*", type=int, default=[150, 3000, 12000, 48000]
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(measure(BenchConfig(**json.loads(args.worker)))))
        return 0
    if args.quick:
        args.hidden, args.steps, args.fine_steps, args.scaling_n = [16], [2, 4], [50], []
        args.repeats, args.throughput_neurons = 1, [150, 3000]

    from tqdm.auto import tqdm

    from bruno.io import atomic_write_json

    configs = _configs(args)
    top_hidden, low_steps = max(args.hidden), min(args.steps)
    for n in args.scaling_n:
        if n not in args.fine_steps:
            configs += [
                BenchConfig(m, top_hidden, low_steps, n, args.batch, args.repeats, args.device)
                for m in args.methods
            ]
    cap = args.memory_cap_gb * 2**30
    records: list[dict] = []
    for config in tqdm(
        sorted(configs, key=lambda c: (c.hidden, c.fine_steps, c.steps)), desc="bench"
    ):
        predicted = extrapolate(records, config)
        if config.method == "bptt" and predicted and predicted["peak_memory_bytes"] > cap:
            records.append(predicted)
            continue
        record = run_in_fresh_process(config, args.timeout_s)
        if "error" in record:
            tqdm.write(f"bench: {config.label()} failed: {record['error']}")
            if predicted:
                record.update({k: v for k, v in predicted.items() if k not in record})
        records.append(record)

    import torch

    throughput = run_throughput(
        args.throughput_neurons,
        steps=1000 if not args.quick else 100,
        repeats=3 if not args.quick else 1,
    )
    from bruno.kernels import accuracy

    fine_path_accuracy = accuracy.survey()
    print(accuracy.format_table(fine_path_accuracy))
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": args.device,
        },
        "memory_definition": (
            "CPU: peak RSS of the fresh process minus its RSS just before the first training step; "
            "CUDA: torch.cuda.max_memory_allocated; saved_bytes: distinct storages autograd keeps "
            "for backward after one forward (saved-tensor hook), parameters excluded"
        ),
        "records": records,
        "ratios": ratios(records),
        "throughput": throughput,
        "fine_path_accuracy": fine_path_accuracy,
    }
    payload["figures"] = _figures(records, args.out)
    atomic_write_json(args.out / "bench.json", payload)
    for row in payload["ratios"]:
        print(json.dumps(row))
    print(f"bench: wrote {args.out / 'bench.json'}")
    failed = [r for r in records if "error" in r]
    if failed:
        print(f"bench: {len(failed)} configuration(s) failed (see 'error' in bench.json)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
