"""The ngspice toolchain: a netlist file through PySpice's shared ngspice, and its error paths."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from calibration import spice

pytestmark = pytest.mark.spice


def test_rc_step_response_matches_analytic_solution():
    deck = spice.read_netlist("rc.cir")
    params = spice.deck_parameters(deck)
    assert params == {"r_series": "1k", "c_load": "1u", "v_step": "1"}
    result = spice.simulate(deck, name="rc.cir")
    time, v_out = result["time"], result["out"]
    assert time[-1] == pytest.approx(5e-3)
    tau = 1e3 * 1e-6
    expected = 1.0 - np.exp(-np.clip(time - 1e-9, 0.0, None) / tau)
    assert np.max(np.abs(v_out - expected)) < 1e-5


def test_parameter_override_changes_the_time_constant():
    deck = spice.set_parameters(spice.read_netlist("rc.cir"), {"r_series": 2e3, "v_step": 0.5})
    result = spice.simulate(deck, "tran 1u 3m 0 1u uic", name="rc.cir")
    time, v_out = result["time"], result["out"]
    expected = 0.5 * (1.0 - np.exp(-np.clip(time - 1e-9, 0.0, None) / 2e-3))
    assert time[-1] == pytest.approx(3e-3)
    assert np.max(np.abs(v_out - expected)) < 1e-5


def test_unknown_parameter_is_named():
    with pytest.raises(spice.SpiceError, match="bogus"):
        spice.set_parameters(spice.read_netlist("rc.cir"), {"bogus": 1.0})


def test_non_finite_parameter_is_refused():
    with pytest.raises(spice.SpiceError, match="not finite"):
        spice.set_parameters(spice.read_netlist("rc.cir"), {"r_series": float("nan")})


def test_missing_netlist_is_named(tmp_path):
    with pytest.raises(spice.SpiceError, match="does-not-exist.cir"):
        spice.read_netlist(tmp_path / "does-not-exist.cir")


def test_run_that_cannot_converge_raises_convergence_error():
    deck = "* two sources fight\nV1 a 0 1\nV2 a 0 2\nR1 a 0 1k\n.tran 1u 1m\n.end\n"
    with pytest.raises(spice.ConvergenceError, match="fighting-sources"):
        spice.simulate(deck, name="fighting-sources")
    # The instance stays usable after a failed run.
    result = spice.simulate(spice.read_netlist("rc.cir"), name="rc.cir")
    assert result["time"][-1] == pytest.approx(5e-3)


def test_missing_ngspice_library_gives_install_instructions():
    code = (
        "from calibration import spice\n"
        "try:\n"
        "    spice.simulate(spice.read_netlist('rc.cir'))\n"
        "except spice.NgspiceNotFoundError as e:\n"
        "    print('CLEAR:', e)\n"
    )
    env = dict(os.environ, NGSPICE_LIBRARY_PATH="/nonexistent/libngspice.so")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert "CLEAR:" in out.stdout, out.stderr
    assert "apt-get install -y ngspice libngspice0" in out.stdout
