"""SynapticLinear: full precision, n-bit quantisation, calibrated RRAM pairs; the RRAM preset."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from bruno import presets
from bruno.synapses import PRECISIONS, SynapticLinear, quantize_symmetric


def _preset(with_samples: bool) -> presets.RRAMPreset:
    levels = []
    g = torch.Generator().manual_seed(0)
    for k in range(8):
        mean = 10e-6 * (k + 1) ** 1.2
        samples = tuple(
            (mean * (1 + 0.05 * torch.randn(50, generator=g, dtype=torch.float64))).tolist()
        )
        levels.append(
            presets.RRAMLevel(50e-6 * (k + 1), mean, 0.05 * mean, samples if with_samples else ())
        )
    return presets.RRAMPreset(levels=tuple(levels), cycle_to_cycle_read_noise_rel=0.03)


def test_fp_is_plain_linear():
    layer = SynapticLinear(5, 3, bias=True)
    x = torch.randn(4, 2, 5)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_nbit_levels_and_straight_through(bits):
    layer = SynapticLinear(40, 30, precision=f"{bits}bit")
    w = layer.effective_weight().detach()
    assert len(torch.unique(w)) <= 2**bits - 1
    scale = layer.weight.detach().abs().max() / (2 ** (bits - 1) - 1)
    assert (w - layer.weight.detach()).abs().max() <= scale / 2 + 1e-7
    x = torch.randn(6, 40)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(6, 30).T @ x)  # STE: identity
    assert quantize_symmetric(torch.zeros(3), 3).abs().sum() == 0  # no 0/0


@pytest.mark.parametrize("with_samples", [True, False])
def test_rram_mapping_variability_and_noise(with_samples):
    preset = _preset(with_samples)
    ideal = SynapticLinear(
        20,
        10,
        precision="rram",
        rram_preset=preset,
        device_variability=False,
        read_noise=False,
        seed=3,
    )
    w = ideal.effective_weight().detach()
    means = torch.tensor(preset.means, dtype=torch.float64)
    allowed = (
        (means - means[0]) / (means[-1] - means[0]) * ideal.weight.detach().abs().max().double()
    )
    allowed = torch.cat([allowed, -allowed])
    assert len(torch.unique(w)) <= 15
    assert (
        torch.isclose(w.double().reshape(-1, 1), allowed.reshape(1, -1), rtol=1e-5, atol=1e-9)
        .any(1)
        .all()
    )
    assert torch.equal(torch.sign(w[w != 0]), torch.sign(ideal.weight.detach()[w != 0]))

    varied = SynapticLinear(20, 10, precision="rram", rram_preset=preset, read_noise=False, seed=3)
    again = SynapticLinear(20, 10, precision="rram", rram_preset=preset, read_noise=False, seed=3)
    wv = varied.effective_weight().detach()
    assert torch.equal(wv, again.effective_weight().detach())  # fixed per device, seeded
    assert not torch.equal(wv, w) and (wv - w).abs().max() < 0.5 * w.abs().max()
    varied.resample_devices(4)
    assert not torch.equal(varied.effective_weight().detach(), wv)

    noisy = SynapticLinear(20, 10, precision="rram", rram_preset=preset, seed=3)
    x = torch.rand(5, 4, 20)
    a, b = noisy(x), noisy(x)
    assert a.shape == (5, 4, 10) and not torch.equal(a, b)  # a fresh read every call
    clean = F.linear(x, noisy.effective_weight())
    rel = ((a - clean).std() / clean.abs().mean()).item()
    assert 0.001 < rel < 0.1
    noisy.weight.grad = None
    noisy(x).sum().backward()
    assert torch.isfinite(noisy.weight.grad).all() and noisy.weight.grad.abs().sum() > 0


def test_rram_uses_fallback_or_committed_preset():
    layer = SynapticLinear(4, 3, precision="rram")
    assert len(layer.rram_preset.levels) == 8
    assert layer(torch.rand(2, 4)).shape == (2, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown precision '2bit'"):
        SynapticLinear(3, 2, precision="2bit")
    assert PRECISIONS == ("fp", "8bit", "4bit", "3bit", "rram")
    layer = SynapticLinear(3, 2)
    with pytest.raises(ValueError, match="last input dimension must be 3"):
        layer(torch.zeros(4, 5))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="meta"):
        layer(torch.zeros(4, 3, device="meta"))
    with pytest.raises(TypeError, match="RRAMPreset"):
        SynapticLinear(3, 2, precision="rram", rram_preset={"levels": []})


def _rram_payload(**changes):
    payload = {
        "schema": "bruno.rram-preset/1",
        "device": "rram",
        "read_voltage_V": 0.2,
        "levels": [
            {
                "programming_current_A": 5e-5 * (k + 1),
                "conductance_mean_S": 1e-5 * (k + 1),
                "conductance_std_S": 1e-7,
                "conductance_samples_S": [1e-5 * (k + 1), 1.01e-5 * (k + 1)],
            }
            for k in range(8)
        ],
        "cycle_to_cycle_read_noise_rel": 0.02,
        "conductance_law": {},
        "provenance": {"netlist_sha256": "x"},
    }
    payload.update(changes)
    return payload


def test_rram_preset_loader(tmp_path):
    path = tmp_path / "rram.json"
    path.write_text(json.dumps(_rram_payload()))
    preset = presets.load_rram_preset(path)
    assert len(preset.levels) == 8 and preset.cycle_to_cycle_read_noise_rel == 0.02
    assert preset.levels[0].conductance_samples_S == (1e-5, 1.01e-5)
    for changes, message in (
        ({"schema": "bruno.rram-preset/2"}, "version 2 is not supported"),
        ({"schema": "bruno.felif-preset/1"}, "not a rram preset"),
        ({"device": "felif"}, "device is 'felif'"),
        ({"levels": _rram_payload()["levels"][::-1]}, "strictly increasing"),
        ({"cycle_to_cycle_read_noise_rel": -1}, ">= 0"),
    ):
        path.write_text(json.dumps(_rram_payload(**changes)))
        with pytest.raises(presets.PresetError, match=message):
            presets.load_rram_preset(path)
    fallback = presets.fallback_rram_preset()
    assert len(fallback.levels) == 8 and fallback.provenance["source"] == "fallback"
