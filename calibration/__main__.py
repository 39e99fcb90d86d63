"""`python -m calibration {calibrate,validate} [felif|rram ...] [--quick]`.

Each device module (``calibration.felif``, ``calibration.rram``) provides
``calibrate(quick: bool) -> Path`` (writes its preset) and ``validate(quick: bool) -> bool``
(writes ``results/validation/<device>.json``; True when every stated tolerance is met).
"""

from __future__ import annotations

import argparse
import importlib
import sys

DEVICES = ("felif", "rram")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration", description=__doc__)
    parser.add_argument("stage", choices=("calibrate", "validate"))
    parser.add_argument("devices", nargs="*", choices=DEVICES, default=list(DEVICES))
    parser.add_argument("--quick", action="store_true", help="fewer stimuli / samples (smoke run)")
    args = parser.parse_args(argv)
    failed = []
    for device in args.devices or DEVICES:
        try:
            module = importlib.import_module(f"calibration.{device}")
        except ModuleNotFoundError as error:
            if error.name != f"calibration.{device}":
                raise
            message = f"calibration: stage '{args.stage}' for {device} is not built yet"
            print(message, file=sys.stderr)
            failed.append(device)
            continue
        stage = getattr(module, args.stage)
        outcome = stage(quick=args.quick)
        if args.stage == "validate" and not outcome:
            failed.append(device)
    if failed:
        print(f"calibration: {args.stage} failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
