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


def test_a_stimulus_fit_weight_scales_its_spike_residuals_and_nothing_else():
    import dataclasses

    targets, _ = _synthetic_targets()
    target = targets[0]
    late = F.Trace(
        target.trace.time,
        target.trace.v + 0.02,
        target.trace.polarization,
        target.trace.spike_times * 1.01,
    )
    heavy = F.Target(dataclasses.replace(target.stimulus, fit_weight=4.0), target.trace)
    r1, r4 = F.residuals(late, target), F.residuals(late, heavy)
    n = len(target.trace.spike_times)
    assert np.all(r1[:n] != 0) and np.any(r1[n:] != 0)
    assert np.allclose(r4[:n], 4.0 * r1[:n], rtol=1e-12) and np.array_equal(r4[n:], r1[n:])
    # the near-rheobase training levels carry the weight; the other stimuli do not
    weights = {s.name: s.fit_weight for s in F.training_stimuli(False, 16.1e-12)}
    assert {w for n, w in weights.items() if n.endswith("pA")} == {F.RHEOBASE_FIT_WEIGHT}
    assert {w for n, w in weights.items() if not n.endswith("pA")} == {1.0}


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


@pytest.mark.parametrize(("rheobase", "scale"), [(16.1e-12, 1.0), (40e-12, 1.0), (16.1e-12, 3.375)])
def test_training_and_validation_stimuli_are_disjoint(rheobase, scale):
    training = {s.name for q in (False, True) for s in F.training_stimuli(q, rheobase, scale)}
    for quick in (False, True):
        main, extra = F.validation_stimuli(quick, rheobase, scale)
        assert not training & {s.name for s in main + extra}
        dcs = [s.dc for s in main + extra if s.dc is not None]
        if not quick:  # the top of the range and the rheobase from both sides are held out
            assert F.I_MAX in dcs
            assert any((1 - 0.2 * scale) * rheobase < i < rheobase for i in dcs)  # must not fire
            assert any(rheobase < i < (1 + 0.2 * scale) * rheobase for i in dcs)
        assert any(s.dc is None for s in main)  # a random spike train
    assert any(
        s.dc is not None and s.dc < 1.5 * rheobase for s in F.training_stimuli(False, rheobase)
    )


def test_near_rheobase_levels_scale_their_distance_from_the_rheobase():
    (base,) = F.near_rheobase(20e-12, [(1.1, 2.0)])
    (wide,) = F.near_rheobase(20e-12, [(1.1, 2.0)], fit_weight=4.0, scale=2.25)
    assert base.dc == pytest.approx(22e-12) and wide.dc == pytest.approx(24.5e-12)
    assert (base.duration, base.fit_weight, wide.fit_weight) == (2.0, 1.0, 4.0)
    assert wide.name == "dc_24.5pA"


def test_spikes_are_compared_until_half_an_interval_after_the_circuits_last():
    from calibration.felif.validate_stage import comparison_horizon

    assert comparison_horizon(np.asarray([]), 2.0) == 2.0  # none: the whole window
    assert comparison_horizon(np.asarray([0.8]), 2.0) == pytest.approx(1.2)
    assert comparison_horizon(np.asarray([0.4, 0.9, 1.4]), 1.5) == 1.5  # capped at the window
    assert comparison_horizon(np.asarray([0.4, 0.9]), 2.0) == pytest.approx(1.15)


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
