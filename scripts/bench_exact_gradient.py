"""Cost of BRUNO's exact coarse gradient: one coarse step (1000 fine steps of 1 us), float32.

For each layer size (neurons x batch) it times, over ``--repeats`` after one warm-up:

* ``values``: the fine path alone (:func:`bruno.kernels.integrate`, native kernel);
* ``values+jacobian``: the fine path with its exact Jacobian in forward mode
  (:func:`bruno.kernels.integrate_with_jacobian`, the kernel's tangent variant);
* ``bruno exact`` / ``bruno implicit``: a FeLIFLayer's forward + backward per coarse step with
  ``coarse_gradient="exact"`` / ``"implicit"`` (over ``--coarse-steps`` coarse steps);
* ``bptt`` (the smallest size only, ``--bptt-neurons``): autograd through every fine step.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_exact_gradient.py`` (prints JSON rows, then a
table of milliseconds per coarse step, median and minimum). The variants of one size alternate
within each repeat, so that a shared machine's load falls on them alike: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from bruno import kernels
from bruno.felif import FeLIFParameters
from bruno.kernels import ffi, throughput
from bruno.layers import FeLIFLayer


def interleaved_timings(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Median and minimum wall-clock seconds of each call over ``repeats`` rounds after one
    warm-up round; the calls alternate within a round, so that load from other processes on a
    shared machine falls on all of them alike."""
    for call in calls.values():
        call()
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(values), "min": min(values)}
        for name, values in timings.items()
    }


def fine_path_calls(neurons: int, batch: int) -> dict[str, Callable[[], object]]:
    """One coarse step's fine path (1000 steps), values only and with the Jacobian."""
    p = FeLIFParameters()
    generator = torch.Generator().manual_seed(0)
    state = throughput.random_state((batch, neurons), p, generator, torch.float32)
    current = torch.rand(batch, neurons, generator=generator) * 2e-9
    kernel = kernels.select("native", state.v)
    coefficients = ffi.pack_coefficients(p, (batch, neurons), torch.float32)
    options = {"kernel": kernel, "coefficients": coefficients}
    return {
        "values": lambda: kernels.integrate(state, current, p, 1e-6, 1000, **options),
        "values+jacobian": lambda: kernels.integrate_with_jacobian(
            state, current, p, 1e-6, 1000, **options
        ),
    }


def training_call(
    neurons: int, batch: int, coarse_steps: int, algorithm: str, gradient: str
) -> Callable[[], None]:
    """A FeLIFLayer's forward + backward over ``coarse_steps`` coarse steps (native fine path)."""
    layer = FeLIFLayer(
        neurons,
        algorithm=algorithm,
        coarse_gradient=gradient,
        fine_steps=1000,
        variability_sigma=0.1,
        fine_backend="native" if algorithm == "bruno" else "auto",
    )
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(coarse_steps, batch, neurons, generator=generator) * 3).requires_grad_(True)

    def step() -> None:
        x.grad = None
        layer(x).sum().backward()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neurons", type=int, nargs="+", default=[27, 128, 3000])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--coarse-steps", type=int, default=3)
    parser.add_argument("--bptt-neurons", type=int, default=27)
    args = parser.parse_args(argv)
    rows = []
    for n in args.neurons:
        calls = fine_path_calls(n, args.batch)
        steps = args.coarse_steps
        for gradient in ("exact", "implicit"):
            calls[f"bruno {gradient}"] = training_call(n, args.batch, steps, "bruno", gradient)
        timings = interleaved_timings(calls, args.repeats)
        if n == args.bptt_neurons:
            bptt = {"bptt": training_call(n, args.batch, steps, "bptt", "implicit")}
            timings.update(interleaved_timings(bptt, max(1, args.repeats // 2)))
        for name in timings:  # the layer timings per coarse step
            if name.startswith(("bruno", "bptt")):
                timings[name] = {key: value / steps for key, value in timings[name].items()}
        rows.append(
            {"neurons": n, "batch": args.batch, "threads": torch.get_num_threads(), **timings}
        )
    print(json.dumps(rows, indent=2))
    print(f"median (min) per coarse step; ratios of medians, {rows[0]['threads']} thread(s)")
    print(
        f"{'N x B':>10} {'values':>17} {'+jacobian':>17} {'ratio':>5} {'bruno exact':>17} "
        f"{'bruno implicit':>17} {'ratio':>5} {'bptt':>9} {'bptt/exact':>10}"
    )

    def cell(entry: dict) -> str:
        return f"{entry['median'] * 1e3:8.2f} ({entry['min'] * 1e3:6.2f})"

    for row in rows:
        bptt = row.get("bptt")
        print(
            f"{row['neurons']:>5} x {row['batch']:<2} {cell(row['values'])} "
            f"{cell(row['values+jacobian'])} "
            f"{row['values+jacobian']['median'] / row['values']['median']:>5.2f} "
            f"{cell(row['bruno exact'])} {cell(row['bruno implicit'])} "
            f"{row['bruno exact']['median'] / row['bruno implicit']['median']:>5.2f} "
            + (
                f"{bptt['median'] * 1e3:>7.0f}ms "
                f"{bptt['median'] / row['bruno exact']['median']:>10.1f}"
                if bptt
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
