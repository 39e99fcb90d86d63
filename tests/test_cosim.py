"""Co-simulation (pipelines/cosim): the exported circuit against itself unfactorised and against
the compact model; the array's write-verify; the cells' device draws; bad run directories."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bruno import execution, presets
from bruno.layers import FeLIFLayer
from bruno.synapses import SynapticLinear
from pipelines import config as cfg
from pipelines import models
from pipelines.cosim import (
    NEURONS_PER_DECK,
    CosimError,
    HardwareLayer,
    _neuron_job,
    circuit_drive,
    export,
    export_run,
    hardware_layer,
    load_run,
)
from pipelines.cosim.array import cell_geometries, program_array
from pipelines.cosim.network import bias_current, compact_spikes, neuron_overrides

STEP = 1e-3


def _tiny_layer() -> HardwareLayer:
    """2 presynaptic lines -> 2 FeLIF neurons through 3-bit RRAM pairs (calibrated devices)."""
    synapses = SynapticLinear(
        2, 2, precision="rram", device_variability=False, read_noise=False, bias=True
    )
    with torch.no_grad():
        synapses.weight.copy_(torch.tensor([[1.0, -0.2], [0.3, 0.85]]))
        synapses.bias.copy_(torch.tensor([0.1, -0.05]))  # a DC source beside the gain stage
    neurons = FeLIFLayer(2, parameters=presets.load_felif_preset(), variability_sigma=0.0)
    return HardwareLayer(synapses, neurons, gain=4.0)


def _presynaptic(steps: int = 12) -> np.ndarray:
    rng = np.random.default_rng(3)
    pattern = (rng.random((steps, 2)) < 0.6).astype(float)
    pattern[:, 0] = 1.0  # a tonic line keeps both neurons firing
    return pattern


def _simulate(deck: export.NeuronDeck) -> dict:
    """A deck in a worker process, as the command runs it: ngspice never loads in the test
    process (forked workers would inherit it, and the missing-ngspice tests would not see it)."""
    results, failures = execution.run_many(_neuron_job, [(deck, "test deck")], workers=1)
    assert not failures, failures
    return results[0]


@pytest.fixture(scope="module")
def tiny():
    layer = _tiny_layer()
    array = program_array(layer, jobs=1)
    weight_gain = layer.neurons.current_scale * layer.gain * array["weight_per_siemens"]
    gains = np.full(2, weight_gain / array["v_read_V"])
    return layer, array, gains, bias_current(layer)


def test_write_verify_reads_the_models_conductances(tiny):
    layer, array, gains, bias = tiny
    cells = layer.synapses.rram_cells()
    read = array["current_A"] / array["v_read_V"]
    np.testing.assert_allclose(read, cells.conductance_S.numpy(), rtol=2e-4)
    assert array["summary"]["read_vs_model_rel_error_max"] <= 2e-4
    # the gain stage reproduces the model's drive: current_scale x gain x W s
    pre = _presynaptic()
    weight = layer.synapses.effective_weight().detach().double().numpy()
    offset = layer.synapses.bias.detach().double().numpy()
    expected = layer.neurons.current_scale * layer.gain * (pre @ weight.T + offset)
    drive = circuit_drive(pre, array, gains, bias)
    np.testing.assert_allclose(drive, expected, rtol=5e-4, atol=1e-15)


def test_programming_transients_give_calibrations_nominal_levels():
    """--programming transient: each cell in the state its level's SET transient leaves (the
    nominal cell here), which reads what calibration recorded for the nominal device."""
    layer = _tiny_layer()
    array = program_array(layer, jobs=1, programming="transient")
    levels = layer.synapses.rram_cells().levels.numpy()
    nominal = [
        lv.details["nominal_device_conductance_S"] for lv in layer.synapses.rram_preset.levels
    ]
    read = array["current_A"] / array["v_read_V"]
    for level in np.unique(levels):
        np.testing.assert_allclose(read[levels == level], nominal[level], rtol=2e-3)
    assert array["summary"]["programming"] == "transient"
    with pytest.raises(CosimError, match="programming must be one of"):
        program_array(layer, jobs=1, programming="guess")


def test_factorised_circuit_equals_the_whole_circuit_and_the_compact_model(tiny):
    """The array read + neuron deck gives the spike times of the one-deck circuit (cells read by
    pulses, F-source gain stage); the compact model with circuit reset agrees with both."""
    layer, array, gains, bias = tiny
    pre = _presynaptic()
    drive = circuit_drive(pre, array, gains, bias)
    assert drive.min() > 0.3e-9  # positive drive: the regime the compact model is fitted to
    overrides = [{}, {}]
    factorised = _simulate(export.neuron_deck(drive, STEP, overrides))
    cells, pick = array["cells"], array["cell_index"]
    whole = export.full_deck(
        pre,
        STEP,
        [[cells[c] for c in row] for row in pick[0]],
        [[cells[c] for c in row] for row in pick[1]],
        array["v_read_V"],
        gains,
        overrides,
        bias_A=bias,
    )
    assert "ib1 0 mem1 DC -" in whole.text
    unfactorised = _simulate(whole)
    compact = compact_spikes(drive, layer)
    for j in range(2):
        spice_times = factorised["spikes"][j]
        assert len(spice_times) >= 2, factorised
        assert len(unfactorised["spikes"][j]) == len(spice_times)
        np.testing.assert_allclose(unfactorised["spikes"][j], spice_times, atol=5e-6)
        assert len(compact[j]) == len(spice_times)
        np.testing.assert_allclose(compact[j], spice_times, rtol=0.03, atol=0.2e-3)


def test_a_changed_reset_target_reaches_the_circuit(tiny):
    """A run whose FeLIF outputs reset to rest (config ``reset_voltage`` 0 V, a circuit what-if)
    co-simulates with the netlist's reset switch settling at 0 V: ngspice and the compact model
    agree on the spike times, which after the first come sooner than with the device's -1.5 V."""
    layer, array, gains, bias = tiny
    assert neuron_overrides(layer)[0] == [{}, {}]
    config = cfg.load("braille_felif_reset_fp_v0", ["model.output.neuron.reset_voltage=0.0"])
    parameters = models.felif_preset("calibrated", config.model.output.neuron.reset_voltage)
    rest = HardwareLayer(
        layer.synapses, FeLIFLayer(2, parameters=parameters, variability_sigma=0.0), layer.gain
    )
    overrides, _ = neuron_overrides(rest)
    assert overrides == [{"v_reset": 0.0}, {"v_reset": 0.0}]
    drive = circuit_drive(_presynaptic(), array, gains, bias)
    spice = _simulate(export.neuron_deck(drive, STEP, overrides))["spikes"]
    compact = compact_spikes(drive, rest)
    device_reset = compact_spikes(drive, layer)
    for j in range(2):
        assert len(compact[j]) == len(spice[j]) >= len(device_reset[j]) >= 2
        np.testing.assert_allclose(compact[j], spice[j], rtol=0.03, atol=0.2e-3)
        # the first spike is the same; every later one comes sooner from a reset at rest
        assert compact[j][0] == pytest.approx(device_reset[j][0], abs=1e-6)
        assert all(a < b - 1e-4 for a, b in zip(compact[j][1:], device_reset[j][1:], strict=False))


def test_decks_are_plain_spice_with_the_mapping_in_the_header(tiny):
    layer, array, gains, bias = tiny
    drive = circuit_drive(_presynaptic(), array, gains, bias)
    deck = export.neuron_deck(drive, STEP, [{}, {}], header="mapping: W = (G+ - G-) x k")
    assert (
        deck.text
        == export.neuron_deck(drive, STEP, [{}, {}], header="mapping: W = (G+ - G-) x k").text
    )
    assert "* mapping: W = (G+ - G-) x k" in deck.text
    assert deck.text.count(".subckt felif0 mem") == 1
    assert not re.search(r"^\s*Iin\s", deck.text, re.I | re.M)  # the gain stage drives mem
    # the analysis is the caller's (with the netlist's maximum step)
    assert not re.search(r"^\s*\.(tran|meas)", deck.text, re.I | re.M)
    clamped = export.neuron_deck(drive, STEP, [{}, {}], clamp_V=5.0)
    assert "bcl0 0 mem0" in clamped.text


def test_cells_with_variability_take_the_monte_carlo_device_of_their_quantile():
    synapses = SynapticLinear(16, 8, precision="rram", device_variability=True, seed=4)
    preset = synapses.rram_preset
    devices, geometry = cell_geometries(synapses, preset)
    cells = synapses.rram_cells()
    failures = {(f["state"], f["device_index"]) for f in preset.record["monte_carlo"]["failures"]}
    assert len(devices) == preset.record["monte_carlo"]["devices_per_state"]
    for pair, j, i in [(0, 0, 0), (1, 3, 5), (0, 7, 15), (1, 6, 2)]:
        level = int(cells.levels[pair, j, i])
        alive = [d for d in range(len(devices)) if (level, d) not in failures]
        samples = np.asarray(preset.levels[level].conductance_samples_S)
        own = samples[alive.index(int(geometry[pair, j, i]))]
        # the model interpolates between the two sorted samples around the quantile: the cell's
        # device is the nearer one, so its sample is within one sample spacing of the target
        ordered = np.sort(samples)
        u = 0.5 * (1 + math.erf(float(cells.latent[pair, j, i]) / math.sqrt(2)))
        position = u * (len(samples) - 1)
        assert own == ordered[int(round(position))]
        lo, hi = ordered[int(math.floor(position))], ordered[int(math.ceil(position))]
        assert lo - 1e-12 <= float(cells.conductance_S[pair, j, i]) <= hi + 1e-12


def test_invert_monotone_is_exact_on_the_table_and_refuses_unreachable_targets():
    x = np.geomspace(0.01, 10, 20)
    y = 3e-5 * x**0.8
    np.testing.assert_allclose(export.invert_monotone(x, y, y[[2, 7, 19]]), x[[2, 7, 19]])
    with pytest.raises(export.DeckError, match="outside what the cell reaches"):
        export.invert_monotone(x, y, [y[-1] * 1.5])


def _run_dir(tmp_path, experiment: str, overrides: list[str] | None = None):
    config = cfg.load(experiment, overrides)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.dump(config)))
    return run, config


def test_bad_run_directories_get_clear_errors(tmp_path):
    with pytest.raises(CosimError, match="no such run directory"):
        load_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CosimError, match=r"no config\.json"):
        load_run(empty)
    run, config = _run_dir(tmp_path, "braille_felif_fp_v0")
    with pytest.raises(CosimError, match="untrained"):
        load_run(run)
    torch.save({"model": {"unrelated": torch.zeros(1)}}, run / "best.pt")
    with pytest.raises(CosimError, match="cannot load the trained weights"):
        load_run(run)
    torch.save({"model": models.build(config, 0).state_dict()}, run / "best.pt")
    _, model, _ = load_run(run)
    with pytest.raises(CosimError, match="RRAM synapses"):
        hardware_layer(model)
    (run / "config.json").write_text("{not json")
    with pytest.raises(CosimError, match="not a valid run config"):
        load_run(run)


def test_a_network_without_felif_devices_is_refused(tmp_path):
    run, config = _run_dir(tmp_path, "braille_lif_rram_v0")
    torch.save({"model": models.build(config, 0).state_dict()}, run / "best.pt")
    _, model, _ = load_run(run)
    with pytest.raises(CosimError, match="not FeLIF devices"):
        hardware_layer(model)


def test_export_is_deterministic_for_a_run_and_seed(tmp_path, braille_data):
    run, config = _run_dir(tmp_path, "braille_felif_rram_v0")
    torch.save({"model": models.build(config, 0).state_dict()}, run / "best.pt")
    first = export_run(run, tmp_path / "a", samples=2, jobs=1, seed=5)
    second = export_run(run, tmp_path / "b", samples=2, jobs=1, seed=5)
    assert [i["index"] for i in first.items] == [i["index"] for i in second.items]
    names = sorted(p.name for p in (tmp_path / "a" / "decks").iterdir())
    per_sample = math.ceil(27 / NEURONS_PER_DECK)  # 27 FeLIF outputs in decks of at most that
    assert len(names) == 2 + 2 * per_sample  # array read, neuron decks, the first whole circuit
    for name in names:
        assert (tmp_path / "a" / "decks" / name).read_text() == (
            tmp_path / "b" / "decks" / name
        ).read_text()
    full = next(n for n in names if n.startswith("full_"))
    text = (tmp_path / "a" / "decks" / full).read_text()
    cells = re.findall(r"^xc[pn]\d+_\d+ \S+ \S+ jart_vcm1b ", text, re.M)
    assert len(cells) == 2 * 128 * 27  # every cell of the output array
    assert text.count("fgp") == 27 and "gain stage j" in text


def test_a_smaller_k_reuses_what_a_stopped_larger_run_finished():
    """Samples are chosen and simulated as a prefix of one seeded permutation, and a kept
    result is keyed by the circuit alone (not the header), so stopping a K = 50 run after n
    samples and asking for K <= n reuses all of them."""
    from pipelines.cosim import _sample_digest, _sample_indices

    class Task:
        def size(self, split):
            return 1080

    large = _sample_indices(Task(), "test", 50, seed=0)
    small = _sample_indices(Task(), "test", 12, seed=0)
    assert small == large[:12] and len(set(large)) == 50
    assert large != sorted(large)  # not re-sorted, or a prefix would not be a prefix
    body = "Xn0 m0 felif\nI0 0 m0 PWL(0 0 1m 1n)\n.end"
    a = export.NeuronDeck("* run a\n* gains 1 .. 2\n" + body, 1, 1e-3, 1e-6, (2.5,))
    b = export.NeuronDeck("* run b, K = 12\n" + body, 1, 1e-3, 1e-6, (2.5,))
    c = export.NeuronDeck("* run a\n" + body.replace("1n", "2n"), 1, 1e-3, 1e-6, (2.5,))
    assert _sample_digest([a]) == _sample_digest([b]) != _sample_digest([c])


def test_coarse_steps_per_frame_reach_the_comparison(tmp_path):
    """A layer with S coarse steps per frame: the deck's drive is per frame (S coarse steps
    long), the model view's spikes are per coarse step and add up to the trained layer's frame
    counts, and a software readout sees each frame's count of coarse steps holding a spike."""
    from pipelines.cosim import compare
    from pipelines.cosim.network import model_spike_times, reference

    run, config = _run_dir(tmp_path, "braille_felif_s4_rram_v0")
    model = models.build(config, 0).eval()
    layer = hardware_layer(model)
    assert layer.neurons.coarse_steps_per_frame == 4
    assert layer.neurons.frame_dt == pytest.approx(1e-3)
    assert layer.neurons.coarse_dt / layer.neurons.fine_steps == pytest.approx(1e-6)  # 1 us
    inputs = (torch.rand(130, 1, 24, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    ref = reference(model, layer, inputs)
    steps = ref["coarse_spikes"]
    assert steps.shape == (4 * 130, 1, 27)
    assert torch.equal(steps.reshape(130, 4, 1, 27).sum(1), ref["spikes"])
    times = model_spike_times(steps[:, 0], layer.neurons.coarse_dt)
    assert sum(map(len, times)) == int(steps.sum())
    binned = compare._bins([[0.1e-3, 0.3e-3, 0.6e-3, 1.2e-3], [0.95e-3]], 8, 0.25e-3)
    frames = compare._frames(binned, 4)
    assert frames.shape == (2, 1, 2)
    assert frames[:, 0].tolist() == [[3.0, 1.0], [1.0, 0.0]]
    # spike_rule="reset": a coarse step can hold several spikes, and every one counts
    every = compare._bins([[0.1e-3, 0.2e-3, 0.6e-3]], 4, 0.25e-3, count_every_spike=True)
    assert every[:, 0].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert model_spike_times(torch.tensor([[0.0], [2.0], [1.0]]), 1e-3) == [[2e-3, 2e-3, 3e-3]]


COMMITTED = (
    Path(__file__).resolve().parents[1] / "docs/results/cosim/braille_felif_reset_rram_v0_s0"
)


def test_the_committed_comparison_is_of_the_committed_weights(braille_data):
    """``docs/results/cosim/<run>/<run>/`` holds the trained run the committed comparison used (so a
    reader can rerun it): it loads, and on the first compared test samples the network's own
    forward pass fires the output spike counts the comparison recorded for the model."""
    from pipelines.tasks import make_task

    config, model, _ = load_run(COMMITTED / COMMITTED.name)
    summary = json.loads((COMMITTED / "cosim.json").read_text())
    assert summary["experiment"] == config.name and summary["split"] == "test"
    task = make_task(config)
    for sample in summary["samples"][:2]:
        inputs, _, _ = task.batch("test", [sample["index"]], torch.device("cpu"))
        with torch.no_grad():
            _, aux = model(inputs)
        counts = aux["output_spikes"][:, 0].sum(0)
        assert counts.round().int().tolist() == sample["counts"]["model"], sample["index"]
