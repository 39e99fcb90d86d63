"""FeLIF presets and the `python -m bruno simulate` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bruno import __main__ as cli
from bruno import presets
from bruno.felif import FeLIFParameters

ROOT = Path(__file__).resolve().parents[1]


def _felif_payload(**changes):
    payload = {
        "schema": "bruno.felif-preset/1",
        "device": "felif",
        "parameters": {"activation_field": 1.3e9, "parasitic_capacitance": 20e-15},
        "uncertainties": {"activation_field": 1e7},
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


def _simulate(capsys, *argv) -> tuple[int, dict | str]:
    code = cli.main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


def test_cli_felif_dc_matches_spec_numbers(capsys, tmp_path):
    traces = tmp_path / "trace.csv"
    code, result = _simulate(
        capsys,
        "felif",
        "--current",
        "308e-12",
        "--duration",
        "0.1",
        "--defaults",
        "--traces",
        str(traces),
        "--record-every",
        "10",
    )
    assert code == 0
    first, second = result["spike_times_s"][:2]
    assert first == pytest.approx(41.8e-3, rel=0.01)
    assert second - first == pytest.approx(44.5e-3, rel=0.01)
    lines = traces.read_text().splitlines()
    assert lines[0] == "time_s,v_V,P_C_per_m2" and len(lines) == 1 + 10001
    assert result["wall_s"] < 2.0


def test_cli_piecewise_csv_params_and_lif(capsys, tmp_path):
    stimulus = tmp_path / "stimulus.csv"
    stimulus.write_text("time_s,current_A\n0,0\n0.005,2e-9\n0.02,0\n")
    preset = tmp_path / "felif.json"
    preset.write_text(json.dumps(_felif_payload()))
    code, result = _simulate(
        capsys, "felif", "--input", str(stimulus), "--duration", "0.03", "--params", str(preset)
    )
    assert code == 0 and result["parameters"] == str(preset)
    assert result["spike_times_s"] and all(0.005 < t < 0.021 for t in result["spike_times_s"])
    code, lif = _simulate(capsys, "lif", "--current", "1.5e-9", "--duration", "0.1")
    assert code == 0 and lif["spike_count"] >= 2
    code, quiet = _simulate(capsys, "lif", "--current", "0.5e-9", "--duration", "0.1")
    assert code == 0 and quiet["spike_times_s"] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["felif", "--current", "nan", "--duration", "0.01"], "finite"),
        (["felif", "--current", "1e-9", "--duration", "-1"], "duration"),
        (
            [
                "felif",
                "--current",
                "1e-9",
                "--duration",
                "0.01",
                "--defaults",
                "--params",
                "x.json",
            ],
            "not both",
        ),
        (
            ["felif", "--current", "1e-9", "--duration", "0.01", "--params", "/nonexistent.json"],
            "no such preset",
        ),
        (["felif", "--input", "/nonexistent.csv", "--duration", "0.01"], "cannot read"),
        (["lif", "--current", "1e-9", "--duration", "0.01", "--params", "x.json"], "for felif"),
    ],
)
def test_cli_errors(capsys, argv, message):
    code, err = _simulate(capsys, *argv)
    assert code == 2 and message in err


def test_cli_bad_csv(capsys, tmp_path):
    stimulus = tmp_path / "bad.csv"
    stimulus.write_text("0,1e-9\n0.001,abc\n")
    code, err = _simulate(capsys, "felif", "--input", str(stimulus), "--duration", "0.01")
    assert code == 2 and "not numbers" in err
    stimulus.write_text("0.002,1e-9\n0.001,1e-9\n")
    code, err = _simulate(capsys, "felif", "--input", str(stimulus), "--duration", "0.01")
    assert code == 2 and "increasing" in err


def test_cli_as_a_process():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bruno",
            "simulate",
            "felif",
            "--current",
            "1e-9",
            "--duration",
            "0.03",
            "--defaults",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spike_times_s"][0] == pytest.approx(12.6e-3, rel=0.01)
