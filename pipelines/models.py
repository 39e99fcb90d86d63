"""The reference networks of the experiments, built from a resolved config.

JSB Chorales (next-frame prediction, one frame = one coarse step):
    spiking:  notes [T,B,54] -> synapses 54->H -> H spiking neurons (FeLIF/LIF/RLIF)
              -> synapses H->54 -> 54 logits (sigmoid outputs, BCE)
    lstm:     notes -> LSTM(H) -> Linear H->54 -> 54 logits (the non-spiking reference)

Braille letters (27 classes):
    events [T,B,24] -> synapses 24->H -> H hidden neurons (LIF/RLIF, or FeLIF)
                    -> synapses H->27 -> 27 output neurons (FeLIF with BRUNO, or LIF/RLIF)
    logits = count_scale * (output spike counts over the sample); cross-entropy.

The synapse layers are ``bruno.synapses.SynapticLinear`` at the configured precision (fp, n-bit,
calibrated 3-bit RRAM) for every weight matrix of a spiking network; their biases (a constant
input, ``synapse.bias``) stay full precision. A fixed ``input_gain`` (an
amplifier, not a trained weight) scales the synaptic drive into the neurons; the neuron layer turns
drive into current with ``current_scale`` (A per unit).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

JSB_NOTES = 54
# Initial output bias: the log-odds of a note sounding (3.9 of 54 notes per frame on average), so
# training starts from the marginal rate instead of p = 0.5.
JSB_OUTPUT_BIAS = -2.5
BRAILLE_CHANNELS = 24
BRAILLE_CLASSES = 27


def felif_parameters(choice: str):
    """'calibrated' (the calibration preset), 'paper' (the paper's defaults) or a preset path."""
    if choice == "paper":
        return None
    from bruno import presets

    if choice == "calibrated":
        return presets.load_felif_parameters()
    return presets.load_felif_parameters(Path(choice))


def neuron_layer(kind: str, size: int, model: dict, seed: int) -> nn.Module:
    """FeLIF (device model, current in A = current_scale x drive) or LIF/RLIF (dimensionless
    drive, ``model.lif`` parameters, one step of ``coarse_dt`` per frame). An RLIF layer's
    recurrent weights are synapses of the configured precision like the feed-forward ones."""
    from bruno import layers

    if kind == "felif":
        return layers.FeLIFLayer(
            size,
            parameters=felif_parameters(model["felif_parameters"]),
            algorithm=model["algorithm"],
            coarse_gradient=model["coarse_gradient"],
            fine_backend=model["fine_backend"],
            fine_steps=model["fine_steps"],
            coarse_dt=model["coarse_dt"],
            variability_sigma=model["variability_sigma"],
            seed=seed,
            current_scale=model["current_scale"],
        )
    lif = dict(model["lif"], dt=model["coarse_dt"])
    common = dict(variability_sigma=model["variability_sigma"], seed=seed, **lif)
    if kind == "rlif":
        recurrent = synapses(
            size, size, dict(model, synapse=dict(model["synapse"], bias=False)), seed
        )
        return layers.RLIFLayer(size, recurrent_synapses=recurrent, **common)
    return layers.LIFLayer(size, **common)


def synapses(in_features: int, out_features: int, model: dict, seed: int) -> nn.Module:
    from bruno import presets
    from bruno.synapses import SynapticLinear

    synapse = model["synapse"]
    preset = synapse["rram_preset"]
    return SynapticLinear(
        in_features,
        out_features,
        precision=synapse["precision"],
        rram_preset=presets.load_rram_preset(Path(preset)) if preset else None,
        device_variability=synapse["device_variability"],
        read_noise=synapse["read_noise"],
        seed=seed,
        bias=synapse["bias"],
    )


def run_neurons(layer: nn.Module, drive: torch.Tensor, window: int | None) -> torch.Tensor:
    """``layer(drive)``; with ``window`` the state is carried forward between chunks of ``window``
    coarse steps but detached, i.e. gradients flow through at most ``window`` steps of neuron state
    (truncated backpropagation through time; the forward values are unchanged)."""
    if not window or window >= drive.shape[0]:
        return layer(drive)
    outputs, state = [], None
    for start in range(0, drive.shape[0], window):
        out, state = layer(drive[start : start + window], state=state, return_state=True)
        state = type(state)(*(t.detach() for t in state))
        outputs.append(out)
    return torch.cat(outputs)


class JSBSpiking(nn.Module):
    def __init__(self, model: dict, seed: int):
        super().__init__()
        hidden = model["hidden"]
        self.input_gain = float(model["input_gain"])
        self.window = model["grad_window"]
        self.synapses_in = synapses(JSB_NOTES, hidden, model, seed)
        self.neurons = neuron_layer(model["neuron"], hidden, model, seed + 1)
        self.synapses_out = synapses(hidden, JSB_NOTES, model, seed + 2)
        if self.synapses_out.bias is not None:
            with torch.no_grad():
                self.synapses_out.bias.fill_(JSB_OUTPUT_BIAS)

    def forward(self, notes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        drive = self.input_gain * self.synapses_in(notes)
        spikes = run_neurons(self.neurons, drive, self.window)
        logits = self.synapses_out(spikes)
        return logits, {"spikes": spikes}


class JSBLSTM(nn.Module):
    def __init__(self, model: dict, seed: int):
        super().__init__()
        self.lstm = nn.LSTM(JSB_NOTES, model["hidden"])
        self.readout = nn.Linear(model["hidden"], JSB_NOTES)
        with torch.no_grad():
            self.readout.bias.fill_(JSB_OUTPUT_BIAS)

    def forward(self, notes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hidden, _ = self.lstm(notes)
        return self.readout(hidden), {}


class BrailleSpiking(nn.Module):
    def __init__(self, model: dict, seed: int):
        super().__init__()
        hidden = model["hidden"]
        self.input_gain = float(model["input_gain"])
        self.output_gain = float(model["output_gain"])
        self.count_scale = float(model["count_scale"])
        self.window = model["grad_window"]
        self.synapses_in = synapses(BRAILLE_CHANNELS, hidden, model, seed)
        self.hidden = neuron_layer(model["neuron"], hidden, model, seed + 1)
        self.synapses_out = synapses(hidden, BRAILLE_CLASSES, model, seed + 2)
        self.outputs = neuron_layer(model["output_neuron"], BRAILLE_CLASSES, model, seed + 3)

    def forward(self, events: torch.Tensor) -> tuple[torch.Tensor, dict]:
        drive = self.input_gain * self.synapses_in(events)
        hidden_spikes = run_neurons(self.hidden, drive, self.window)
        drive = self.output_gain * self.synapses_out(hidden_spikes)
        output_spikes = run_neurons(self.outputs, drive, self.window)
        counts = output_spikes.sum(0)
        return self.count_scale * counts, {"spikes": hidden_spikes, "output_spikes": output_spikes}


def build(config: dict, seed: int) -> nn.Module:
    """The network of a resolved config; parameters initialised from ``seed``."""
    torch.manual_seed(seed)
    model = config["model"]
    if config["task"] == "jsb":
        return JSBLSTM(model, seed) if model["kind"] == "lstm" else JSBSpiking(model, seed)
    return BrailleSpiking(model, seed)


def presets_used(config: dict) -> dict[str, str]:
    """The preset file behind each device of the network ({"felif": path, "rram": path}), as the
    layers load them: a run records what it was trained on."""
    from bruno import presets

    model = config["model"]
    out = {}
    neurons = {model["neuron"], model.get("output_neuron")}
    if model["kind"] == "spiking" and "felif" in neurons:
        choice = model["felif_parameters"]
        out["felif"] = (
            "paper defaults"
            if choice == "paper"
            else presets.load_felif_preset(None if choice == "calibrated" else Path(choice)).source
        )
    if model["kind"] == "spiking" and model["synapse"]["precision"] == "rram":
        preset = model["synapse"]["rram_preset"]
        out["rram"] = presets.load_rram_preset(Path(preset) if preset else None).source
    return out
