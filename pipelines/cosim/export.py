"""SPICE decks of a trained network's hardware layer: FeLIF neurons from the calibrated device's
netlist, RRAM synapses from the RRAM netlist's cell, and the gain stage between them.

The circuit (one layer of ``N`` FeLIF neurons fed by ``M`` presynaptic lines):

    row i (presynaptic spike at coarse step k -> v_read on row i for that step, else 0 V)
      --[cell (i, j, +): jart_vcm1b, state N_disc]--> column j+ (virtual ground, sense source)
      --[cell (i, j, -)]-----------------------------> column j- (virtual ground, sense source)
    gain stage j: ideal current-controlled current source into membrane j,
      I_j = gain_j (I(column j+) - I(column j-))
    FeLIF neuron j: the subcircuit made of ``netlists/felif.cir`` (its input source removed).

Because each column is held at virtual ground, a cell's current depends only on its row voltage
and state; the membrane never loads the array. The circuit therefore factorises exactly into
(1) a read of every distinct cell at ``v_read`` (:func:`read_deck`) and (2) the neurons driven by
the gain stage's output, a piecewise-constant current per coarse step (:func:`neuron_deck`).
:func:`full_deck` writes the unfactorised circuit (array, sense sources, F-sources, neurons) for
``ngspice -b``; tests/test_cosim.py checks that it gives the factorised spike times.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration import spice

FELIF_NETLIST = "felif.cir"  # the chosen device's netlists (bruno.devices)
RRAM_CELL = "rram_cell.inc"
#: Rise/fall time of a row read pulse and of the gain stage's output steps (s): short against a
#: coarse step (1 ms), long against the cell's thermal time constant (1 ns).
EDGE_S = 10e-9
#: The read transient of one cell (as calibration.rram.cell.read): 20 ns at v_read.
READ_ANALYSIS = "tran 0.1n 20n 0 0.5n uic"

#: How far below -V_CLIP a membrane counts as outside the compact model's range (V): wider than
#: the spread of the netlist's clamp junction over its validated drive (netlists/felif.cir).
CLIP_MARGIN_V = 0.25
#: Conductance of the diagnostic membrane clamp (S): 30 nA of drive overshoots it by 30 mV.
CLAMP_CONDUCTANCE_S = 1e-6

_DROP = re.compile(r"^\s*(\.tran|\.meas|\.end\b|\.options|\.control|\.endc|Iin\s)", re.IGNORECASE)
_OPTIONS = re.compile(r"^\s*\.options\b.*$", re.IGNORECASE | re.MULTILINE)

#: Compact-model fields with per-neuron variability and the netlist .param each one scales
#: (a neuron drawn with factor f on a field gets f x the netlist's value of that .param).
NETLIST_FOR_FIELD = {
    "area": "area",
    "activation_field": "ea",
    "saturation_polarization": "ps",
    "ferroelectric_thickness": "t_fe",
    "interlayer_thickness": "t_int",
    "leak_current_density": "leak_is",
    "parasitic_capacitance": "c_par",
    "threshold_voltage": "vthr",
}


class DeckError(spice.SpiceError):
    """A netlist that cannot be turned into a co-simulation subcircuit."""


@dataclass(frozen=True)
class Cell:
    """One RRAM cell as the deck instantiates it: device geometry and filament state."""

    r_fil: float
    l_disc: float
    ndiscmin: float
    ndiscmax: float
    n_disc: float

    def instance(self, name: str, ae: str, oe: str) -> str:
        return (
            f"x{name} {ae} {oe} jart_vcm1b r_fil={self.r_fil:.9g} l_disc={self.l_disc:.9g} "
            f"ndiscmin={self.ndiscmin:.9g} ndiscmax={self.ndiscmax:.9g} n_init={self.n_disc:.9g}"
        )


def _cell_model() -> str:
    """The RRAM cell subcircuit, inlined: a deck runs in ngspice from any directory."""
    return spice.read_netlist(RRAM_CELL).rstrip()


def felif_options(netlist: str | Path = FELIF_NETLIST) -> list[str]:
    """The netlist's ``.options`` lines: the solver tolerances calibration simulated it with."""
    return _OPTIONS.findall(spice.read_netlist(netlist))


def felif_max_step(netlist: str | Path = FELIF_NETLIST) -> float:
    """The netlist's maximum time step (``.param t_max``), as calibration uses it."""
    value = spice.deck_parameters(spice.read_netlist(netlist)).get("t_max")
    if value is None:
        raise DeckError(f"{netlist}: no .param t_max (the maximum time step calibration uses)")
    return spice._parse_spice_number(value)


def felif_subcircuit(
    name: str, overrides: Mapping[str, float] | None = None, netlist: str | Path = FELIF_NETLIST
) -> str:
    """The FeLIF netlist as ``.subckt <name> mem``: its devices and .params, without its input
    source, analysis, measurements and options. ``overrides`` set .param values (per neuron)."""
    deck = spice.read_netlist(netlist)
    if not re.search(r"^\s*Iin\s+0\s+mem\b", deck, re.IGNORECASE | re.MULTILINE):
        raise DeckError(
            f"{netlist}: the FeLIF netlist must drive its membrane node 'mem' with one input "
            "source 'Iin 0 mem ...' (the co-simulation replaces it with the gain stage)"
        )
    if overrides:
        deck = spice.set_parameters(deck, overrides)
    body, dropped = [], False
    for k, line in enumerate(deck.splitlines()):
        if line.lstrip().startswith("+"):
            if not dropped:
                body.append(line)
            continue
        dropped = k == 0 or bool(_DROP.match(line))  # line 0 is the deck's title
        if not dropped:
            body.append(line)
    return "\n".join([f".subckt {name} mem", *body, f".ends {name}"])


def pwl(times: Sequence[float], values: Sequence[float]) -> str:
    """A PWL source argument from breakpoints (wrapped on continuation lines)."""
    points = [f"{t:.9g} {v:.9g}" for t, v in zip(times, values, strict=True)]
    chunks = [" ".join(points[k : k + 6]) for k in range(0, len(points), 6)]
    return "pwl(" + "\n+ ".join(chunks) + ")"


def step_waveform(levels: np.ndarray, step_s: float, edge_s: float = EDGE_S) -> tuple[list, list]:
    """Breakpoints of a waveform holding ``levels[k]`` over coarse step k (edges of ``edge_s``
    at each change), starting from 0 at t = 0."""
    times, values = [0.0], [0.0]
    current = 0.0
    for k, level in enumerate(np.asarray(levels, dtype=float)):
        if level != current:
            start = k * step_s
            if start > times[-1]:
                times.append(start)
                values.append(current)
            times.append(start + edge_s)
            values.append(float(level))
            current = float(level)
    end = len(levels) * step_s
    if end > times[-1]:
        times.append(end)
        values.append(current)
    return times, values


def read_deck(cells: Sequence[Cell], v_read: float) -> str:
    """Every cell alone on its own row at ``v_read`` in the read polarity (oe positive, ae at
    0 V: the column's virtual ground), as calibration reads one; current of cell k: ``-i(vr<k>)``.
    """
    lines = ["* RRAM array read: every distinct cell at the read voltage", _cell_model()]
    lines.append(".options reltol=1e-5 abstol=1e-14 vntol=1e-8 itl4=200")
    for k, cell in enumerate(cells):
        lines.append(f"vr{k} r{k} 0 pwl(0 0 1e-9 {v_read:.9g} 20e-9 {v_read:.9g})")
        lines.append(cell.instance(f"c{k}", "0", f"r{k}"))
    lines.append(".end")
    return "\n".join(lines) + "\n"


def read_currents(cells: Sequence[Cell], v_read: float, name: str = "array read") -> np.ndarray:
    """Read current (A) of every cell at ``v_read`` in this process's ngspice."""
    result = spice.simulate(read_deck(cells, v_read), READ_ANALYSIS, name=name)
    currents = np.array([-float(result[f"vr{k}#branch"][-1]) for k in range(len(cells))])
    if not np.all(np.isfinite(currents) & (currents > 0)):
        raise spice.ConvergenceError(f"{name}: a cell read gave a non-positive current")
    return currents


@dataclass(frozen=True)
class NeuronDeck:
    """A neuron deck and what it needs to be read back."""

    text: str
    neurons: int
    duration_s: float
    max_step_s: float
    threshold_V: tuple[float, ...]


def _subcircuits(neuron_overrides: Sequence[Mapping[str, float]]) -> tuple[list[str], list[str]]:
    """One subcircuit per distinct set of per-neuron overrides; the name of each neuron's."""
    names, texts, seen = [], [], {}
    for overrides in neuron_overrides:
        key = tuple(sorted(overrides.items()))
        if key not in seen:
            seen[key] = f"felif{len(seen)}"
            texts.append(felif_subcircuit(seen[key], dict(overrides)))
        names.append(seen[key])
    return texts, names


def _thresholds(neuron_overrides: Sequence[Mapping[str, float]]) -> tuple[float, ...]:
    nominal = spice._parse_spice_number(
        spice.deck_parameters(spice.read_netlist(FELIF_NETLIST))["vthr"]
    )
    return tuple(float(o.get("vthr", nominal)) for o in neuron_overrides)


def neuron_deck(
    drive_A: np.ndarray,
    step_s: float,
    neuron_overrides: Sequence[Mapping[str, float]],
    header: str = "",
    clamp_V: float | None = None,
) -> NeuronDeck:
    """FeLIF neurons (the calibrated netlist) driven by the gain stage's output currents
    ``drive_A`` [steps, neurons], held over each coarse step of ``step_s``.

    ``clamp_V`` (a diagnostic, not part of the device): a clamp of conductance
    :data:`CLAMP_CONDUCTANCE_S` that holds each membrane above ``-clamp_V``, as the compact
    model's clip does."""
    steps, count = drive_A.shape
    if len(neuron_overrides) != count:
        raise DeckError(f"{count} neurons but {len(neuron_overrides)} parameter sets")
    subcircuits, names = _subcircuits(neuron_overrides)
    lines = ["* FeLIF layer driven by the gain stage (co-simulation)", *_comment(header)]
    lines += felif_options()
    lines += subcircuits
    for j in range(count):
        times, values = step_waveform(drive_A[:, j], step_s)
        lines.append(f"ig{j} 0 mem{j} {pwl(times, values)}")
        lines.append(f"xn{j} mem{j} {names[j]}")
        if clamp_V is not None:
            lines.append(
                f"bcl{j} 0 mem{j} I={{{CLAMP_CONDUCTANCE_S:g}*max({-clamp_V:g}-V(mem{j}),0)}}"
            )
    return _finished(lines, count, steps * step_s, neuron_overrides)


def full_deck(
    presynaptic: np.ndarray,
    step_s: float,
    cells_pos: Sequence[Sequence[Cell]],
    cells_neg: Sequence[Sequence[Cell]],
    v_read: float,
    gains: Sequence[float],
    neuron_overrides: Sequence[Mapping[str, float]],
    header: str = "",
    bias_A: Sequence[float] | np.ndarray | None = None,
) -> NeuronDeck:
    """The whole layer as one circuit: presynaptic spikes ``[steps, M]`` as read pulses on the
    rows, cells ``cells_pos[j][i]`` / ``cells_neg[j][i]`` into virtual-ground columns, F-source
    gain stages into the FeLIF membranes, and DC bias sources ``bias_A`` where nonzero."""
    steps, rows = presynaptic.shape
    count = len(gains)
    subcircuits, names = _subcircuits(neuron_overrides)
    lines = ["* FeLIF layer with its RRAM synapse array (co-simulation)", *_comment(header)]
    lines += felif_options()
    lines.append(_cell_model())
    lines += subcircuits
    for i in range(rows):
        times, values = step_waveform(presynaptic[:, i] * v_read, step_s)
        lines.append(f"vrow{i} row{i} 0 {pwl(times, values)}")
    for j in range(count):
        for sign, cells in (("p", cells_pos[j]), ("n", cells_neg[j])):
            lines.append(f"vs{sign}{j} col{sign}{j} 0 0")
            for i, cell in enumerate(cells):
                lines.append(cell.instance(f"c{sign}{j}_{i}", f"col{sign}{j}", f"row{i}"))
        # the sense sources carry the cell currents from the column node to ground
        lines.append(f"fgp{j} 0 mem{j} vsp{j} {gains[j]:.9g}")
        lines.append(f"fgn{j} mem{j} 0 vsn{j} {gains[j]:.9g}")
        if bias_A is not None and bias_A[j] != 0:
            lines.append(f"ib{j} 0 mem{j} DC {bias_A[j]:.9g}")
        lines.append(f"xn{j} mem{j} {names[j]}")
    return _finished(lines, count, steps * step_s, neuron_overrides)


def _finished(
    lines: list[str], count: int, duration_s: float, neuron_overrides: Sequence[Mapping]
) -> NeuronDeck:
    """A deck's lines closed with the saved membranes and ``.end``, as a :class:`NeuronDeck`."""
    lines = [*lines, ".save " + " ".join(f"v(mem{j})" for j in range(count)), ".end"]
    text = "\n".join(lines) + "\n"
    return NeuronDeck(text, count, duration_s, felif_max_step(), _thresholds(neuron_overrides))


def _comment(text: str) -> list[str]:
    return [f"* {line}" if line else "*" for line in text.splitlines()]


def spike_times(deck: NeuronDeck, name: str = "neuron deck") -> dict:
    """Simulate a neuron deck in this process's ngspice with the netlist's maximum step.

    Returns ``spikes`` (upward threshold crossings of every membrane, s), ``v_min_V`` (each
    membrane's lowest voltage), ``below_clip_s`` (time each spent more than
    :data:`CLIP_MARGIN_V` below the compact model's -V_CLIP floor, i.e. outside the spread of
    the netlist's clamp junction) and ``points`` (time points).
    """
    from bruno.felif import V_CLIP
    from calibration.felif.traces import upward_crossings

    analysis = f"tran 1u {deck.duration_s:.9g} 0 {deck.max_step_s:.6g} uic"
    result = spice.simulate(deck.text, analysis, name=name)
    t = result["time"]
    widths = np.diff(t)
    out: dict = {"spikes": [], "v_min_V": [], "below_clip_s": [], "points": int(t.size)}
    for j in range(deck.neurons):
        v = result[f"mem{j}"]
        if not np.all(np.isfinite(v)):
            raise spice.ConvergenceError(f"{name}: NaN/Inf in membrane {j}")
        out["spikes"].append([float(x) for x in upward_crossings(t, v, deck.threshold_V[j])])
        out["v_min_V"].append(float(v.min()))
        out["below_clip_s"].append(float(np.sum(widths[v[1:] < -V_CLIP - CLIP_MARGIN_V])))
    return out


def membrane_trace(deck: NeuronDeck, neuron: int = 0, name: str = "trace") -> tuple:
    """One membrane of a neuron deck as ngspice computes it: (time s, v V)."""
    analysis = f"tran 1u {deck.duration_s:.9g} 0 {deck.max_step_s:.6g} uic"
    result = spice.simulate(deck.text, analysis, name=name)
    return np.asarray(result["time"]), np.asarray(result[f"mem{neuron}"])


def invert_monotone(grid_x: np.ndarray, grid_y: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """x with y(x) = target on a monotone increasing table (log-log PCHIP); targets outside the
    table are an error naming the range."""
    from scipy.interpolate import PchipInterpolator

    ly, lx = np.log(grid_y), np.log(grid_x)
    if not np.all(np.diff(ly) > 0):
        raise DeckError("the read conductance is not increasing in N_disc on the table")
    lt = np.log(np.asarray(targets, dtype=float))
    if lt.min() < ly[0] - 1e-12 or lt.max() > ly[-1] + 1e-12:
        raise DeckError(
            f"target conductances {math.exp(lt.min()):.4g}..{math.exp(lt.max()):.4g} S lie "
            f"outside what the cell reaches ({grid_y[0]:.4g}..{grid_y[-1]:.4g} S)"
        )
    return np.exp(PchipInterpolator(ly, lx)(np.clip(lt, ly[0], ly[-1])))
