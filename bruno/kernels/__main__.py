"""`python -m bruno.kernels {build,info,bench,accuracy}`: build the fused FeLIF kernel, say which
one is loaded, measure it against the plain torch loop (neuron-fine-steps per second), or measure
every backend against the float64 ODE reference (bruno.kernels.accuracy)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bruno import kernels
from bruno.kernels import accuracy, build, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bruno.kernels", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the kernel for this CPU (idempotent)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument(
        "--variant",
        action="append",
        choices=[name for name, _ in build.FLAG_SETS],
        help="only try this flag set (repeatable); default: all, best first",
    )
    sub.add_parser("info", help="print which kernel is loaded, as JSON")
    bench = sub.add_parser("bench", help="fused kernel vs plain torch loop, neuron-fine-steps/s")
    bench.add_argument("--neurons", type=int, nargs="+", default=[150, 3000, 10000])
    bench.add_argument("--steps", type=int, default=1000)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    acc = sub.add_parser("accuracy", help="every backend vs the float64 ODE reference (table)")
    acc.add_argument("--json", type=str, default=None, help="also write the full result here")
    args = parser.parse_args(argv)
    if args.command == "build":
        library = build.build(
            force=args.force, variants=tuple(args.variant) if args.variant else None
        )
        # A missing compiler is not an error for `make setup`: the torch fine path still works.
        return 0 if library is not None or build.compiler() is None else 1
    if args.command == "info":
        print(json.dumps(kernels.info(), indent=2))
        return 0
    if args.command == "accuracy":
        result = accuracy.survey()
        print(accuracy.format_table(result))
        if args.json:
            from pathlib import Path

            from bruno.io import atomic_write_json

            atomic_write_json(Path(args.json), result)
        return 0
    rows = throughput.compare_throughput(
        args.neurons, steps=args.steps, repeats=args.repeats, dtype=getattr(torch, args.dtype)
    )
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
