"""The reference networks of the experiments, built from a resolved config.

JSB Chorales (next-frame prediction, one frame = one coarse step):
    spiking:  notes [T,B,54] -> synapses 54->H -> H spiking neurons (FeLIF/LIF/RLIF)
              -> synapses H->54 -> 54 logits (sigmoid outputs, BCE)
              [+ synapses H->54 read by the membrane voltages (voltage_readout)]
    lstm/gru: notes -> LSTM/GRU(H) -> Linear H->54 -> 54 logits (the non-spiking references)

Braille letters (27 classes):
    events [T,B,24] -> synapses 24->H -> H hidden neurons (LIF/RLIF, or FeLIF)
                    -> synapses H->27 -> 27 output neurons (FeLIF with BRUNO, or LIF/RLIF)
                       (in training, optionally, dropout on the hidden spikes into them)
    logits = count_scale * (output spike counts over the sample)
             [+ voltage_readout * (output membrane voltage averaged over the sample)];
    cross-entropy.
    lstm/gru: events -> LSTM/GRU(H) -> Linear H->27 on the last step's hidden state.

The synapse layers are ``bruno.synapses.SynapticLinear`` at the configured precision (fp, n-bit,
calibrated 3-bit RRAM) for every weight matrix of a spiking network; their biases (a constant
input, ``synapse.bias``) stay full precision. Each layer's fixed ``gain`` (an amplifier, not a
trained weight) scales the synaptic drive into its neurons; a FeLIF layer turns drive into current
with ``current_scale`` (A per unit). Truncated gradients (``grad_window``) are the layers' own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines import schema

JSB_NOTES = 54
# Initial output bias: the log-odds of a note sounding (3.9 of 54 notes per frame on average), so
# training starts from the marginal rate instead of p = 0.5.
JSB_OUTPUT_BIAS = -2.5
BRAILLE_CHANNELS = 24
BRAILLE_CLASSES = 27


def felif_preset(choice: str, reset_voltage: float | None = None):
    """'calibrated' (the calibrated preset), 'paper' (paper defaults) or a preset path; with
    ``reset_voltage`` (V) its reset target replaced (everything else the preset's)."""
    import dataclasses

    from bruno import presets
    from bruno.felif import FeLIFParameters

    if choice != "paper":
        preset = presets.load_felif_preset(None if choice == "calibrated" else Path(choice))
        if reset_voltage is None:
            return preset
    elif reset_voltage is None:
        return None
    else:
        preset = presets.FeLIFPreset(parameters=FeLIFParameters(), variability_sigma=0.0)
    parameters = dataclasses.replace(preset.parameters, reset_voltage=float(reset_voltage))
    return dataclasses.replace(preset, parameters=parameters)


def neuron_layer(
    neuron: schema.FeLIFNeuron | schema.LIFNeuron,
    size: int,
    model: schema.SpikingModel,
    seed: int,
) -> nn.Module:
    """The layer of a neuron config: FeLIF (device model, current in A = current_scale x drive)
    or LIF/RLIF (dimensionless drive, one step of ``coarse_dt`` per frame). An RLIF layer's
    recurrent weights are synapses of the configured precision like the feed-forward ones."""
    from bruno import layers

    # a neuron config's options are named like the layer's keyword arguments
    common = dict(seed=seed, grad_window=model.grad_window)
    if isinstance(neuron, schema.FeLIFNeuron):
        options = neuron.model_dump(exclude={"kind", "preset", "reset_voltage"})
        return layers.FeLIFLayer(
            size,
            parameters=felif_preset(neuron.preset, neuron.reset_voltage),
            coarse_dt=model.coarse_dt / neuron.coarse_steps_per_frame,
            **options,
            **common,
        )
    lif = dict(neuron.model_dump(exclude={"kind"}), dt=model.coarse_dt, **common)
    if isinstance(neuron, schema.RLIFNeuron):
        recurrent = synapses(size, size, model.synapse.model_copy(update={"bias": False}), seed)
        return layers.RLIFLayer(size, recurrent_synapses=recurrent, **lif)
    return layers.LIFLayer(size, **lif)


def synapses(in_features: int, out_features: int, synapse: schema.Synapse, seed: int) -> nn.Module:
    from bruno import presets
    from bruno.synapses import SynapticLinear

    preset = synapse.rram_preset
    return SynapticLinear(
        in_features,
        out_features,
        precision=synapse.precision,
        rram_preset=presets.load_rram_preset(Path(preset)) if preset else None,
        device_variability=synapse.device_variability,
        read_noise=synapse.read_noise,
        seed=seed,
        bias=synapse.bias,
    )


class JSBSpiking(nn.Module):
    def __init__(self, model: schema.JSBSpikingModel, seed: int):
        super().__init__()
        hidden = model.hidden
        self.input_gain = float(hidden.gain)
        self.synapses_in = synapses(JSB_NOTES, hidden.size, model.synapse, seed)
        self.neurons = neuron_layer(hidden.neuron, hidden.size, model, seed + 1)
        self.synapses_out = synapses(hidden.size, JSB_NOTES, model.synapse, seed + 2)
        if self.synapses_out.bias is not None:
            with torch.no_grad():
                self.synapses_out.bias.fill_(JSB_OUTPUT_BIAS)
        self.readout_dropout = nn.Dropout(model.readout_dropout)
        self.synapses_voltage = None
        if model.voltage_readout:
            from bruno.felif import V_CLIP
            from bruno.layers import FeLIFLayer

            no_bias = model.synapse.model_copy(update={"bias": False})
            self.synapses_voltage = synapses(hidden.size, JSB_NOTES, no_bias, seed + 3)
            self.voltage_unit = (
                V_CLIP if isinstance(self.neurons, FeLIFLayer) else hidden.neuron.threshold
            )

    def forward(self, notes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        drive = self.input_gain * self.synapses_in(notes)
        if self.synapses_voltage is None:
            spikes = self.neurons(drive)
            return self.synapses_out(self.readout_dropout(spikes)), {"spikes": spikes}
        spikes, voltage = self.neurons(drive, return_voltage=True)
        voltage = self.readout_dropout(voltage / self.voltage_unit)
        logits = self.synapses_out(self.readout_dropout(spikes)) + self.synapses_voltage(voltage)
        return logits, {"spikes": spikes}


class Recurrent(nn.Module):
    """LSTM/GRU -> Linear: logits per frame (JSB) or from the last step's hidden state
    (Braille, ``last_only``)."""

    def __init__(self, model: schema.RecurrentModel, inputs: int, outputs: int, last_only: bool):
        super().__init__()
        cell = nn.LSTM if model.kind == "lstm" else nn.GRU
        self.rnn = cell(inputs, model.hidden)
        self.readout = nn.Linear(model.hidden, outputs)
        self.last_only = last_only
        if not last_only:
            with torch.no_grad():
                self.readout.bias.fill_(JSB_OUTPUT_BIAS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hidden, _ = self.rnn(x)
        return self.readout(hidden[-1] if self.last_only else hidden), {}


class BrailleSpiking(nn.Module):
    def __init__(self, model: schema.BrailleSpikingModel, seed: int):
        super().__init__()
        hidden, output = model.hidden, model.output
        self.input_gain = float(hidden.gain)
        self.output_gain = float(output.gain)
        self.count_scale = float(output.readout_scale)
        self.voltage_readout = float(output.voltage_readout)
        self.synapses_in = synapses(BRAILLE_CHANNELS, hidden.size, model.synapse, seed)
        self.hidden = neuron_layer(hidden.neuron, hidden.size, model, seed + 1)
        self.synapses_out = synapses(hidden.size, BRAILLE_CLASSES, model.synapse, seed + 2)
        self.outputs = neuron_layer(output.neuron, BRAILLE_CLASSES, model, seed + 3)
        self.hidden_dropout = nn.Dropout(model.hidden_dropout)

    def forward(self, events: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hidden_spikes = self.hidden(self.input_gain * self.synapses_in(events))
        drive = self.output_gain * self.synapses_out(self.hidden_dropout(hidden_spikes))
        aux = {"spikes": hidden_spikes}
        if self.voltage_readout:
            output_spikes, voltage = self.outputs(drive, return_voltage=True)
            logits = self.voltage_readout * voltage.mean(0)
        else:
            output_spikes, logits = self.outputs(drive), 0.0
        aux["output_spikes"] = output_spikes
        return logits + self.count_scale * output_spikes.sum(0), aux


def build(config: schema.AnyExperiment, seed: int) -> nn.Module:
    """The network of a resolved config; parameters initialised from ``seed``."""
    torch.manual_seed(seed)
    model = config.model
    jsb = config.task == "jsb"
    if isinstance(model, schema.RecurrentModel):
        inputs, outputs = (JSB_NOTES, JSB_NOTES) if jsb else (BRAILLE_CHANNELS, BRAILLE_CLASSES)
        return Recurrent(model, inputs, outputs, last_only=not jsb)
    return JSBSpiking(model, seed) if jsb else BrailleSpiking(model, seed)


def presets_used(config: schema.AnyExperiment) -> dict[str, str]:
    """The preset file behind each device of the network ({"felif": path, "rram": path}), as the
    layers load them: a run records what it was trained on."""
    from bruno import presets

    model = config.model
    out = {}
    felif = model.felif()
    if felif is not None:
        preset = felif_preset(felif.preset)
        out["felif"] = "paper defaults" if preset is None else preset.source
    if model.kind == "spiking" and model.synapse.precision == "rram":
        path = model.synapse.rram_preset
        out["rram"] = presets.load_rram_preset(Path(path) if path else None).source
    return out
