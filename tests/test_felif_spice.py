"""FeLIF netlist through ngspice: the runner, SPICE convergence in the maximum step, plain ngspice,
and a quick end-to-end calibrate -> validate into a temporary directory. Seconds of SPICE each."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from calibration import felif as F
from calibration import spice

pytestmark = pytest.mark.spice


def _require_ngspice():
    try:
        spice.find_ngspice_library()
    except spice.NgspiceNotFoundError as error:
        pytest.skip(str(error))


def test_runner_dc_spikes_and_initial_state():
    _require_ngspice()
    trace = F.spice_run(F.dc_stimulus(2.0e-9, 0.02))
    assert 2 <= len(trace.spike_times) <= 4
    assert 4e-3 < trace.spike_times[0] < 9e-3  # same regime as the paper's neuron (~6 ms at 2 nA)
    isi = np.diff(trace.spike_times)
    assert np.allclose(isi, isi[0], rtol=0.01)  # DC: periodic after the first spike
    assert trace.v[0] == pytest.approx(0.0, abs=1e-2)
    # all domains start at -Ps (the softest ones begin to back-switch at once under the
    # depolarising field, so the first sample may already have moved a little)
    assert trace.polarization[0] == pytest.approx(-0.22, abs=2e-3)
    assert np.all(np.isfinite(trace.v)) and trace.v.max() < 2.6 and trace.v.min() > -4.1
    assert trace.polarization.max() <= 0.22 + 1e-6
    assert trace.points > 1000 and trace.wall_s > 0


def test_runner_pwl_input_matches_dc_when_constant():
    _require_ngspice()
    flat = F.Stimulus("flat_pwl_1.5nA", 0.015, times=(0.0, 0.015), currents=(1.5e-9, 1.5e-9))
    pwl = F.spice_run(flat)
    dc = F.spice_run(F.dc_stimulus(1.5e-9, 0.015))
    assert len(pwl.spike_times) == len(dc.spike_times) >= 1
    assert np.allclose(pwl.spike_times, dc.spike_times, rtol=1e-4)


@pytest.mark.parametrize(
    "stimulus",
    [
        F.dc_stimulus(2.0e-9, 0.02),
        F.spike_train(
            400.0,
            0.03,
            seed=5,
            amplitude=(0.8e-9, 1.4e-9),
            baseline=0.5e-9,
            name="train_convergence",
        ),
    ],
    ids=["dc_2nA", "spike_train"],
)
def test_halving_the_maximum_step_moves_spike_times_less_than_half_a_percent(stimulus):
    _require_ngspice()
    max_step = F.netlist_parameters()["t_max"]
    coarse = F.spice_run(stimulus, max_step=max_step)
    fine = F.spice_run(stimulus, max_step=max_step / 2)
    assert len(coarse.spike_times) == len(fine.spike_times) >= 1
    change = np.abs(coarse.spike_times - fine.spike_times) / fine.spike_times
    assert change.max() < 0.005, change
    # also against the inter-spike intervals, the stricter measure
    if len(fine.spike_times) > 1:
        isi_change = np.abs(np.diff(coarse.spike_times) - np.diff(fine.spike_times))
        assert (isi_change / np.diff(fine.spike_times)).max() < 0.005


def test_negative_drive_is_clamped_and_recovers_as_the_compact_model_does():
    """A signed synaptic sum drives the membrane negative: the netlist's clamp junction holds it
    near the compact model's -5 V floor, and after the drive turns positive both fire together
    (ngspice is the independent reference; without the clamp the membrane fell to -86 V here and
    ngspice fired 2.7x later)."""
    _require_ngspice()
    from bruno.felif import V_CLIP
    from bruno.presets import load_felif_preset

    stimulus = F.negative_step(-5e-9, 10e-3, 1.2e-9, 0.035)
    spice_trace = F.spice_run(stimulus)
    assert -V_CLIP - 0.1 < spice_trace.v.min() < -V_CLIP + 0.1
    parameters = load_felif_preset(F.PRESET).to_payload()["parameters"]
    runs, _ = F.compact_runs([stimulus], [parameters], dtype="float32")
    compact = runs[0][0]
    assert compact.v.min() == pytest.approx(-V_CLIP)
    assert len(spice_trace.spike_times) == len(compact.spike_times) >= 2
    error = np.abs(compact.spike_times - spice_trace.spike_times) / spice_trace.spike_times
    assert error.max() < 0.02, error


def test_the_clamp_is_off_in_the_positive_range():
    """Reverse biased, the clamp junction leaks 10 fA: spikes under positive drive are those of
    the netlist without it (clamp saturation current 1e-30 A) to 1e-4."""
    _require_ngspice()
    stimulus = F.dc_stimulus(0.3e-9, 0.05)
    with_clamp = F.spice_run(stimulus)
    without = F.spice_run(stimulus, overrides={"clamp_is": 1e-30})
    assert len(with_clamp.spike_times) == len(without.spike_times) >= 1
    assert np.allclose(with_clamp.spike_times, without.spike_times, rtol=1e-4)


def _element_leak(v: np.ndarray) -> np.ndarray:
    """The leak the netlist's elements give (A): its diode law and discharge path, by hand."""
    p = F.netlist_parameters()
    diode = p["leak_is"] * np.expm1(v / (p["leak_n"] * p["leak_vt"]))
    return diode + p["idsc"] * np.tanh(v / p["idsc_vsat"])


def test_the_clamped_membrane_draws_the_leak_its_elements_give():
    """The voltage clamp measures the leak the netlist's elements give (plus the clamp
    junction's 10 fA reverse current), on both sides of 0 V, up to just below threshold; the
    compact leak fitted to it puts the rheobase where those elements put it."""
    _require_ngspice()
    from calibration.felif.fit import fit_leak
    from calibration.felif.traces import membrane_leak

    v = np.asarray([-1.5, 0.5, 1.5, 2.3])
    measured = membrane_leak(v)
    assert np.allclose(measured, _element_leak(v) + 1e-14, rtol=2e-3, atol=0), measured
    with pytest.raises(F.FeLIFCalibrationError, match="held voltages need"):
        membrane_leak([0.1, 2.49])  # creep near 0 V, comparator at threshold: refused
    leak = fit_leak()
    p = F.netlist_parameters()
    assert leak.rheobase == pytest.approx(
        float(_element_leak(np.asarray([p["vthr"]]))[0]), rel=5e-3
    )
    assert leak.values["leak_thermal_voltage"] == pytest.approx(
        p["leak_n"] * p["leak_vt"], rel=0.01
    )
    assert leak.record()["rel_error_max_positive"] < 2e-3


def test_the_circuit_fires_just_above_its_rheobase_and_not_below():
    """The lowest DC current that fires is the leak at threshold (16.1 pA): 1.1x fires within
    2 s, 0.95x never does (its membrane settles below threshold)."""
    _require_ngspice()
    from calibration.felif.fit import fit_leak

    rheobase = fit_leak().rheobase
    above = F.spice_run(F.dc_stimulus(1.1 * rheobase, 2.0), record=1e-4)
    below = F.spice_run(F.dc_stimulus(0.95 * rheobase, 2.0), record=1e-4)
    assert len(above.spike_times) >= 1 and len(below.spike_times) == 0
    assert 2.0 < below.v[-1] < F.netlist_parameters()["vthr"]


def test_netlist_runs_in_plain_ngspice(tmp_path):
    if shutil.which("ngspice") is None:
        pytest.skip("ngspice executable not on PATH")
    deck = spice.netlist_path(F.NETLIST).read_text().replace("t_stop=60e-3", "t_stop=45e-3")
    path = tmp_path / "felif.cir"
    path.write_text(deck)
    out = subprocess.run(
        ["ngspice", "-b", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("t_first_spike"))
    first = float(line.split("=")[1].split()[0])
    assert 0.02 < first < 0.045  # 308 pA: tens of ms, like the paper's 41.8 ms


def test_every_device_value_is_a_param():
    params = F.netlist_parameters()
    for name in (
        "area",
        "t_fe",
        "t_int",
        "eps_fe",
        "eps_int",
        "ps",
        "ea",
        "ea_spread",
        "tau0",
        "alpha",
        "c_par",
        "leak_is",
        "leak_n",
        "idsc",
        "vthr",
        "tau_cmp",
        "tau_rst",
        "r_on",
        "v_erase",
        "v_reset",
        "t_max",
    ):
        assert name in params, name
    text = spice.netlist_path(F.NETLIST).read_text().lower()
    assert ".options reltol=" in text and "abstol=" in text


def test_quick_calibrate_then_validate_into_a_temporary_directory(tmp_path):
    _require_ngspice()
    preset = F.calibrate(quick=True, presets_dir=tmp_path)
    assert preset == tmp_path / "felif.json"
    from bruno import presets

    payload = presets.load_felif_preset(preset).to_payload()
    assert payload["provenance"]["quick"] is True
    assert payload["provenance"]["netlist_sha256"] == spice.netlist_hash(F.NETLIST)
    assert payload["fit"]["n_evaluations"] >= 1
    ok = F.validate(quick=True, presets_dir=tmp_path, reports_dir=tmp_path / "validation")
    report = json.loads((tmp_path / "validation" / "felif.json").read_text())
    for key in ("isi_rel_error_median", "isi_rel_error_max", "v_nrmse", "p_nrmse", "passed"):
        assert key in report
    assert report["passed"] is ok
    assert (tmp_path / "validation" / "felif_traces.png").stat().st_size > 1000
    assert (tmp_path / "validation" / "felif_fi.png").stat().st_size > 1000
    assert not list(tmp_path.rglob("*.tmp"))
