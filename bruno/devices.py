"""Which device the pipeline works on: the shipped one, or a user's device directory.

A device directory is the unit a user brings (README, "Your own device")::

    devices/<name>/
        DEVICE.md          what the device is (free text, shown in reports)
        felif.cir          the neuron netlist        } either or both; a missing one is taken
        rram.cir           1T1R programming deck     } from the shipped device, so a user can
        rram_read.cir      the read deck             } bring only the device they changed
        rram_cell.inc      the cell model they include
        presets/           written by `make calibrate DEVICE=...` (felif.json, rram.json)
        validation/        written by `make validate DEVICE=...` (reports and figures)

The device is chosen once per process by ``$BRUNO_DEVICE`` (a directory; ``make ... DEVICE=path``
and the ``--device`` options set it), so calibration's worker processes, the trainer and the
co-simulation all see the same one. Unset, it is the shipped device: ``netlists/`` and the
committed presets in ``bruno/presets``. What a netlist must contain is checked by
:mod:`calibration.contract`.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The shipped device's netlists.
SHIPPED_NETLISTS = ROOT / "netlists"
#: The netlists each device kind is calibrated from.
KIND_NETLISTS = {"felif": ("felif.cir",), "rram": ("rram.cir", "rram_read.cir", "rram_cell.inc")}
#: The netlist files a device directory may hold (each falls back to the shipped one).
NETLIST_FILES = tuple(name for names in KIND_NETLISTS.values() for name in names)
ENV = "BRUNO_DEVICE"


class DeviceError(ValueError):
    """A device directory that cannot be used (missing, or holding none of the netlists)."""


def check_directory(path: str | Path) -> Path:
    """``path`` as a usable device directory (absolute), or a :class:`DeviceError` saying why."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise DeviceError(f"device directory {path} does not exist")
    if not any((path / name).exists() for name in NETLIST_FILES):
        raise DeviceError(
            f"device directory {path} holds none of {', '.join(NETLIST_FILES)}; copy the "
            "shipped netlists/ there and change them (README, 'Your own device')"
        )
    return path


#: Where device directories named by a bare name (``devices/<name>``) live.
DEVICES_ROOT = ROOT / "devices"


def locate(spec: str | Path) -> Path:
    """A device as a config or a command names it: a bare name is ``devices/<name>``, anything
    else a path (relative to the working directory)."""
    spec = Path(spec)
    if len(spec.parts) == 1 and not spec.exists():
        spec = DEVICES_ROOT / spec
    return check_directory(spec)


def recorded(path: Path | None) -> str | None:
    """How a run records its device: relative to the repository when inside it."""
    if path is None:
        return None
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def use(path: str | Path | None) -> Path | None:
    """Make ``path`` this process's device (None: the shipped one); returns the directory."""
    if path is None:
        os.environ.pop(ENV, None)
        return None
    directory = locate(path)
    os.environ[ENV] = str(directory)
    return directory


def device_dir() -> Path | None:
    """The chosen device directory, or None for the shipped device."""
    chosen = os.environ.get(ENV)
    return locate(chosen) if chosen else None


def device_name() -> str:
    """A short name for reports: the directory's name, or 'shipped'."""
    chosen = device_dir()
    return "shipped" if chosen is None else chosen.name


def netlist_path(name: str) -> Path:
    """Where the chosen device's netlist ``name`` is: its directory, else the shipped one."""
    chosen = device_dir()
    if chosen is not None and (chosen / name).exists():
        return chosen / name
    return SHIPPED_NETLISTS / name


def owns(kind: str) -> bool:
    """Whether the chosen device directory holds a netlist of ``kind`` ('felif' or 'rram')
    rather than taking all of them from the shipped device."""
    chosen = device_dir()
    return chosen is not None and any((chosen / n).exists() for n in KIND_NETLISTS[kind])


def not_calibrated(path: Path) -> str:
    """The message for a preset the chosen device lacks."""
    return (
        f"{path}: device {device_dir()} is not calibrated yet; run "
        f"`make calibrate DEVICE={device_dir()}` first"
    )


def presets_dir() -> Path | None:
    """The chosen device's preset directory (None: the shipped device's committed presets)."""
    chosen = device_dir()
    return None if chosen is None else chosen / "presets"


def reports_dir() -> Path | None:
    """The chosen device's validation directory (None: the shipped default)."""
    chosen = device_dir()
    return None if chosen is None else chosen / "validation"
