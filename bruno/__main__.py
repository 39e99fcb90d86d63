"""``python -m bruno simulate {felif,lif} ...``: one neuron at the fine resolution, JSON on stdout.

Examples::

    python -m bruno simulate felif --current 308e-12 --duration 0.1 --defaults
    python -m bruno simulate felif --input stimulus.csv --params my_preset.json --traces trace.csv
    python -m bruno simulate lif --current 1.5e-9 --duration 0.1

The input is a DC ``--current`` (A) or a piecewise-constant ``--input`` CSV of ``time_s,current_A``
rows (the current holds from each time until the next; before the first time it is 0; a header
line is optional). FeLIF parameters: ``--defaults`` (SPEC §3), ``--params FILE`` (a
``bruno.felif-preset/1`` file), or, with neither, the committed calibrated preset when present.
FeLIF resets at the fine step that crosses threshold (the device view, bruno.device.simulate).
LIF (bruno.lif) is driven by ``x = I / --current-scale`` (default 1 nA: threshold 1 = 1 nA DC).
``--traces FILE`` writes ``time_s,v_V,P_C_per_m2`` (LIF: ``time_s,v,syn``) every
``--record-every`` fine steps. The output JSON has ``spike_times_s`` and summary statistics.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch

from bruno import device, felif, presets
from bruno.io import atomic_write_text
from bruno.lif import LIFParameters, simulate_scalar


class InputError(ValueError):
    pass


def read_piecewise_csv(path: str | Path) -> list[tuple[float, float]]:
    """(time_s, current_A) breakpoints, strictly increasing times, finite values."""
    rows: list[tuple[float, float]] = []
    try:
        with open(path, newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if (
                    not row
                    or all(not cell.strip() for cell in row)
                    or row[0].lstrip().startswith("#")
                ):
                    continue
                if len(row) < 2:
                    raise InputError(f"{path}:{number}: expected 'time_s,current_A', got {row}")
                try:
                    t, i = float(row[0]), float(row[1])
                except ValueError:
                    if not rows and number == 1:
                        continue  # header
                    raise InputError(f"{path}:{number}: not numbers: {row}") from None
                if not (math.isfinite(t) and math.isfinite(i)):
                    raise InputError(f"{path}:{number}: non-finite value {row}")
                if t < 0 or (rows and t <= rows[-1][0]):
                    raise InputError(f"{path}:{number}: times must be >= 0 and strictly increasing")
                rows.append((t, i))
    except OSError as error:
        raise InputError(f"cannot read input CSV {path}: {error}") from None
    if not rows:
        raise InputError(f"{path}: no (time_s, current_A) rows")
    return rows


def piecewise_current(rows: list[tuple[float, float]], steps: int, dt: float) -> torch.Tensor:
    """Current at each fine step k (value in force at time k*dt), float64."""
    times = torch.tensor([t for t, _ in rows], dtype=torch.float64)
    values = torch.tensor([i for _, i in rows], dtype=torch.float64)
    t = torch.arange(steps, dtype=torch.float64) * dt
    index = torch.searchsorted(times, t + 1e-3 * dt, right=True) - 1
    out = torch.zeros(steps, dtype=torch.float64)
    valid = index >= 0
    out[valid] = values[index[valid]]
    return out


def _summary(spikes: list[float], duration: float) -> dict:
    isis = [b - a for a, b in zip(spikes, spikes[1:], strict=False)]
    return {
        "spike_times_s": spikes,
        "spike_count": len(spikes),
        "first_spike_s": spikes[0] if spikes else None,
        "mean_isi_s": sum(isis) / len(isis) if isis else None,
        "mean_rate_hz": len(spikes) / duration,
    }


def _write_traces(path: str, header: list[str], columns: list[torch.Tensor]) -> None:
    stacked = torch.stack([c.double().reshape(-1) for c in columns], dim=1).tolist()
    lines = [",".join(header)] + [",".join(f"{value:.9g}" for value in row) for row in stacked]
    atomic_write_text(path, "\n".join(lines) + "\n")


def simulate_command(args: argparse.Namespace) -> dict:
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise InputError(f"--duration must be a finite number > 0, got {args.duration}")
    if not (math.isfinite(args.dt) and 0 < args.dt <= args.duration):
        raise InputError(f"--dt must be > 0 and <= --duration, got {args.dt}")
    if args.record_every < 1:
        raise InputError("--record-every must be >= 1")
    steps = int(round(args.duration / args.dt))
    if args.input is not None:
        current = piecewise_current(read_piecewise_csv(args.input), steps, args.dt)
        source = {"input_csv": str(args.input)}
    else:
        if not math.isfinite(args.current):
            raise InputError(f"--current must be finite, got {args.current}")
        current = torch.full((steps,), float(args.current), dtype=torch.float64)
        source = {"current_A": args.current}
    started = time.perf_counter()
    result: dict = {
        "model": args.model,
        "dt_s": args.dt,
        "duration_s": args.duration,
        "steps": steps,
        **source,
    }
    if args.model == "felif":
        if args.defaults and args.params:
            raise InputError("give --defaults or --params, not both")
        if args.defaults:
            parameters, origin = felif.FeLIFParameters(), "defaults (SPEC section 3)"
        else:
            preset = presets.load_felif_preset(args.params)
            parameters, origin = preset.parameters, preset.source
        trace = device.simulate(current.reshape(steps, 1), parameters, args.dt, args.record_every)
        result["parameters"] = origin
        result.update(_summary(trace.spike_times[0], steps * args.dt))
        if args.traces:
            _write_traces(
                args.traces,
                ["time_s", "v_V", "P_C_per_m2"],
                [trace.time, trace.v, trace.polarization],
            )
    else:
        if args.params:
            raise InputError(
                "--params is for felif; give lif parameters as --tau-mem/--tau-syn/--threshold"
            )
        p = LIFParameters(args.tau_mem, args.tau_syn, args.threshold, args.dt)
        p.validate()
        x = (current / args.current_scale).tolist()
        times, v, syn, spikes = simulate_scalar(x, p, args.record_every)
        result["parameters"] = {
            "tau_mem_s": args.tau_mem,
            "tau_syn_s": args.tau_syn,
            "threshold": args.threshold,
            "current_scale_A": args.current_scale,
        }
        result.update(_summary(spikes, steps * args.dt))
        if args.traces:
            _write_traces(
                args.traces,
                ["time_s", "v", "syn"],
                [torch.tensor(times), torch.tensor(v), torch.tensor(syn)],
            )
    if args.traces:
        result["traces"] = str(args.traces)
    result["wall_s"] = round(time.perf_counter() - started, 4)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bruno", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="simulate one neuron at the fine resolution; prints JSON")
    sim.add_argument("model", choices=("felif", "lif"))
    stimulus = sim.add_mutually_exclusive_group(required=True)
    stimulus.add_argument("--current", type=float, help="DC input current (A)")
    stimulus.add_argument("--input", help="piecewise-constant input CSV: time_s,current_A")
    sim.add_argument("--duration", type=float, required=True, help="simulated time (s)")
    sim.add_argument("--dt", type=float, default=1e-6, help="fine time step (s), default 1e-6")
    sim.add_argument("--defaults", action="store_true", help="FeLIF: SPEC default parameters")
    sim.add_argument("--params", help="FeLIF: parameter preset JSON (bruno.felif-preset/1)")
    sim.add_argument("--traces", help="write the traces to this CSV file")
    sim.add_argument("--record-every", type=int, default=1, help="trace sampling, in fine steps")
    sim.add_argument("--tau-mem", type=float, default=20e-3, help="LIF membrane time constant (s)")
    sim.add_argument("--tau-syn", type=float, default=5e-3, help="LIF synaptic time constant (s)")
    sim.add_argument("--threshold", type=float, default=1.0, help="LIF threshold (units of x)")
    sim.add_argument("--current-scale", type=float, default=1e-9, help="LIF: x = I / current_scale")
    args = parser.parse_args(argv)
    try:
        result = simulate_command(args)
    except (InputError, presets.PresetError, ValueError, TypeError) as error:
        print(f"python -m bruno simulate: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
