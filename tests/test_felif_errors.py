"""FeLIF calibration error paths: each failure names what failed, and nothing is half-written."""

from __future__ import annotations

import json

import pytest

from calibration import felif as F
from calibration import spice


def test_stimulus_outside_the_working_range_is_refused():
    with pytest.raises(F.StimulusRangeError, match=r"dc_5nA.*outside the calibrated working range"):
        F.check_stimulus(F.dc_stimulus(5e-9, 0.01))
    with pytest.raises(F.StimulusRangeError, match="dc_-0.01nA.*outside the calibrated"):
        F.compact_runs([F.dc_stimulus(-1e-11, 0.01)], [{}])  # negative drive: PWL steps only
    negative = F.Stimulus("negative_pwl", 0.01, times=(0.0, 0.01), currents=(-30e-9, 0.0))
    with pytest.raises(F.StimulusRangeError, match=r"negative_pwl.*\[-2e-08, 2e-09\] A"):
        F.spice_run(negative)
    F.check_stimulus(F.negative_step(-F.I_NEGATIVE_MAX, 1e-3, 1e-9, 0.01))  # the edge is valid
    unsorted = F.Stimulus("unsorted_pwl", 0.01, times=(0.0, 0.005, 0.004), currents=(0, 0, 0))
    with pytest.raises(F.StimulusRangeError, match="increase strictly"):
        F.check_stimulus(unsorted)
    with pytest.raises(F.StimulusRangeError, match="duration"):
        F.check_stimulus(F.dc_stimulus(1e-9, float("nan")))


def test_missing_ngspice_names_the_library(monkeypatch):
    monkeypatch.setenv("NGSPICE_LIBRARY_PATH", "/nonexistent/libngspice.so")
    with pytest.raises(spice.NgspiceNotFoundError, match="NGSPICE_LIBRARY_PATH"):
        spice.find_ngspice_library()
    # through the worker processes calibration uses (each starts its own ngspice)
    with pytest.raises(F.FeLIFCalibrationError, match=r"dc_1nA.*NGSPICE_LIBRARY_PATH"):
        F.spice_runs([F.dc_stimulus(1e-9, 0.005)])


def test_calibrate_without_ngspice_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("NGSPICE_LIBRARY_PATH", "/nonexistent/libngspice.so")
    output = tmp_path / F.PRESET_NAME
    with pytest.raises(F.FeLIFCalibrationError, match="ngspice failed"):
        F.calibrate(quick=True, presets_dir=tmp_path)
    assert not output.exists() and not list(tmp_path.iterdir())


@pytest.mark.spice
def test_netlist_that_does_not_converge_names_deck_and_node(tmp_path):
    try:
        spice.find_ngspice_library()
    except spice.NgspiceNotFoundError as error:
        pytest.skip(str(error))
    # an algebraic loop with no solution: v = (v > 0.5 ? 0 : 1)
    deck = (
        spice.netlist_path(F.NETLIST)
        .read_text()
        .replace("\n.tran ", "\nBbad bad 0 V={V(bad) > 0.5 ? 0 : 1}\nRbad bad 0 1k\n.tran ", 1)
    )
    bad = tmp_path / "felif_broken.cir"
    bad.write_text(deck)
    with pytest.raises(
        spice.ConvergenceError, match=r"felif_broken\.cir\[dc_2nA\].*[Tt]imestep too small"
    ):
        F.spice_run(F.dc_stimulus(2e-9, 0.01), netlist=bad)
    with pytest.raises(F.FeLIFCalibrationError, match=r"dc_2nA.*ConvergenceError"):
        F.spice_runs([F.dc_stimulus(2e-9, 0.01)], netlist=bad)


def test_unknown_parameter_override_and_missing_input_line(tmp_path):
    with pytest.raises(spice.SpiceError, match="not_a_param"):
        F.spice_deck(F.dc_stimulus(1e-9, 0.01), overrides={"not_a_param": 1.0})
    shipped = spice.netlist_path(F.NETLIST).read_text()
    deck = "\n".join(ln for ln in shipped.splitlines() if not ln.lower().startswith("iin "))
    path = tmp_path / "no_input.cir"
    path.write_text(deck)
    with pytest.raises(spice.SpiceError, match="input source line"):
        F.spice_deck(F.dc_stimulus(1e-9, 0.01), netlist=path)


def test_validate_refuses_a_malformed_preset_before_running_anything(tmp_path):
    """The preset checks are bruno.presets' (tests/test_presets.py); a stage stops on them with
    the preset error and writes no report."""
    path = tmp_path / "bad" / "felif.json"
    path.parent.mkdir()
    payload = json.loads(F.PRESET.read_text())
    payload["parameters"]["area"] = -1.0
    path.write_text(json.dumps(payload))
    out = tmp_path / "validation"
    with pytest.raises(F.PresetError, match="bad/felif.json"):
        F.validate(quick=True, presets_dir=path.parent, reports_dir=out)
    assert not out.exists()
    with pytest.raises(F.PresetError, match="make calibrate"):
        F.validate(quick=True, presets_dir=tmp_path / "absent", reports_dir=out)
