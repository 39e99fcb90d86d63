"""Overhead of the Ray backend against the local process pool on the same jobs, in one run.

The jobs are a calibration Monte-Carlo batch (RRAM program + read transients in ngspice, the
real workload of the execution layer) and a batch of trivial jobs (pure scheduling overhead).
Each batch runs on both backends alternately, ``--repeats`` times; the Ray instance is started
once before timing (its start-up is reported separately). Writes ``results/bench/execution.json``.

    .venv/bin/python scripts/bench_execution.py [--workers 2] [--devices 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bruno import execution
from bruno.io import atomic_write_json
from calibration.rram import cell


def _noop(x: int) -> int:
    return x


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--devices", type=int, default=4, help="Monte-Carlo devices per state")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/execution.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    execution.ray_init(args.workers)
    ray_start_s = time.perf_counter() - start
    currents = [60e-6, 200e-6]
    batches = {
        f"rram Monte-Carlo ({len(currents) * args.devices} ngspice jobs)": lambda: cell.monte_carlo(
            currents, args.devices, seed=1, workers=args.workers
        ),
        "200 trivial jobs": lambda: execution.run_many(_noop, range(200), workers=args.workers),
    }

    rows = []
    for label, batch in batches.items():
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(args.repeats):
            for backend in ("local", "ray"):  # alternately: the machine's load hits both
                os.environ[execution.BACKEND_ENV] = backend
                times[backend].append(_timed(batch))
        local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
        rows.append(
            {
                "batch": label,
                "local_s_median": local,
                "ray_s_median": ray,
                "ray_over_local": ray / local,
                "local_s": times["local"],
                "ray_s": times["ray"],
            }
        )
        print(f"{label}: local {local:.2f} s, ray {ray:.2f} s, ratio {ray / local:.2f}")
    print(f"ray start-up (local instance, {args.workers} CPUs): {ray_start_s:.1f} s")
    payload = {"workers": args.workers, "repeats": args.repeats, "ray_start_s": ray_start_s}
    payload["batches"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
