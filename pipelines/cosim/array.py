"""The synapse array of the co-simulation: every cell programmed by write-verify to the read
conductance the trained model uses, on the device geometry of its draw."""

from __future__ import annotations

import math

import numpy as np

from bruno import execution
from pipelines.cosim import export
from pipelines.cosim.network import CosimError, HardwareLayer

#: Cells per read deck (one ngspice run): ~0.1 s of ngspice per cell.
CELLS_PER_READ = 48
#: N_disc grid of a device's read table (write-verify starts from its inverse).
TABLE_POINTS = 24
#: A verify read further than this from the target conductance is refined once (secant).
VERIFY_TOLERANCE = 1e-4


def _read_job(arguments: tuple[list[export.Cell], float]) -> list[float]:
    cells, v_read = arguments
    return export.read_currents(cells, v_read).tolist()


def _read_all(cells: list[export.Cell], v_read: float, jobs: int | None, label: str) -> np.ndarray:
    chunks = [cells[k : k + CELLS_PER_READ] for k in range(0, len(cells), CELLS_PER_READ)]
    results, failures = execution.run_many(
        _read_job, [(c, v_read) for c in chunks], workers=jobs, runs_per_worker=4, progress=label
    )
    if failures:
        raise CosimError(f"{label}: ngspice failed for {len(failures)} read decks: {failures[0]}")
    return np.concatenate([np.asarray(r) for r in results])


def cell_geometries(synapses, preset) -> tuple[list, np.ndarray]:
    """The device geometries in use and each cell's index into them [2, N, M]: the nominal cell,
    or with device variability the Monte-Carlo device whose sample is nearest the cell's quantile
    (the sample the forward pass interpolates from)."""
    from calibration.rram.cell import sample_devices
    from calibration.rram.common import Device

    cells = synapses.rram_cells()
    shape = tuple(cells.levels.shape)
    if not synapses.device_variability:
        return [Device()], np.zeros(shape, dtype=int)
    record = preset.record.get("monte_carlo")
    if not record or "seed" not in record:
        raise CosimError(
            f"{preset.source}: no Monte-Carlo record (seed, devices_per_state): the cells' device "
            "draws cannot be reproduced; recalibrate: make calibrate ARGS=rram"
        )
    devices = sample_devices(int(record["devices_per_state"]), int(record["seed"]))
    failed = {(f["state"], f["device_index"]) for f in record.get("failures", [])}
    index = np.zeros(shape, dtype=int)
    levels, latent = cells.levels.numpy(), cells.latent.numpy()
    u = 0.5 * (1 + np.vectorize(math.erf)(latent / math.sqrt(2)))
    for level, spec in enumerate(preset.levels):
        alive = [d for d in range(len(devices)) if (level, d) not in failed]
        samples = np.asarray(spec.conductance_samples_S)
        if len(alive) != len(samples):
            raise CosimError(
                f"{preset.source}: level {level} has {len(samples)} samples but "
                f"{len(alive)} surviving Monte-Carlo devices"
            )
        order = np.argsort(samples, kind="stable")
        mask = levels == level
        nearest = np.rint(u[mask] * (len(samples) - 1)).astype(int)
        index[mask] = np.asarray(alive)[order[nearest]]
    return devices, index


#: How cells get their state: ``verify`` (write-verify to the conductance the trained model
#: uses) or ``transient`` (the programming transient of the cell's level, as calibration ran it).
PROGRAMMING = ("verify", "transient")


def _program_job(arguments: tuple[float, dict]) -> float:
    from calibration.rram.cell import program
    from calibration.rram.common import Device

    i_prog, device = arguments
    return float(program(i_prog, Device(**device))["n_disc"])


def _cell(device, n_disc: float) -> export.Cell:
    return export.Cell(device.r_fil, device.l_disc, device.ndiscmin, device.ndiscmax, float(n_disc))


def _write_verify(devices, distinct: np.ndarray, v_read: float, jobs) -> tuple[np.ndarray, ...]:
    """N_disc of each distinct (geometry, target conductance): the inverse of the geometry's read
    table, verified by a read and refined once by a secant step where it misses; the read
    currents (A) of the final states and the number of refined cells."""
    used = sorted({int(g) for g in distinct[:, 0]})
    table_cells, grids = [], {}
    for g in used:
        d = devices[g]
        grids[g] = np.geomspace(d.ndiscmin * 1.02, d.ndiscmax * 0.98, TABLE_POINTS)
        table_cells += [_cell(d, n) for n in grids[g]]
    table = _read_all(table_cells, v_read, jobs, "cosim: read tables").reshape(len(used), -1)
    tables = {g: table[k] / v_read for k, g in enumerate(used)}
    n_disc = np.empty(len(distinct))
    for g in used:
        mask = distinct[:, 0] == g
        n_disc[mask] = export.invert_monotone(grids[g], tables[g], distinct[mask, 1])
    cells = [_cell(devices[int(g)], n) for g, n in zip(distinct[:, 0], n_disc, strict=True)]
    read = _read_all(cells, v_read, jobs, "cosim: verify reads")
    far = np.flatnonzero(np.abs(read / v_read / distinct[:, 1] - 1) > VERIFY_TOLERANCE)
    for k in far:  # one secant step on the table's local log-log slope
        g = int(distinct[k, 0])
        slopes = np.diff(np.log(tables[g])) / np.diff(np.log(grids[g]))
        slope = np.interp(np.log(n_disc[k]), np.log(grids[g][1:]), slopes)
        n_disc[k] *= (distinct[k, 1] * v_read / read[k]) ** (1 / slope)
    if len(far):
        again = [_cell(devices[int(distinct[k, 0])], n_disc[k]) for k in far]
        read[far] = _read_all(again, v_read, jobs, "cosim: refined reads")
    return n_disc, read, len(far)


def program_array(layer: HardwareLayer, jobs: int | None, programming: str = "verify") -> dict:
    """Give every cell of the layer's array its state (``programming``, :data:`PROGRAMMING`) and
    read it in ngspice: the read currents [2, N, M] (A) at the preset's read voltage, the cells,
    and how far their reads are from the conductances the trained model uses."""
    if programming not in PROGRAMMING:
        raise CosimError(f"programming must be one of {PROGRAMMING}, got {programming!r}")
    synapses = layer.synapses
    preset = synapses.rram_preset
    v_read = float(preset.read_voltage_V)
    cells = synapses.rram_cells()
    devices, geometry = cell_geometries(synapses, preset)
    target = cells.conductance_S.numpy()
    second = target if programming == "verify" else cells.levels.numpy().astype(float)
    keys = np.stack([geometry.ravel(), second.ravel()], axis=1)
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    refined = 0
    if programming == "verify":
        n_disc, read, refined = _write_verify(devices, distinct, v_read, jobs)
    else:
        currents = [preset.levels[int(level)].programming_current_A for level in distinct[:, 1]]
        jobs_list = [
            (i, devices[int(g)].parameters()) for i, g in zip(currents, distinct[:, 0], strict=True)
        ]
        results, failures = execution.run_many(
            _program_job, jobs_list, workers=jobs, runs_per_worker=8, progress="cosim: program"
        )
        if failures:
            raise CosimError(f"programming transients failed: {failures[0]}")
        n_disc = np.asarray(results, dtype=float)
    states = [_cell(devices[int(g)], n) for g, n in zip(distinct[:, 0], n_disc, strict=True)]
    if programming == "transient":
        read = _read_all(states, v_read, jobs, "cosim: array read")
    shape = target.shape
    conductance = read / v_read
    error = conductance[inverse].reshape(shape) / target - 1
    return {
        "v_read_V": v_read,
        "current_A": (conductance * v_read)[inverse].reshape(shape),
        "cells": states,
        "cell_index": inverse.reshape(shape),
        "weight_per_siemens": cells.weight_per_siemens,
        "summary": {
            "programming": programming,
            "cells": int(target.size),
            "distinct_cells": int(len(distinct)),
            "device_geometries": len({int(g) for g in distinct[:, 0]}),
            "read_vs_model_rel_error_max": float(np.max(np.abs(error))),
            "read_vs_model_rel_error_median": float(np.median(np.abs(error))),
            "refined_cells": refined,
            "n_disc_range": [float(n_disc.min()), float(n_disc.max())],
        },
    }
