"""Training with an injected fault, for the tests: ``python -m tests.fault_injection SPEC ARGS...``
runs ``python -m pipelines train ARGS...`` with SPEC = ``kill@E.B`` (SIGKILL at epoch E batch B)
or ``nan@E.B`` (that batch's loss is NaN), through :data:`pipelines.loop.BATCH_HOOKS`."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import torch

from pipelines import loop, train


def fault_hook(spec: str) -> Callable[[int, int, torch.Tensor], torch.Tensor]:
    kind, where = spec.split("@")
    epoch, batch = (int(x) for x in where.split("."))
    if kind not in ("kill", "nan"):
        raise ValueError(f"fault {spec!r}: expected kill@EPOCH.BATCH or nan@EPOCH.BATCH")

    def hook(e: int, b: int, loss: torch.Tensor) -> torch.Tensor:
        if (e, b) != (epoch, batch):
            return loss
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return loss * float("nan")

    return hook


def command(spec: str, args: list[str]) -> list[str]:
    """The command line that trains ``args`` with the fault ``spec``."""
    return [sys.executable, "-m", "tests.fault_injection", spec, *args]


if __name__ == "__main__":
    loop.BATCH_HOOKS.append(fault_hook(sys.argv[1]))
    sys.exit(train.main(sys.argv[2:]))
