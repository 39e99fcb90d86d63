"""Device calibration against ngspice: one module per device (``felif``, ``rram``).

Every device module offers the same two stages, which ``python -m calibration`` calls:

- ``calibrate(quick=False, presets_dir=None) -> Path``: simulate the training stimuli, fit the
  compact model, write ``<presets_dir>/<device>.json`` atomically; returns that path.
- ``validate(quick=False, presets_dir=None, reports_dir=None) -> bool``: compare the preset in
  ``presets_dir`` with ngspice on held-out stimuli, write ``<reports_dir>/<device>.json`` and its
  figures; True when every stated tolerance is met.

Where things go (:func:`presets_location`, :func:`reports_location`): a full run writes the presets
the trainer reads (``$BRUNO_PRESETS_DIR``, else the committed ``bruno/presets``) and its
reports to ``results/validation``; for a user's device directory (:mod:`bruno.devices`) its
``presets/`` and ``validation/``. A ``quick`` run (fewer stimuli and devices: a smoke test) writes
under ``results/quick/`` (a device directory's ``quick/``) unless told otherwise, and never
over the committed presets, so ``validate --quick`` checks exactly what ``calibrate --quick`` wrote.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The committed presets of the shipped device are the trainer's package data (bruno/presets).
COMMITTED_PRESETS = Path(importlib.util.find_spec("bruno.presets").origin).parent
QUICK_ROOT = ROOT / "results" / "quick"


def _quick_root() -> Path:
    """Where quick runs write: ``results/quick``, or ``quick/`` in a chosen device directory."""
    from bruno import devices

    chosen = devices.device_dir()
    return QUICK_ROOT if chosen is None else chosen / "quick"


DEVICES = ("felif", "rram")


class CalibrationError(Exception):
    """Base of the errors a stage reports to the user (missing ngspice, bad preset, lost runs)."""


class CalibrationLocationError(CalibrationError, ValueError):
    """A preset or report location that a stage must not use."""


def presets_location(
    quick: bool, presets_dir: str | Path | None = None, *, writing: bool = False
) -> Path:
    """The preset directory a stage reads, or writes (``writing``); see the module docstring."""
    if presets_dir is None:
        if quick:
            return _quick_root() / "presets"
        from bruno.presets import presets_dir as trainer_presets

        return trainer_presets()
    path = Path(presets_dir)
    if writing and quick and path.resolve() == COMMITTED_PRESETS.resolve():
        raise CalibrationLocationError(
            f"a quick calibration never writes the committed presets ({COMMITTED_PRESETS}); "
            "give another --presets directory, or drop --quick for a full calibration"
        )
    return path


def reports_location(quick: bool, reports_dir: str | Path | None = None) -> Path:
    """The directory for validation reports and figures."""
    from bruno import devices

    if reports_dir is not None:
        return Path(reports_dir)
    if quick:
        return _quick_root() / "validation"
    return devices.reports_dir() or ROOT / "results" / "validation"
