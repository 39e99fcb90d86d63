"""The netlist contract: what calibration, validation and co-simulation rely on in a device's
netlists, in one place, and the check that names what a user's netlist misses.

Calibration drives and measures a netlist only through the pieces listed here; everything else
in it (the circuit, its solver options, extra ``.param`` lines) is the user's to change.

``felif.cir`` (the neuron)
    - node ``mem``: the membrane; the input current flows into it, its voltage is measured and
      the spike threshold is detected on it; for the leak it is held by a voltage source (below
      threshold, where the comparator and reset are off) and the current it draws is measured;
    - node ``ptot``: a voltage equal to the mean ferroelectric polarisation (C/m^2), measured;
    - one input source line ``Iin 0 mem ...`` (replaced by each stimulus, or by the clamp's
      voltage source; removed in co-simulation, where the gain stage drives ``mem``);
    - one ``.options ... reltol=...`` line (replaced in the solver-convergence check);
    - ``.param`` design values the compact model takes as they are: ``area`` (m^2), ``t_fe``
      (m), ``eps_fe``, ``eps_int``, ``tau0`` (s), ``e_soft`` (V/m), ``vthr`` (V, threshold),
      ``v_reset`` (V), and the run controls ``i_in`` (A), ``t_stop`` (s), ``t_max`` (s, the
      maximum time step). The leak and the switching law's exponent are measured and fitted,
      whatever elements realise them.
``rram.cir`` (1T1R programming: SET with compliance, or RESET)
    - ``.param`` ``i_prog`` (A, compliance), ``v_set``, ``v_reset`` (V), ``t_pulse`` (s),
      ``n_init`` (initial oxygen-vacancy concentration, 1e26/m^3; < 0 for the RESET state),
      and the cell geometry drawn per device: ``r_fil``, ``l_disc`` (m), ``ndiscmin``,
      ``ndiscmax``;
    - a cell instance ``xcell`` of subcircuit ``jart_vcm1b`` (its internal state node ``nd`` is
      read) and a ``print n_final i_max`` in its control block.
``rram_read.cir`` (read at a small voltage)
    - ``.param`` ``n_state``, ``v_read`` (V) and the geometry above; ``print g_read``.
``rram_cell.inc``
    - ``.subckt jart_vcm1b ae oe`` (the co-simulation instantiates cells by that name).
"""

from __future__ import annotations

import re
from pathlib import Path

from calibration import CalibrationError, spice

_GEOMETRY = ("r_fil", "l_disc", "ndiscmin", "ndiscmax")

#: Per netlist: the nodes, ``.param`` names and other lines it must have (module docstring).
CONTRACT: dict[str, dict[str, tuple[str, ...]]] = {
    "felif.cir": {
        "nodes": ("mem", "ptot"),
        "params": (
            "area",
            "t_fe",
            "eps_fe",
            "eps_int",
            "tau0",
            "e_soft",
            "vthr",
            "v_reset",
            "i_in",
            "t_stop",
            "t_max",
        ),  # fmt: skip
        "lines": (r"^\s*Iin\s+0\s+mem\b", r"^\s*\.options\b.*\breltol\b"),
    },
    "rram.cir": {
        "nodes": (),
        "params": ("i_prog", "v_set", "v_reset", "t_pulse", "n_init", *_GEOMETRY),
        "lines": (r"^\s*xcell\s.*\bjart_vcm1b\b", r"\bprint\s+n_final\s+i_max\b"),
    },
    "rram_read.cir": {
        "nodes": (),
        "params": ("n_state", "v_read", *_GEOMETRY),
        "lines": (r"^\s*xcell\s.*\bjart_vcm1b\b", r"\bprint\s+g_read\b"),
    },
    "rram_cell.inc": {
        "nodes": (),
        "params": (),
        "lines": (r"^\s*\.subckt\s+jart_vcm1b\s+ae\s+oe\b",),
    },
}

_READABLE = {
    r"^\s*Iin\s+0\s+mem\b": "an input source line 'Iin 0 mem ...'",
    r"^\s*\.options\b.*\breltol\b": "an '.options ... reltol=...' line",
    r"^\s*xcell\s.*\bjart_vcm1b\b": "a cell instance 'xcell ... jart_vcm1b ...'",
    r"\bprint\s+n_final\s+i_max\b": "'print n_final i_max' in its .control block",
    r"\bprint\s+g_read\b": "'print g_read' in its .control block",
    r"^\s*\.subckt\s+jart_vcm1b\s+ae\s+oe\b": "'.subckt jart_vcm1b ae oe'",
}


class NetlistContractError(CalibrationError, ValueError):
    """A netlist that lacks a node, ``.param`` or line calibration relies on (named)."""


def top_level_nodes(deck: str) -> set[str]:
    """The nodes that top-level element lines connect (outside ``.subckt`` blocks), lower case."""
    nodes: set[str] = set()
    depth = 0
    for raw in deck.splitlines():
        line = raw.strip().lower()
        if not line or line.startswith(("*", "+")):
            continue
        if line.startswith(".subckt"):
            depth += 1
        elif line.startswith(".ends"):
            depth -= 1
        elif depth == 0 and line[0].isalpha():
            tokens = re.split(r"[\s(),=]+", line)
            terminals = 4 if line[0] in "megf" else 2
            nodes.update(tokens[1 : 1 + terminals])
    return nodes


def missing(name: str, deck: str) -> list[str]:
    """What the deck (its text, includes inlined) lacks of netlist ``name``'s contract."""
    contract = CONTRACT[name]
    found = []
    nodes = top_level_nodes(deck)
    found += [f"node '{n}'" for n in contract["nodes"] if n not in nodes]
    params = {p.lower() for p in spice.deck_parameters(deck)}
    found += [f".param {p}" for p in contract["params"] if p not in params]
    found += [
        _READABLE[pattern]
        for pattern in contract["lines"]
        if not re.search(pattern, deck, re.IGNORECASE | re.MULTILINE)
    ]
    return found


def check(name: str, path: str | Path | None = None) -> Path:
    """The netlist ``name`` of the chosen device (or ``path``) if it meets its contract; else a
    :class:`NetlistContractError` listing every missing piece."""
    file = spice.netlist_path(path if path is not None else name)
    lacking = missing(name, spice.read_netlist(file))
    if lacking:
        raise NetlistContractError(
            f"{file}: the netlist lacks {', '.join(lacking)}; calibration relies on it "
            "(the contract: calibration/contract.py)"
        )
    return file
