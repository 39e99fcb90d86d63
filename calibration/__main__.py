"""`python -m calibration {calibrate,validate} [felif] [rram] [--quick] [--device D] [--presets D]
[--reports D]`

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

from bruno import devices as device_dirs
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
        "--device",
        help="a device directory (devices/<name> or a path) whose netlists to calibrate; presets "
        "and reports then go to its presets/ and validation/ (default: $BRUNO_DEVICE, else the "
        "shipped device in netlists/)",
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
    try:
        chosen = device_dirs.use(args.device) if args.device else device_dirs.device_dir()
    except device_dirs.DeviceError as error:
        parser.error(str(error))
    devices = list(dict.fromkeys(args.devices)) or list(DEVICES)
    if chosen is not None and not args.devices:  # only what the device directory brings
        for kind in [d for d in devices if not device_dirs.owns(d)]:
            print(
                f"calibration: {chosen} takes the {kind} netlists from the shipped device; "
                f"skipping {kind} (the committed {kind} preset applies)"
            )
            devices.remove(kind)
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
