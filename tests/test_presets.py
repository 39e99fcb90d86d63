"""bruno.presets, the one owner of the preset schema: validation, symmetric write/read, the
uncertainties derived from the stored lmfit fit, and where presets are found."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from bruno import presets
from bruno.felif import FeLIFParameters

COMMITTED = presets.COMMITTED_DIR / "felif.json"


def _felif_payload(**changes):
    payload = {
        "schema": "bruno.felif-preset/1",
        "device": "felif",
        "parameters": {"activation_field": 1.3e9, "parasitic_capacitance": 20e-15},
        "variability": {"sigma": 0.08, "fields": ["area", "activation_field"]},
        "fit": {"nrmse": 0.01},
        "provenance": {"netlist_sha256": "abc"},
    }
    payload.update(changes)
    return payload


def test_felif_preset_subset_and_defaults(tmp_path):
    path = tmp_path / "felif.json"
    path.write_text(json.dumps(_felif_payload()))
    preset = presets.load_felif_preset(path)
    assert preset.parameters.activation_field == 1.3e9
    assert preset.parameters.saturation_polarization == FeLIFParameters().saturation_polarization
    assert preset.variability_sigma == 0.08 and preset.variability_fields == (
        "area",
        "activation_field",
    )
    assert presets.load_felif_parameters(path) == preset.parameters


def test_default_loader_without_committed_preset(tmp_path, monkeypatch):
    monkeypatch.delenv("BRUNO_PRESETS_DIR", raising=False)
    monkeypatch.setattr(presets, "presets_dir", lambda: tmp_path)
    assert presets.load_felif_parameters() == FeLIFParameters()
    assert presets.load_rram_preset().provenance["source"] == "fallback"


def test_chosen_presets_dir_is_used_and_must_hold_the_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("BRUNO_PRESETS_DIR", str(tmp_path))
    # a directory the user chose and that lacks a preset is an error, not a silent fallback
    with pytest.raises(presets.PresetError, match="calibrate felif --presets"):
        presets.load_felif_parameters()
    with pytest.raises(presets.PresetError, match="calibrate rram --presets"):
        presets.load_rram_preset()
    (tmp_path / "felif.json").write_text(json.dumps(_felif_payload()))
    assert presets.load_felif_parameters().activation_field == 1.3e9


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schema": "bruno.felif-preset/2"}, "version 2 is not supported"),
        ({"schema": "felif"}, "malformed 'schema'"),
        ({"device": "rram"}, "device is 'rram'"),
        ({"parameters": {"bogus": 1.0}}, "unknown FeLIF parameter"),
        ({"parameters": {"area": "big"}}, "finite number"),
        ({"parameters": {"area": -1.0}}, "area must be > 0"),
        ({"variability": {"sigma": 0.1, "fields": ["nope"]}}, "unknown name"),
    ],
)
def test_felif_preset_errors(tmp_path, changes, message):
    path = tmp_path / "felif.json"
    path.write_text(json.dumps(_felif_payload(**changes)))
    with pytest.raises(presets.PresetError, match=message):
        presets.load_felif_preset(path)


def test_felif_preset_nan_and_missing(tmp_path):
    path = tmp_path / "felif.json"
    path.write_text(json.dumps(_felif_payload()).replace("1300000000.0", "NaN"))
    with pytest.raises(presets.PresetError, match="finite"):
        presets.load_felif_preset(path)
    with pytest.raises(presets.PresetError, match="no such preset"):
        presets.load_felif_preset(tmp_path / "absent.json")


def _committed() -> dict:
    return json.loads(COMMITTED.read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: "{not json", "not readable JSON"),
        (lambda p: [1, 2], "a preset is a JSON object"),
        (lambda p: {**p, "schema": "bruno.rram-preset/1"}, "is not a felif preset"),
        (lambda p: {**p, "parameters": {**p["parameters"], "activation_feild": 1e9}}, "feild"),
        (
            lambda p: {**p, "parameters": {**p["parameters"], "saturation_polarization": "0.2"}},
            "saturation_polarization must be a finite number",
        ),
        (lambda p: {**p, "parameters": {}}, "'parameters' must be a non-empty object"),
        (lambda p: {k: v for k, v in p.items() if k != "provenance"}, "'provenance' section"),
        (lambda p: {**p, "parameters": {**p["parameters"], "soft_field": 0.0}}, "soft_field"),
        (lambda p: {**p, "fit": []}, "'fit' must be an object"),
    ],
    ids=[
        "not-json",
        "not-object",
        "schema",
        "unknown-field",
        "string-value",
        "empty",
        "no-provenance",
        "zero-soft-field",
        "fit-not-object",
    ],
)
def test_malformed_committed_preset_names_file_and_field(tmp_path, mutate, message):
    path = tmp_path / "bad" / "felif.json"
    path.parent.mkdir()
    payload = mutate(_committed())
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(presets.PresetError, match="bad/felif.json") as info:
        presets.load_felif_preset(path)
    assert message in str(info.value)


def test_the_cases_the_two_former_loaders_disagreed_on(tmp_path):
    """A preset without a fit section (hand-made parameters) and a newer minor schema version
    load; soft_field = 0 is refused (the switching rate needs it > 0) - one answer each."""
    path = tmp_path / "felif.json"
    no_fit = {k: v for k, v in _committed().items() if k != "fit"}
    path.write_text(json.dumps(no_fit))
    assert presets.load_felif_preset(path).uncertainties == {}
    path.write_text(json.dumps({**_committed(), "schema": "bruno.felif-preset/1.1"}))
    assert presets.load_felif_preset(path).parameters == presets.load_felif_preset().parameters


def test_write_then_read_is_the_same_preset(tmp_path):
    for preset in (presets.load_felif_preset(COMMITTED), presets.load_rram_preset()):
        name = "felif.json" if isinstance(preset, presets.FeLIFPreset) else "rram.json"
        written = presets.write_preset(preset, tmp_path / name)
        loader = presets.load_felif_preset if name == "felif.json" else presets.load_rram_preset
        again = loader(written)
        assert again.to_payload() == preset.to_payload()
        assert dataclasses.replace(again, source=preset.source) == preset


def test_a_preset_the_loader_would_refuse_is_never_written(tmp_path):
    preset = presets.load_felif_preset(COMMITTED)
    bad = dataclasses.replace(preset, variability_fields=("no_such_field",))
    with pytest.raises(presets.PresetError, match="variability.fields"):
        presets.write_preset(bad, tmp_path / "felif.json")
    assert not (tmp_path / "felif.json").exists()


def test_uncertainties_are_derived_from_the_stored_lmfit_parameters():
    """The fit is stored once (lmfit's Parameters dump); standard errors in SI follow from the
    fit units: linear variables scale, log10 ones by 10^x ln(10)."""
    import lmfit

    preset = presets.load_felif_preset(COMMITTED)
    params = lmfit.Parameters().loads(preset.fit["lmfit_params"])
    variables = preset.fit["variables"]
    leak = preset.fit["leak"]["stderr_SI"]  # the leak's own fit, to the clamped membrane
    assert set(preset.uncertainties) == set(variables) | set(leak)
    assert set(variables) == set(preset.fit["fitted"])
    assert all(preset.uncertainties[f] == leak[f] > 0 for f in leak)
    for field, var in variables.items():
        par = params[var["lmfit_name"]]
        if var["log10"]:
            assert getattr(preset.parameters, field) == pytest.approx(10**par.value, rel=1e-12)
            expected = 10**par.value * math.log(10) * par.stderr
        else:
            assert getattr(preset.parameters, field) == pytest.approx(
                par.value * var["unit_SI"], rel=1e-12
            )
            expected = par.stderr * var["unit_SI"]
        assert preset.uncertainties[field] == pytest.approx(expected, rel=1e-12)
    corr = preset.correlations
    assert corr["activation_field"]["saturation_polarization"] == pytest.approx(
        corr["saturation_polarization"]["activation_field"]
    )
    assert "covar" not in json.dumps(preset.fit) and "uncertainties" not in _committed()


def test_layers_take_the_preset_with_its_variability():
    from bruno.layers import FeLIFLayer

    preset = presets.load_felif_preset(COMMITTED)
    layer = FeLIFLayer(5, parameters=preset)
    assert layer.variability_sigma == preset.variability_sigma
    assert layer.variability_fields == preset.variability_fields
    assert float(layer.variability_factors.std()) > 0  # drawn per neuron
    assert FeLIFLayer(5, parameters=preset, variability_sigma=0.0).variability_sigma == 0.0
    assert FeLIFLayer(5, parameters=FeLIFParameters()).variability_sigma == 0.0


def test_presets_are_package_data_or_the_chosen_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("BRUNO_PRESETS_DIR", raising=False)
    assert presets.presets_dir() == presets.COMMITTED_DIR == Path(presets.__file__).parent
    monkeypatch.setenv("BRUNO_PRESETS_DIR", str(tmp_path))
    assert presets.presets_dir() == tmp_path
