"""FeLIF calibration fit (no SPICE): recover known parameters from a synthetic compact-model run,
stimulus construction and the comparison helpers."""

from __future__ import annotations

import numpy as np
import pytest

from calibration import felif as F
from calibration import spice

# Parameters the synthetic stimuli determine. C_par is not among them: the compact step conserves
# charge, so an interval needs Q = C_tot dV + 2 A Ps and C_par trades off against Ps (C_par within
# ~10% of the truth fits these targets to chi-square < 0.01); the SPICE calibration reports that
# spread under fit.start_spread in the preset.
TRUE = {
    "activation_field": 1.20e9,
    "saturation_polarization": 0.205,
    "interlayer_thickness": 1.6e-9,
}
FIELDS = tuple(TRUE)


def _synthetic_targets():
    stimuli = [
        F.dc_stimulus(1.2e-9, 0.025),
        F.dc_stimulus(2.0e-9, 0.018),
        F.pulse_train(1.8e-9, 1e-3, 1.5e-3, 0.025, baseline=0.1e-9, name="pulses_synthetic"),
    ]
    fixed = F.design_parameters()
    runs, _ = F.compact_runs(stimuli, [{**fixed, **TRUE}])
    return [F.Target(s, t) for s, t in zip(stimuli, runs[0], strict=True)], fixed


def test_fit_recovers_known_parameters_from_a_synthetic_compact_run():
    targets, fixed = _synthetic_targets()
    assert all(len(t.trace.spike_times) >= 2 for t in targets)
    start = {
        "activation_field": 1.30e9,
        "saturation_polarization": 0.23,
        "interlayer_thickness": 1.375e-9,
    }
    result, problem = F.fit(targets, start=start, fields=FIELDS, fixed=fixed, max_nfev=25)
    values, errors, correlations = F.fitted_si(result, problem)
    for name, true in TRUE.items():
        assert values[name] == pytest.approx(true, rel=0.01), (name, values[name], true)
        # the synthetic objective reaches ~0 on a 1 us spike-time grid, where lmfit may stop on
        # its tolerance without a covariance: then every error is None, never a bogus number
        if result.errorbars:
            assert errors[name] is not None and errors[name] > 0
        else:
            assert errors[name] is None
    assert set(correlations["activation_field"]) <= set(FIELDS)
    # one batched compact run per evaluated point: the Jacobian comes with it
    assert problem.n_batches <= result.nfev + 1
    assert result.chisqr < 1.0


def test_residuals_are_zero_for_identical_traces_and_have_fixed_length():
    targets, _ = _synthetic_targets()
    for target in targets:
        r = F.residuals(target.trace, target)
        assert np.allclose(r, 0.0)
        shifted = F.Trace(
            target.trace.time,
            target.trace.v + 0.01,
            target.trace.polarization,
            target.trace.spike_times[:1],
        )
        assert F.residuals(shifted, target).shape == r.shape


def test_injected_charge_of_pwl_and_dc():
    pulses = F.pulse_train(1e-9, 1e-3, 4e-3, 0.02, edge=1e-6)
    q = F.injected_charge(pulses, np.asarray([0.02]))[0]
    n_pulses = sum(
        1 for i in range(0, len(pulses.times) - 1) if pulses.currents[i + 1] > pulses.currents[i]
    )
    assert q == pytest.approx(n_pulses * 1e-9 * 1e-3, rel=1e-3)
    dc = F.dc_stimulus(0.5e-9, 0.01)
    assert F.injected_charge(dc, np.asarray([0.01]))[0] == pytest.approx(5e-12)


def test_stimuli_fine_waveform_and_spice_source_agree():
    train = F.spike_train(150.0, 0.05, seed=3)
    F.check_stimulus(train)
    wave = train.fine_waveform(int(0.05 / F.DT))
    assert wave.max() <= F.I_MAX and wave.min() >= 0
    assert wave.mean() == pytest.approx(train.mean_current(), rel=0.02)
    line = train.spice_source()
    assert line.startswith("Iin 0 mem PWL(") and line.rstrip().endswith(")")
    numbers = [
        float(x)
        for x in line.replace("Iin 0 mem PWL(", " ").replace("+", " ").replace(")", " ").split()
    ]
    assert np.allclose(numbers[0::2], train.times, rtol=1e-8, atol=1e-12)
    assert np.allclose(numbers[1::2], train.currents, rtol=1e-8, atol=1e-20)
    assert F.dc_stimulus(3e-10).spice_source() == "Iin 0 mem DC 3e-10"


def test_training_and_validation_stimuli_are_disjoint():
    training = {s.name for q in (False, True) for s in F.training_stimuli(q)}
    for quick in (False, True):
        main, extra = F.validation_stimuli(quick)
        assert not training & {s.name for s in main + extra}
        dcs = [s.dc for s in main + extra if s.dc is not None]
        if not quick:  # the edges of the working range are held out
            assert F.I_MIN in dcs and F.I_MAX in dcs
        assert any(s.dc is None for s in main)  # a random spike train


def test_subthreshold_mask_and_crossings():
    t = np.linspace(0, 1, 1001)
    mask = F.subthreshold_mask(t, np.asarray([0.3, 0.6]), np.asarray([0.31, 0.62]), guard=0.01)
    assert not mask[(t > 0.29) & (t < 0.32)].any() and mask[(t > 0.4) & (t < 0.5)].all()
    mask = F.subthreshold_mask(t, np.asarray([0.3, 0.6]), np.asarray([0.31]), guard=0.01)
    assert not mask[t > 0.6].any()
    v = np.sin(2 * np.pi * 3 * t)
    crossings = F.upward_crossings(t, v, 0.0)
    assert np.allclose(crossings, [1 / 3, 2 / 3], atol=1e-3)


def test_committed_preset_is_valid_and_readable_by_bruno():
    from bruno import presets

    preset = presets.load_felif_preset(F.PRESET)
    payload = preset.to_payload()
    for name in F.FIT_FIELDS:
        assert name in payload["parameters"] and preset.uncertainties[name] > 0
    prov = payload["provenance"]
    assert prov["netlist"] == "netlists/felif.cir"
    assert prov["netlist_sha256"] == spice.netlist_hash(F.NETLIST), (
        "netlists/felif.cir changed since bruno/presets/felif.json was calibrated: "
        "run `make calibrate`"
    )
    for key in ("python", "torch", "lmfit", "ngspice"):
        assert prov["versions"][key]
    for key in ("chi_square", "reduced_chi_square", "n_evaluations", "lmfit_params"):
        assert key in payload["fit"]
