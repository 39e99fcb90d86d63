"""`python -m calibration {calibrate,validate} [felif] [rram] [--quick] [--presets D] [--reports D]`

Runs a stage for the named devices (default: both). Every device module has the same interface
and default locations (:mod:`calibration`): ``calibrate`` writes ``<presets>/<device>.json``,
``validate`` reads it and writes ``<reports>/<device>.json`` plus figures, and exits non-zero when a
stated tolerance is missed. ``--quick`` uses fewer stimuli and devices (a smoke run) and writes
under ``results/quick/`` by default, never over the committed presets.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bruno.presets import PresetError
from calibration import DEVICES, CalibrationError, CalibrationLocationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m calibration", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("stage", choices=("calibrate", "validate"))
    # No `choices` here: argparse checks a list default of an nargs="*" positional against
    # `choices` as one value and rejects a call without device names (Python 3.10-3.13).
    parser.add_argument(
        "devices", nargs="*", metavar="device", help=f"{' and/or '.join(DEVICES)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer stimuli / devices (smoke run)")
    parser.add_argument(
        "--presets",
        type=Path,
        help="preset directory that calibrate writes and validate reads (default: "
        "$BRUNO_PRESETS_DIR or bruno/presets; with --quick results/quick/presets)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        help="validation reports and figures (default results/validation; with --quick "
        "results/quick/validation)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [d for d in args.devices if d not in DEVICES]
    if unknown:
        parser.error(f"unknown device(s) {', '.join(unknown)}; choose from {', '.join(DEVICES)}")
    devices = list(dict.fromkeys(args.devices)) or list(DEVICES)
    failed = []
    for device in devices:
        module = importlib.import_module(f"calibration.{device}")
        try:
            if args.stage == "calibrate":
                module.calibrate(quick=args.quick, presets_dir=args.presets)
            elif not module.validate(
                quick=args.quick, presets_dir=args.presets, reports_dir=args.reports
            ):
                failed.append(device)
        except CalibrationLocationError as error:
            parser.error(str(error))
        except (CalibrationError, PresetError) as error:
            print(f"calibration: {args.stage} {device}: {error}", file=sys.stderr)
            return 2
    if failed:
        print(f"calibration: {args.stage} failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
