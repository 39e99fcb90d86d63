"""RRAM synapse calibration: bad input, fits, failure reporting (fast; a few real ngspice runs)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from bruno import devices, execution
from calibration import rram, spice

# ------------------------------------------------------------------ bad input (no SPICE)


@pytest.mark.parametrize("current", [1e-6, 5e-3, -1e-4, float("nan"), float("inf"), "abc", None])
def test_programming_current_outside_the_range_is_a_clear_error(current):
    with pytest.raises(rram.RRAMError, match="programming current"):
        rram.check_programming_current(current)


def test_out_of_range_current_is_refused_before_any_simulation(monkeypatch):
    def fail(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("simulate called")

    monkeypatch.setattr(spice, "simulate", fail)
    with pytest.raises(rram.RRAMError, match=r"useful range \[2e-05, 0.0004\] A"):
        rram.program(1e-3)
    with pytest.raises(rram.RRAMError, match="outside the cell's useful range"):
        rram.sweep([100e-6, 1e-5], {"nominal": rram.Device()})


def test_bad_device_parameters_are_named():
    with pytest.raises(rram.RRAMError, match="ndiscmin"):
        rram.check_device(rram.Device(ndiscmin=30.0))
    with pytest.raises(rram.RRAMError, match="r_fil"):
        rram.check_device(rram.Device(r_fil=-1.0))
    with pytest.raises(rram.RRAMError, match="N_disc"):
        rram.read(0.0)


def test_set_that_never_converges_raises_with_every_attempt(monkeypatch):
    calls = []

    def no_convergence(deck, analysis=None, *, name="deck", expect_stop_time=None):
        calls.append(analysis)
        raise spice.ConvergenceError(f"{name}: Timestep too small")

    monkeypatch.setattr(spice, "simulate", no_convergence)
    with pytest.raises(spice.ConvergenceError, match="did not converge with any") as info:
        rram.program(100e-6)
    assert len(calls) == len(rram.MAX_STEPS)
    assert "i_prog=0.0001" in str(info.value) and "Timestep too small" in str(info.value)


# ------------------------------------------------------------------ fits (no SPICE)


def test_conductance_law_fit_recovers_parameters_with_uncertainties():
    # a filament that saturates within the range (as the narrow-filament device's does)
    truth = {"r_s": 1450.0, "k": 6.4e-4, "p": 1.74, "q": 0.02, "g_max": 3.9e-3, "m": 5.7}
    currents = np.asarray(rram.FIT_CURRENTS)
    law = rram.fit_conductance_law(currents, rram.conductance_law(currents, **truth))
    for name, value in truth.items():
        assert law["parameters"][name] == pytest.approx(value, rel=1e-3, abs=1e-4)
        assert law["uncertainties"][name] is not None
    assert law["fit_rel_error_max"] < 1e-6 and "Fit Statistics" in law["report"]
    levels = rram.level_currents(rram.law_from_payload(law))
    g = rram.conductance_law(np.asarray(levels), **truth)
    assert len(levels) == 8 and np.all(np.diff(levels) > 0)
    assert np.allclose(np.diff(g), np.diff(g)[0], rtol=1e-6)  # equally spaced conductances


def test_law_without_saturation_is_the_bent_power_of_old_presets():
    old = {"r_s": 1500.0, "k": 3e-4, "p": 1.6, "q": -0.1}  # a 4-parameter law (presets <= 1.0)
    i = np.geomspace(20e-6, 400e-6, 9)
    x = i / 100e-6
    bent_power = 1 / (old["r_s"] + 1 / (old["k"] * x ** (old["p"] + old["q"] * np.log(x))))
    assert np.allclose(rram.law_from_payload({"parameters": old})(i), bent_power, rtol=1e-12)


# ------------------------------------------------------------------ the law's range (no SPICE)


def test_the_law_is_fitted_over_every_current_the_levels_and_validation_use():
    """Issue 15: the law extrapolated below and above its fit (30-350 uA) to the levels' 400 uA and
    to held-out 20/25/380/400 uA (narrow filament: 5.5 % / 3.1 %). Now the fit spans the cell's
    useful range, ends included, and every held-out current lies strictly between two fit points."""
    fit = np.asarray(rram.FIT_CURRENTS)
    assert fit[0] == rram.I_PROG_MIN and fit[-1] == pytest.approx(rram.I_PROG_MAX, rel=1e-12)
    for current in rram.HELD_OUT_CURRENTS:
        k = np.searchsorted(fit, current)
        assert 0 < k < fit.size and fit[k - 1] < current < fit[k]
    rram.check_within_fit(rram.LEVEL_CURRENT_RANGE, fit, "the level currents")
    rram.check_within_fit(rram.LEVEL_CURRENT_RANGE, fit[::2], "the level currents")  # --quick
    with pytest.raises(rram.RRAMError, match=r"20, 400 uA lie outside .* \[30, 350\] uA"):
        rram.check_within_fit([20e-6, 100e-6, 400e-6], [30e-6, 100e-6, 350e-6], "currents")
    assert rram.fitted_range({"fit_currents_A": [3e-5, 1e-4, 3.5e-4]}) == (3e-5, 3.5e-4)


def test_validation_fails_a_law_asked_to_extrapolate():
    from calibration.rram import validate_stage

    law = {"parameters": {"r_s": 1400.0, "k": 3e-4, "p": 1.5, "q": 0.0}}
    law["fit_currents_A"] = [30e-6, 350e-6]  # the old fit range
    rows = [{"read_voltages_V": [0.2], "g_reads_S": [1e-4]}] * 3
    out = validate_stage._held_out_rows([22e-6, 100e-6, 380e-6], rows, 0.2, law)
    assert [r["position"] for r in out] == ["beyond", "between", "beyond"]


NARROW_PRESET = devices.DEVICES_ROOT / "large_fecap_narrow_filament" / "presets" / "rram.json"


@pytest.mark.parametrize("path", [rram.PRESET_PATH, NARROW_PRESET], ids=["shipped", "narrow"])
def test_committed_presets_never_extrapolate_their_law(path):
    from bruno.presets import load_rram_preset

    preset = load_rram_preset(path)
    assert preset.reads
    for read in preset.reads:
        lo, hi = rram.fitted_range(read.conductance_law)
        assert (lo, hi) == pytest.approx((rram.I_PROG_MIN, rram.I_PROG_MAX), rel=1e-9)
        assert all(lo <= lv.programming_current_A <= hi for lv in read.levels)
        assert read.conductance_law["fit_rel_error_max"] <= 0.01


def test_law_fit_refuses_an_incomplete_sweep():
    with pytest.raises(rram.RRAMError, match="not finite"):
        rram.fit_conductance_law(np.geomspace(30e-6, 350e-6, 6), [1e-4] * 5 + [float("nan")])


def test_distribution_fit_and_separation():
    rng = np.random.default_rng(0)
    fit = rram.fit_distribution(rng.normal(2e-4, 1e-5, 400))
    assert fit["mu_S"] == pytest.approx(2e-4, rel=0.01)
    assert fit["sigma_S"] == pytest.approx(1e-5, rel=0.1)
    assert fit["mu_stderr_S"] is not None
    assert rram.separations([1.0, 2.0, 2.1], [0.1, 0.2, 0.05]) == pytest.approx([5.0, 0.5])
    # a stuck-high tail in the lower state: robust separation stays large, the tail is counted
    lower = np.r_[rng.normal(1.0, 0.05, 90), np.full(10, 2.0)]
    upper = rng.normal(2.0, 0.05, 100)
    robust = rram.robust_separations([lower, upper])[0]
    assert robust["separation"] > 10
    assert robust["lower_above_midpoint"] == pytest.approx(0.10)
    assert robust["upper_below_midpoint"] == 0.0


def test_device_sampling_stays_within_the_bounds():
    devices = rram.sample_devices(300, seed=1)
    for name, (lo, hi) in rram.bounds().items():
        values = np.array([getattr(d, name) for d in devices])
        assert values.min() >= lo and values.max() <= hi
    assert rram.sample_devices(5, seed=3) == rram.sample_devices(5, seed=3)


# ------------------------------------------------------------------ failure reporting


def crash_or_echo(job):
    """Worker function for the crash test: kills its worker process on the marked job."""
    if job.get("crash"):
        os._exit(13)
    return {"g_read_S": float(job["i_prog"]), "retries": 0}


def test_worker_crash_is_reported_not_dropped():
    jobs = [{"i_prog": 1e-4 * (k + 1)} for k in range(4)]
    jobs[2]["crash"] = True
    results, failures = rram.run_jobs(jobs, function=crash_or_echo, workers=2, runs_per_worker=2)
    assert len(results) == len(jobs)
    failed = {f.index for f in failures}
    assert 2 in failed
    assert any("worker crashed" in f.error for f in failures if f.index == 2)
    for k, result in enumerate(results):  # every job is either a result or a reported failure
        assert (result is None) == (k in failed)


def test_monte_carlo_surfaces_lost_samples(monkeypatch):
    def fake_run_jobs(jobs, **kwargs):
        results = [{"g_read_S": 1e-4 * (1 + j["state"]), "retries": 0} for j in jobs]
        results[1] = None
        failure = execution.RunFailure(1, jobs[1], "ConvergenceError: Timestep too small")
        return results, [failure]

    monkeypatch.setattr(rram.cell, "run_jobs", fake_run_jobs)
    per_state, failures, raw = rram.monte_carlo([50e-6, 200e-6], 3, seed=0)
    assert [len(s) for s in per_state] == [2, 3]
    assert failures == [
        {
            "state": 0,
            "device_index": 1,
            "programming_current_A": 50e-6,
            "device": failures[0]["device"],
            "error": "ConvergenceError: Timestep too small",
        }
    ]
    assert raw[0][1] is None


# ------------------------------------------------------------------ real ngspice (fast)


@pytest.mark.spice
def test_set_with_compliance_then_read_grows_with_the_programming_current():
    low = rram.program_and_read({"i_prog": 40e-6})
    high = rram.program_and_read({"i_prog": 200e-6})
    assert 0.01 < low["n_disc"] < high["n_disc"] < 20
    assert 20e-6 < low["g_read_S"] < high["g_read_S"] < 1e-3
    # the access transistor limits the current to the programming current (level-1, lambda = 0)
    assert high["i_peak_A"] == pytest.approx(200e-6, rel=0.05)


@pytest.mark.spice
def test_reset_lowers_the_state():
    deck = spice.set_parameters(
        rram.cell._deck(rram.NETLIST),
        {"v_set": 0.0, "v_reset": 1.6, "n_init": 2.0, "t_pulse": 200e-9},
    )
    result = spice.simulate(deck, "tran 0.1n 260n 0 1n uic", name="rram RESET")
    assert result["xcell.nd"][-1] < 0.5 * 2.0


@pytest.mark.spice
def test_small_monte_carlo_runs_in_worker_processes():
    per_state, failures, _ = rram.monte_carlo([60e-6, 250e-6], 2, seed=5, workers=2)
    assert failures == []
    assert all(len(s) == 2 for s in per_state)
    assert max(per_state[0]) < min(per_state[1])


@pytest.mark.spice
@pytest.mark.skipif(shutil.which("ngspice") is None, reason="ngspice executable not installed")
@pytest.mark.parametrize("deck, key", [("rram.cir", "n_final"), ("rram_read.cir", "g_read")])
def test_decks_run_in_plain_ngspice(deck, key):
    out = subprocess.run(
        ["ngspice", "-b", deck],
        cwd=devices.SHIPPED_NETLISTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.strip().startswith(key)]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    assert float(line[0].split("=")[1]) > 0


# ------------------------------------------------------------------ committed preset


def test_committed_preset_is_complete_and_loads():
    path = rram.PRESET_PATH
    if not path.exists():
        pytest.fail("bruno/presets/rram.json is missing (make calibrate writes it)")
    payload = json.loads(path.read_text())
    assert payload["schema"] == "bruno.rram-preset/1.1" and payload["device"] == "rram"
    assert payload["read_voltage_V"] == rram.READ_VOLTAGE
    assert payload["read_disturb"]["supported_V"] == [r["read_voltage_V"] for r in payload["reads"]]
    levels = payload["levels"]
    assert len(levels) == 8
    means = [lv["conductance_mean_S"] for lv in levels]
    assert all(b > a for a, b in zip(means, means[1:], strict=False))
    lost = payload["monte_carlo"]["failures"]
    n = payload["monte_carlo"]["devices_per_state"]
    assert n >= 100
    for k, level in enumerate(levels):
        samples = level["conductance_samples_S"]
        assert len(samples) == n - sum(1 for f in lost if f["state"] == k)
        assert math.isclose(np.mean(samples), level["conductance_mean_S"], rel_tol=1e-9)
    assert len(payload["provenance"]["netlist_sha256"]) == 64
    from bruno.presets import load_rram_preset

    preset = load_rram_preset(path)
    assert len(preset.levels) == 8


# ------------------------------------------------------------------ read voltages


def test_reads_that_move_the_state_are_named_disturbing():
    rows = [
        ("a", 50e-6, {"read_voltages_V": [0.1, 0.2], "state_drifts_rel": [1e-12, 2e-9]}),
        ("b", 90e-6, {"read_voltages_V": [0.2, 0.1], "state_drifts_rel": [-3e-8, 1e-13]}),
        ("c", 60e-6, None),  # a lost run
    ]
    low, high = rram.read_disturb(rows, [0.1, 0.2])
    assert not low["disturbs"] and low["state_drift_per_read_rel_max"] == 1e-12
    assert high["disturbs"] and (high["worst_device"], high["worst_programming_current_A"]) == (
        "b",
        90e-6,
    )
    assert high["reads_to_max_drift"] == pytest.approx(rram.READ_DISTURB_MAX_REL / 3e-8)


@pytest.mark.spice
def test_a_read_stays_a_read_up_to_the_default_voltage_and_disturbs_above():
    """The hottest corner's middle state (the worst of the sweep): one read at 0.2 V moves its
    state by ~5e-9 (1e6 reads: 0.5 %), at 0.3 V by ~1.5e-4; the preset drops 0.25 and 0.3 V."""
    corner = rram.corner_devices()["r_min,l_min"]
    row = rram.program_and_read(
        {"i_prog": 90e-6, "device": corner.parameters(), "read_voltages_V": [0.2, 0.3]}
    )
    low, high = rram.read_disturb([("corner", 90e-6, row)], [0.2, 0.3])
    assert not low["disturbs"] and high["disturbs"]
    assert row["g_reads_S"][0] == row["g_read_S"]  # the default read is the same read


def _committed():
    from bruno.presets import load_rram_preset

    return load_rram_preset(rram.PRESET_PATH)


def test_at_the_default_read_voltage_the_preset_is_its_levels_exactly():
    preset = _committed()
    at = preset.at_read_voltage(rram.READ_VOLTAGE)
    assert preset.read_voltage_V == at.read_voltage_V == rram.READ_VOLTAGE
    assert at.levels == preset.levels and at.means == preset.means and at.stds == preset.stds
    assert at.conductance_law == preset.conductance_law
    default = [r for r in preset.reads if r.read_voltage_V == rram.READ_VOLTAGE]
    assert [lv.conductance_samples_S for lv in default[0].levels] == [
        lv.conductance_samples_S for lv in preset.levels
    ]
    assert preset.read_voltages_V == tuple(sorted(preset.read_voltages_V))
    assert {0.05, 0.1, 0.15, 0.2} <= set(preset.read_voltages_V)


def test_between_calibrated_voltages_every_device_is_interpolated_linearly():
    preset = _committed()
    a, b = preset.at_read_voltage(0.1), preset.at_read_voltage(0.15)
    mid = preset.at_read_voltage(0.125)
    assert mid.read_voltage_V == 0.125 and mid.reads == preset.reads
    for la, lb, lm in zip(a.levels, b.levels, mid.levels, strict=True):
        expected = 0.5 * (np.asarray(la.conductance_samples_S) + lb.conductance_samples_S)
        assert np.allclose(lm.conductance_samples_S, expected, rtol=1e-12)
        assert lm.conductance_mean_S == pytest.approx(np.mean(expected), rel=1e-12)
        assert lm.conductance_std_S == pytest.approx(np.std(expected, ddof=1), rel=1e-9)
    law = rram.law_from_payload(mid.conductance_law)
    halfway = 0.5 * (
        rram.law_from_payload(a.conductance_law)(1e-4)
        + rram.law_from_payload(b.conductance_law)(1e-4)
    )
    assert law(1e-4) == pytest.approx(halfway, rel=1e-12)


@pytest.mark.parametrize("voltage", [0.3, 0.25, 0.01, -0.1, float("nan"), "0.1"])
def test_an_unsupported_read_voltage_is_a_clear_error(voltage):
    from bruno.presets import PresetError

    with pytest.raises(PresetError, match=r"outside the supported range \[0.05, 0.2\] V"):
        _committed().at_read_voltage(voltage)


@pytest.mark.spice
def test_at_0_1_v_the_preset_matches_a_fresh_ngspice_read_of_the_lowest_state():
    """The nominal cell programmed to state 0 and read in ngspice at 0.1 V (and midway to 0.15 V)
    against the preset read there; at 0.2 V the same state reads ~3.5 % higher, which the 0.2 V
    levels would have got wrong."""
    preset = _committed()
    current = preset.levels[0].programming_current_A
    row = rram.program_and_read({"i_prog": current, "device": {}, "read_voltages_V": [0.1, 0.125]})
    for k, v in enumerate((0.1, 0.125)):
        at = preset.at_read_voltage(v)
        law = float(rram.law_from_payload(at.conductance_law)(current))
        assert law == pytest.approx(row["g_reads_S"][k], rel=0.03)
        assert at.levels[0].details.get("nominal_device_conductance_S", row["g_reads_S"][k]) == (
            pytest.approx(row["g_reads_S"][k], rel=1e-9)
        )
    assert row["g_read_S"] / row["g_reads_S"][0] - 1 > 0.02  # the non-linear read I-V


def test_a_schema_1_0_preset_reads_at_its_one_voltage_and_names_the_fix(tmp_path):
    from bruno.presets import PresetError, load_rram_preset

    payload = json.loads(rram.PRESET_PATH.read_text())
    payload["schema"] = "bruno.rram-preset/1"
    del payload["reads"]
    path = tmp_path / "rram.json"
    path.write_text(json.dumps(payload))
    old = load_rram_preset(path)
    assert old.levels == _committed().levels and old.reads == ()
    assert old.read_voltages_V == (0.2,) and old.at_read_voltage(0.2) is old
    with pytest.raises(PresetError, match=r"levels at 0.2 V only .*schema 1.0.*recalibrate"):
        old.at_read_voltage(0.1)
    assert json.loads(json.dumps(old.to_payload()))["schema"] == "bruno.rram-preset/1.1"


def test_per_read_voltage_levels_must_be_the_same_states_and_devices(tmp_path):
    from bruno.presets import PresetError, load_rram_preset

    payload = json.loads(rram.PRESET_PATH.read_text())
    path = tmp_path / "rram.json"
    broken = json.loads(json.dumps(payload))
    broken["reads"][0]["levels"][3]["conductance_samples_S"].pop()
    path.write_text(json.dumps(broken))
    with pytest.raises(PresetError, match=r"reads\[0\] \(0.05 V\) must hold the same states"):
        load_rram_preset(path)
    broken = json.loads(json.dumps(payload))
    broken["reads"] = broken["reads"][::-1]
    path.write_text(json.dumps(broken))
    with pytest.raises(PresetError, match="positive and increasing"):
        load_rram_preset(path)
