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


def program_array(layer: HardwareLayer, jobs: int | None) -> dict:
    """Write-verify every distinct cell of the layer's array; the read currents [2, N, M] (A) at
    the preset's read voltage and how close the verify reads came to the model's conductances."""
    synapses = layer.synapses
    preset = synapses.rram_preset
    v_read = float(preset.read_voltage_V)
    cells = synapses.rram_cells()
    devices, geometry = cell_geometries(synapses, preset)
    target = cells.conductance_S.numpy()
    keys = np.stack([geometry.ravel(), target.ravel()], axis=1)
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    used = sorted({int(g) for g in distinct[:, 0]})
    table_cells, table_grid = [], {}
    for g in used:
        d = devices[g]
        grid = np.geomspace(d.ndiscmin * 1.02, d.ndiscmax * 0.98, TABLE_POINTS)
        table_grid[g] = grid
        table_cells += [export.Cell(d.r_fil, d.l_disc, d.ndiscmin, d.ndiscmax, n) for n in grid]
    table = _read_all(table_cells, v_read, jobs, "cosim: read tables").reshape(len(used), -1)
    table_g = {g: table[k] / v_read for k, g in enumerate(used)}
    n_disc = np.empty(len(distinct))
    for g in used:
        mask = distinct[:, 0] == g
        n_disc[mask] = export.invert_monotone(table_grid[g], table_g[g], distinct[mask, 1])

    def cell_list(states):
        return [
            export.Cell(
                devices[int(g)].r_fil,
                devices[int(g)].l_disc,
                devices[int(g)].ndiscmin,
                devices[int(g)].ndiscmax,
                float(n),
            )
            for g, n in zip(distinct[:, 0], states, strict=True)
        ]

    refined = 0
    conductance = _read_all(cell_list(n_disc), v_read, jobs, "cosim: verify reads") / v_read
    error = conductance / distinct[:, 1] - 1
    far = np.abs(error) > VERIFY_TOLERANCE
    if far.any():  # one secant step on the table's local log-log slope
        refined = int(far.sum())
        for k in np.flatnonzero(far):
            g = int(distinct[k, 0])
            slope = np.interp(
                np.log(n_disc[k]),
                np.log(table_grid[g][1:]),
                np.diff(np.log(table_g[g])) / np.diff(np.log(table_grid[g])),
            )
            n_disc[k] *= (distinct[k, 1] / conductance[k]) ** (1 / slope)
        again = _read_all([cell_list(n_disc)[k] for k in np.flatnonzero(far)], v_read, jobs, None)
        conductance[far] = again / v_read
        error = conductance / distinct[:, 1] - 1
    shape = target.shape
    return {
        "v_read_V": v_read,
        "current_A": (conductance * v_read)[inverse].reshape(shape),
        "cells": [c for c in cell_list(n_disc)],
        "cell_index": inverse.reshape(shape),
        "weight_per_siemens": cells.weight_per_siemens,
        "summary": {
            "cells": int(target.size),
            "distinct_cells": int(len(distinct)),
            "device_geometries": len(used),
            "verify_rel_error_max": float(np.max(np.abs(error))),
            "refined_cells": refined,
            "n_disc_range": [float(n_disc.min()), float(n_disc.max())],
        },
    }
