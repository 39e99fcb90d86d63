"""`python -m pipelines STAGE [args...]`: train, sweep, bench, report, diagnose, cosim, devices.

``pipelines.train``, ``sweep``, ``bench``, ``report``, ``diagnose`` and ``cosim`` each provide
``main(argv) -> int``. ``--device DIR`` (any stage) works on a user's device directory
(:mod:`bruno.devices`; the default is the shipped device).
"""

from __future__ import annotations

import importlib
import sys

#: Stages whose module is not named after them.
MODULES = {"devices": "device_report"}
STAGES = ("train", "sweep", "bench", "report", "diagnose", "cosim", "devices")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m pipelines {{{','.join(STAGES)}}} [args...]", file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    if "--device" in rest:  # every stage: the device directory (bruno.devices)
        from bruno import devices

        at = rest.index("--device")
        if at + 1 >= len(rest):
            print("pipelines: --device needs a device directory", file=sys.stderr)
            return 2
        try:
            devices.use(rest[at + 1])
        except devices.DeviceError as error:
            print(f"pipelines: {error}", file=sys.stderr)
            return 2
        rest = rest[:at] + rest[at + 2 :]
    try:
        module = importlib.import_module(f"pipelines.{MODULES.get(stage, stage)}")
    except ModuleNotFoundError as error:
        if error.name != f"pipelines.{MODULES.get(stage, stage)}":
            raise
        print(f"pipelines: stage '{stage}' is not built yet", file=sys.stderr)
        return 1
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
