"""The `python -m bruno simulate` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bruno import __main__ as cli
from tests.test_presets import _felif_payload

ROOT = Path(__file__).resolve().parents[1]


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
