"""The user's commands as README.md and the Makefile show them: argument handling, locations and
exit codes here (fast); `make smoke` (CI) runs the stages themselves end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import calibration
from calibration import __main__ as cli
from calibration import felif, rram

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def stages(monkeypatch):
    """Both device modules' stages replaced by recorders (no ngspice)."""
    calls = []
    for module in (felif, rram):
        name = module.__name__.rsplit(".", 1)[1]

        def calibrate(quick=False, presets_dir=None, _name=name):
            path = calibration.presets_location(quick, presets_dir, writing=True)
            calls.append(("calibrate", _name, quick, path))
            return path / f"{_name}.json"

        def validate(quick=False, presets_dir=None, reports_dir=None, _name=name):
            where = calibration.presets_location(quick, presets_dir)
            calls.append(
                ("validate", _name, quick, where, calibration.reports_location(quick, reports_dir))
            )
            return _name != "rram" or not quick  # quick rram "fails" in this fixture

        monkeypatch.setattr(module, "calibrate", calibrate)
        monkeypatch.setattr(module, "validate", validate)
    return calls


def test_calibrate_without_device_names_runs_both(stages, monkeypatch):
    monkeypatch.delenv("BRUNO_PRESETS_DIR", raising=False)
    assert cli.main(["calibrate"]) == 0
    assert stages == [
        ("calibrate", "felif", False, calibration.COMMITTED_PRESETS),
        ("calibrate", "rram", False, calibration.COMMITTED_PRESETS),
    ]


def test_quick_writes_and_validates_one_scratch_directory(stages, tmp_path):
    assert cli.main(["calibrate", "rram", "felif", "--quick", "--presets", str(tmp_path)]) == 0
    assert cli.main(["validate", "felif", "--quick", "--presets", str(tmp_path)]) == 0
    assert stages[0][1:] == ("rram", True, tmp_path) and stages[1][1:] == ("felif", True, tmp_path)
    assert stages[2] == ("validate", "felif", True, tmp_path, calibration.QUICK_ROOT / "validation")
    # without --presets a quick run goes to results/quick, never to the committed presets
    stages.clear()
    assert cli.main(["calibrate", "felif", "--quick"]) == 0
    assert stages == [("calibrate", "felif", True, calibration.QUICK_ROOT / "presets")]


def test_quick_refuses_to_write_the_committed_presets(stages, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "--quick", "--presets", str(calibration.COMMITTED_PRESETS)])
    assert (
        exit_info.value.code == 2
        and "never writes the committed presets" in capsys.readouterr().err
    )
    assert stages == []


def test_failed_validation_and_bad_device_exit_non_zero(stages, capsys):
    assert cli.main(["validate", "--quick"]) == 1  # the fixture's quick rram validation fails
    assert "validate failed for rram" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "fefet"])
    assert exit_info.value.code == 2 and "unknown device(s) fefet" in capsys.readouterr().err


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.mark.parametrize("device", ["felif", "rram"])
def test_validate_without_a_preset_says_how_to_make_it(device, tmp_path):
    out = _run("-m", "calibration", "validate", device, "--presets", str(tmp_path / "none"))
    assert out.returncode == 2, out.stderr
    assert f"calibration: validate {device}:" in out.stderr and "calibrate" in out.stderr
    assert "Traceback" not in out.stderr


def test_pipelines_commands_parse_and_list():
    out = _run("-m", "pipelines", "train", "--list")
    assert out.returncode == 0 and "jsb_felif_bruno" in out.stdout.split()
    out = _run("-m", "pipelines", "sweep", "smoke", "--dry-run")
    assert out.returncode == 0 and "smoke_jsb_s0" in out.stdout and "smoke_jsb_s1" in out.stdout
    out = _run("-m", "pipelines")
    assert out.returncode == 2 and "usage" in out.stderr


def _make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is needed to run the project's commands")
    return subprocess.run(
        [make, "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_make_all_runs_its_stages_in_order_even_in_parallel():
    out = _make("-n", "-j4", "all")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if f"-m {stage}" in line)
        for stage in (
            "calibration calibrate",
            "calibration validate",
            "pipelines train",
            "pipelines report",
        )
    ]
    assert order == sorted(order), out.stdout


def test_make_stages_pass_args_through():
    out = _make("-n", "train", "EXP=jsb_alg_bptt", "ARGS=--set optim.epochs=10")
    assert "-m pipelines train jsb_alg_bptt --set optim.epochs=10" in out.stdout, out.stdout
    out = _make("-n", "calibrate", "ARGS=rram --quick --presets /tmp/x")
    assert "-m calibration calibrate rram --quick --presets /tmp/x" in out.stdout, out.stdout
    out = _make("-n", "lint")
    assert "ruff check ." in out.stdout and "ruff format --check ." in out.stdout


def test_make_cosim_needs_a_run_and_passes_it_on(tmp_path):
    out = _make("-n", "cosim", "RUN=results/train/x_s0", "JOBS=3", "ARGS=--samples 5")
    assert "-m pipelines cosim results/train/x_s0 --jobs 3 --samples 5" in out.stdout, out.stdout
    out = _make("cosim", "RUN=")
    assert out.returncode == 2 and "give RUN=results/train/<run>" in out.stderr
    from pipelines.__main__ import main

    assert main(["cosim", str(tmp_path / "missing")]) == 2  # a clear error, no traceback


def test_make_clean_removes_results_and_the_native_build(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    made = [
        tmp_path / "results" / "train" / "x",
        tmp_path / "bruno" / "kernels" / "build" / "lib.so",
    ]
    kept = [
        tmp_path / "calibration" / "presets" / "felif.json",
        tmp_path / ".venv" / "bin" / "python",
    ]
    for path in made + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    out = _make("clean", "BRUNO_NATIVE_DIR=", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "bruno/kernels/build").exists()
    assert all(path.exists() for path in kept)


def test_make_device_reaches_every_stage(tmp_path):
    """`make ... DEVICE=dir` works on that directory: a broken netlist there is refused by name
    (not the shipped one calibrated instead), and an uncalibrated device cannot be validated."""
    from bruno import devices

    broken = tmp_path / "broken"
    broken.mkdir()
    text = (devices.SHIPPED_NETLISTS / "felif.cir").read_text()
    (broken / "felif.cir").write_text(text.replace(" vthr=2.5", ""))
    out = _make("calibrate", f"DEVICE={broken}", "ARGS=felif --quick")
    assert out.returncode != 0 and ".param vthr" in out.stderr and str(broken) in out.stderr
    fine = tmp_path / "fine"
    fine.mkdir()
    (fine / "felif.cir").write_text(text)
    out = _make("validate", f"DEVICE={fine}", "ARGS=felif")
    assert out.returncode != 0 and "not calibrated yet" in out.stderr
    assert not (fine / "presets").exists()
