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
    truth = {"r_s": 1500.0, "k": 3e-4, "p": 1.6, "q": -0.1}
    currents = np.geomspace(30e-6, 350e-6, 12)
    law = rram.fit_conductance_law(currents, rram.conductance_law(currents, **truth))
    for name, value in truth.items():
        assert law["parameters"][name] == pytest.approx(value, rel=1e-3, abs=1e-4)
        assert law["uncertainties"][name] is not None
    assert law["fit_rel_error_max"] < 1e-6 and "Fit Statistics" in law["report"]
    levels = rram.level_currents(rram.law_from_payload(law))
    g = rram.conductance_law(np.asarray(levels), **truth)
    assert len(levels) == 8 and np.all(np.diff(levels) > 0)
    assert np.allclose(np.diff(g), np.diff(g)[0], rtol=1e-6)  # equally spaced conductances


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
    assert payload["schema"] == "bruno.rram-preset/1" and payload["device"] == "rram"
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
