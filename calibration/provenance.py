"""What a preset or report records about how it was made: tool versions, time, paths."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

from calibration import ROOT


def versions() -> dict[str, str]:
    """Versions of the tools a calibration result depends on (ngspice: the shared library's)."""
    import lmfit
    import numpy
    import scipy
    import torch

    found = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "lmfit": lmfit.__version__,
    }
    try:
        import PySpice

        found["PySpice"] = PySpice.__version__
    except Exception:  # noqa: BLE001 - provenance only
        pass
    try:
        from calibration import spice

        found["ngspice"] = str(getattr(spice._ngspice(), "ngspice_version", "unknown"))
    except Exception:  # noqa: BLE001 - provenance only
        found["ngspice"] = "unknown"
    return found


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def display_path(path: str | Path) -> str:
    """A path as a result names it: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)
