"""A user's device directory (bruno.devices) and the netlist contract (calibration.contract):
a device made from the shipped netlists with one .param changed calibrates, validates and gives
a preset that moves the way the physics says; a netlist that misses a piece is refused by name.
(Named to run after test_felif_errors: calibration loads ngspice in this process.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bruno import devices, presets
from bruno.device import simulate
from calibration import contract, felif
from calibration.__main__ import main as calibration_main
from pipelines import config as cfg


def _device(tmp_path, name="big_fecap", **params) -> object:
    """A device directory holding the shipped felif.cir with ``params`` changed."""
    from calibration import spice

    directory = tmp_path / name
    directory.mkdir()
    text = spice.set_parameters((devices.SHIPPED_NETLISTS / "felif.cir").read_text(), params)
    (directory / "felif.cir").write_text(text)
    return directory


def test_the_shipped_netlists_meet_the_contract():
    for name in contract.CONTRACT:
        assert contract.check(name) == devices.SHIPPED_NETLISTS / name


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda t: t.replace(" ptot ", " pmean ").replace("(ptot", "(pmean"), "node 'ptot'"),
        (lambda t: t.replace(" vthr=2.5", ""), ".param vthr"),
        (lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("Iin ")), "Iin 0"),
    ],
)
def test_a_netlist_missing_a_required_piece_is_refused_by_name(tmp_path, capsys, edit, named):
    directory = _device(tmp_path)
    path = directory / "felif.cir"
    path.write_text(edit(path.read_text()))
    with pytest.raises(contract.NetlistContractError, match=named.replace("'", ".")):
        contract.check("felif.cir", path)
    code = calibration_main(["calibrate", "felif", "--quick", "--device", str(directory)])
    assert code == 2 and named in capsys.readouterr().err
    assert not (directory / "quick").exists()  # refused before anything was written


def test_a_missing_device_directory_and_an_uncalibrated_device_are_clear_errors(
    tmp_path, monkeypatch
):
    with pytest.raises(devices.DeviceError, match="does not exist"):
        devices.locate(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(devices.DeviceError, match="holds none of"):
        devices.locate(tmp_path / "empty")
    monkeypatch.delenv("BRUNO_PRESETS_DIR", raising=False)
    monkeypatch.setenv(devices.ENV, str(_device(tmp_path)))
    with pytest.raises(presets.PresetError, match="not calibrated yet"):
        presets.load_felif_preset()


def test_a_config_records_the_device_it_was_run_on(tmp_path, monkeypatch):
    directory = _device(tmp_path)
    monkeypatch.setenv(devices.ENV, str(directory))
    config = cfg.use_device(cfg.load("braille_felif_rram_v0"))
    assert config.device == str(directory)
    monkeypatch.delenv(devices.ENV)
    assert cfg.use_device(cfg.load("braille_felif_rram_v0")).device is None
    again = cfg.use_device(cfg.resolve(cfg.dump(config), name=config.name))
    assert devices.device_dir() == directory and again.device == str(directory)
    devices.use(None)


def _first_spike(preset: presets.FeLIFPreset, current: float) -> float:
    steps = 40_000  # 40 ms of 1 us
    trace = simulate(torch.full((steps, 1), current, dtype=torch.float64), preset.parameters)
    assert trace.spike_times[0], "no spike"
    return trace.spike_times[0][0]


def test_a_larger_fecap_calibrates_validates_and_fires_later(tmp_path, monkeypatch):
    """Area 25 -> 40 um^2: the fixed field follows the netlist exactly, and more charge to
    switch at the same current means a later first spike in the calibrated compact model."""
    directory = _device(tmp_path, area=40e-12)
    shutil.copy(devices.SHIPPED_NETLISTS / "rram_cell.inc", directory)  # an unused extra file
    monkeypatch.delenv("BRUNO_PRESETS_DIR", raising=False)
    try:
        assert calibration_main(["calibrate", "felif", "--quick", "--device", str(directory)]) == 0
        assert calibration_main(["validate", "felif", "--quick", "--device", str(directory)]) == 0
    finally:
        devices.use(None)
    written = directory / "quick" / "presets" / "felif.json"
    report = directory / "quick" / "validation" / "felif.json"
    assert written.exists() and report.exists()
    user = presets.load_felif_preset(written)
    shipped = presets.load_felif_preset(presets.COMMITTED_DIR / "felif.json")
    assert user.parameters.area == 40e-12 and shipped.parameters.area == 25e-12
    assert user.to_payload()["provenance"]["netlist"] == str(directory / "felif.cir")
    assert _first_spike(user, 1e-9) > 1.2 * _first_spike(shipped, 1e-9)
    # it needs more charge to fire: its near-rheobase levels sit further above its rheobase
    assert user.to_payload()["fit"]["near_rheobase_scale"] > 1.0
    assert felif.NETLIST == "felif.cir"  # the chosen device's, resolved per call


def test_the_device_report_puts_each_device_beside_its_own_runs(tmp_path, monkeypatch):
    from pipelines import device_report

    directory = _device(tmp_path, area=40e-12)
    (directory / "presets").mkdir()
    shutil.copy(presets.COMMITTED_DIR / "felif.json", directory / "presets" / "felif.json")
    monkeypatch.delenv(devices.ENV, raising=False)
    monkeypatch.delenv("BRUNO_PRESETS_DIR", raising=False)
    config = cfg.dump(cfg.load("braille_felif_rram_v0"))
    for run, device, accuracy in (("a", None, 0.25), ("b", str(directory), 0.5)):
        (tmp_path / "train" / run).mkdir(parents=True)
        (tmp_path / "train" / run / "config.json").write_text(
            json.dumps({**config, "device": device})
        )
        (tmp_path / "train" / run / "metrics.json").write_text(
            json.dumps({"seed": 0, "test_accuracy": accuracy})
        )
    code = device_report.main(
        ["shipped", str(directory), "--train-dir", str(tmp_path / "train"), "--out", str(tmp_path)]
    )
    assert code == 0 and devices.device_dir() is None
    report = json.loads((tmp_path / "devices.json").read_text())
    first, second = report["devices"]
    assert first["device"] == "shipped" and second["device"] == str(directory)
    assert [r["run"] for r in first["runs"]] == ["a"] and [r["run"] for r in second["runs"]] == [
        "b"
    ]
    assert first["rram_preset"] == second["rram_preset"]  # no RRAM netlist: the shipped preset
    text = (tmp_path / "devices.md").read_text()
    assert "25.00 % (a)" in text and "50.00 % (b)" in text and "identical configs" in text
    assert "| switching_exponent (1) |" in text and "| rheobase, ngspice / compact model" in text


def test_an_rram_device_is_drawn_and_programmed_around_its_own_filament(tmp_path):
    """The Monte-Carlo bounds and the nominal cell follow the device's rram.cir (before, every
    cell was given the shipped 45 nm filament whatever the netlist said)."""
    from calibration import rram, spice

    directory = tmp_path / "thin_filament"
    directory.mkdir()
    text = (devices.SHIPPED_NETLISTS / "rram.cir").read_text()
    (directory / "rram.cir").write_text(spice.set_parameters(text, {"r_fil": 35e-9}))
    shipped = rram.program_and_read({"i_prog": 100e-6, "device": {}})
    assert rram.bounds()["r_fil"] == (40.5e-9, 49.5e-9)  # the published JART v1b bounds
    try:
        devices.use(directory)
        assert devices.owns("rram") and not devices.owns("felif")
        assert rram.Device().r_fil == 35e-9 and rram.bounds()["r_fil"] == (31.5e-9, 38.5e-9)
        assert all(31.5e-9 <= d.r_fil <= 38.5e-9 for d in rram.sample_devices(50, seed=2))
        thin = rram.program_and_read({"i_prog": 100e-6, "device": {}})
    finally:
        devices.use(None)
    # same compliance, narrower filament: hotter, further SET (N_disc), higher read conductance
    assert thin["n_disc"] > 1.5 * shipped["n_disc"] and thin["g_read_S"] > shipped["g_read_S"]
