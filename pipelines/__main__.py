"""`python -m pipelines STAGE [args...]`: train, sweep, bench, report, diagnose or cosim.

``pipelines.train``, ``sweep``, ``bench``, ``report``, ``diagnose`` and ``cosim`` each provide
``main(argv) -> int``.
"""

from __future__ import annotations

import importlib
import sys

STAGES = ("train", "sweep", "bench", "report", "diagnose", "cosim")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m pipelines {{{','.join(STAGES)}}} [args...]", file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(f"pipelines.{stage}")
    except ModuleNotFoundError as error:
        if error.name != f"pipelines.{stage}":
            raise
        print(f"pipelines: stage '{stage}' is not built yet", file=sys.stderr)
        return 1
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
