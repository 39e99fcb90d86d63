"""The trained network's side of the co-simulation: the run directory, its hardware layer, the
PyTorch reference pass, and the compact model run as a circuit runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.cosim import export


class CosimError(Exception):
    """A run directory or network the co-simulation cannot take."""


@dataclass
class HardwareLayer:
    """The FeLIF layer of a network, the RRAM synapses that feed it and the fixed gain between."""

    synapses: Any  # bruno.synapses.SynapticLinear
    neurons: Any  # bruno.layers.FeLIFLayer
    gain: float
    readout: Any = None  # software layer reading the spikes (JSB: synapses_out)


def load_run(run_dir: Path) -> tuple[Any, torch.nn.Module, str]:
    """The resolved config and the trained model (best.pt, else last.pt) of a run directory."""
    from pipelines import config as cfg
    from pipelines import models

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CosimError(f"{run_dir}: no such run directory (python -m pipelines train ...)")
    config_file = run_dir / "config.json"
    if not config_file.exists():
        raise CosimError(f"{run_dir}: not a training run (no config.json)")
    checkpoint = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).exists()), None)
    if checkpoint is None:
        raise CosimError(
            f"{run_dir}: untrained (no best.pt or last.pt); train it first: "
            "python -m pipelines train <experiment>"
        )
    try:
        raw = json.loads(config_file.read_text())
        config = cfg.use_device(cfg.resolve(raw, name=raw.get("name")))
    except (json.JSONDecodeError, cfg.ConfigError) as error:
        raise CosimError(f"{config_file}: not a valid run config: {error}") from None
    except ValueError as error:  # the run's device directory (bruno.devices.DeviceError)
        raise CosimError(f"{config_file}: {error}") from None
    model = models.build(config, config.seeds[0])
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
        model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise CosimError(f"{checkpoint}: cannot load the trained weights: {error}") from None
    model.eval()
    return config, model, checkpoint.name


def hardware_layer(model: torch.nn.Module) -> HardwareLayer:
    """The layer the circuit realises, or an error saying why this network has none."""
    from bruno.layers import FeLIFLayer
    from pipelines.models import BrailleSpiking, JSBSpiking

    if isinstance(model, BrailleSpiking):
        layer = HardwareLayer(model.synapses_out, model.outputs, model.output_gain)
    elif isinstance(model, JSBSpiking):
        if model.synapses_voltage is not None:
            raise CosimError(
                "its readout also reads the hidden membrane voltages (voltage_readout); the "
                "co-simulation's software readout reads the SPICE spikes only (train without it)"
            )
        layer = HardwareLayer(
            model.synapses_in, model.neurons, model.input_gain, model.synapses_out
        )
    else:
        raise CosimError(f"a {type(model).__name__} network has no spiking hardware layer")
    if not isinstance(layer.neurons, FeLIFLayer):
        raise CosimError(
            f"its layer is {type(layer.neurons).__name__}, not FeLIF devices: the co-simulation "
            "exports FeLIF neurons (train a config whose FeLIF layer is the outputs or hidden)"
        )
    if layer.synapses.precision != "rram":
        raise CosimError(
            f"its synapses are {layer.synapses.precision!r}: the co-simulation exports calibrated "
            "RRAM synapses (train with --set model.synapse.precision='\"rram\"')"
        )
    return layer


def reference(model: torch.nn.Module, layer: HardwareLayer, inputs: torch.Tensor) -> dict:
    """The PyTorch forward pass, with the hardware layer's input, drive and spikes captured.
    Read noise of the exported synapses is off (the circuit's cells are deterministic); it runs
    on one thread, so its spikes do not depend on the machine."""
    captured: dict[str, torch.Tensor] = {}

    def keep_input(_module, args):
        captured["presynaptic"] = args[0].detach()

    def keep_output(_module, args, output):
        captured["drive"] = args[0].detach()
        # a layer asked for its membrane voltage too (a voltage readout) returns (spikes, v)
        captured["spikes"] = (output[0] if isinstance(output, tuple) else output).detach()

    hooks = [
        layer.synapses.register_forward_pre_hook(keep_input),
        layer.neurons.register_forward_hook(keep_output),
    ]
    read_noise, layer.synapses.read_noise = layer.synapses.read_noise, False
    # one thread: a matmul's summation order depends on the thread count, and a last-bit change
    # can flip a spike at threshold; the decks must not depend on the machine's CPUs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            logits, _ = model(inputs)
            # the spikes of every coarse step (a frame's count is their sum over its steps)
            steps = layer.neurons.coarse_step_spikes(captured["drive"])
    finally:
        torch.set_num_threads(threads)
        layer.synapses.read_noise = read_noise
        for hook in hooks:
            hook.remove()
    frames = steps.reshape(-1, layer.neurons.coarse_steps_per_frame, *steps.shape[1:]).sum(1)
    if not torch.equal(frames, captured["spikes"]):
        raise CosimError("the layer's coarse-step spikes do not add up to its frame counts")
    return {
        "logits": logits,
        "presynaptic": captured["presynaptic"],  # [T, B, M] spikes (0/1)
        "drive_A": captured["drive"].double() * layer.neurons.current_scale,  # [T, B, N]
        "spikes": captured["spikes"],  # [T, B, N] spike counts per frame
        "coarse_spikes": steps,  # [T * S, B, N] spikes per coarse step (0/1 under the held rule)
    }


# ---- neurons: per-neuron netlist parameters and gain factors ----------------------------------


def bias_current(layer: HardwareLayer) -> np.ndarray:
    """Each neuron's constant input (A) from the synapses' full-precision bias: a DC current
    source beside the gain stage (zeros without a bias)."""
    bias = layer.synapses.bias
    if bias is None:
        return np.zeros(layer.neurons.size)
    values = bias.detach().double().numpy()
    return layer.neurons.current_scale * layer.gain * values


def neuron_overrides(layer: HardwareLayer) -> tuple[list[dict[str, float]], np.ndarray]:
    """Each neuron's netlist .param values (its variability draw scales the netlist's nominal
    values; a changed reset target moves v_reset) and its input-gain factor (realised by its
    gain stage)."""
    from calibration.felif.traces import netlist_parameters

    neurons = layer.neurons
    size = neurons.size
    factors = neurons.variability_factors.detach().double().numpy()
    nominal = netlist_parameters()
    overrides: list[dict[str, float]] = [{} for _ in range(size)]
    input_gain = np.ones(size)
    if neurons.variability_sigma > 0:
        for k, field in enumerate(neurons.variability_fields):
            if field == "input_gain":
                input_gain = factors[k].copy()
                continue
            name = export.NETLIST_FOR_FIELD.get(field)
            if name is None:
                raise CosimError(
                    f"neuron variability of {field!r} has no netlist .param to realise it; "
                    f"mapped: {sorted(export.NETLIST_FOR_FIELD)}"
                )
            for j in range(size):
                overrides[j][name] = nominal[name] * float(factors[k, j])
    # a preset's reset target is the netlist's v_reset (calibration fixes it from there); one
    # changed by a run (config reset_voltage, a circuit what-if) is where the switch settles
    reset_voltage = float(neurons.base_parameters.reset_voltage)
    if reset_voltage != nominal["v_reset"]:
        for values in overrides:
            values["v_reset"] = reset_voltage
    base_gain = float(neurons.base_parameters.input_gain)
    return overrides, input_gain * base_gain


def _compact(drive_A: np.ndarray, layer: HardwareLayer, neurons_used, record_every: int | None):
    from bruno import device
    from bruno.felif import FeLIFParameters

    neurons = layer.neurons
    p = neurons.neuron_parameters(torch.float64)
    p = FeLIFParameters(**{f: getattr(p, f)[neurons_used] for f in p.field_names()})
    per_frame = neurons.fine_steps * neurons.coarse_steps_per_frame
    fine = torch.from_numpy(np.repeat(drive_A, per_frame, axis=0)).double()
    dt = neurons.coarse_dt / neurons.fine_steps
    return device.simulate(fine, p, dt=dt, record_every=record_every or fine.shape[0])


def compact_spikes(drive_A: np.ndarray, layer: HardwareLayer) -> list[list[float]]:
    """The compact model's spike times under ``drive_A`` [T, N] (one row per frame) with reset
    at the crossing."""
    trace = _compact(drive_A, layer, slice(None), None)
    return [list(t) for t in trace.spike_times]


def compact_membrane(
    drive_A: np.ndarray, layer: HardwareLayer, neuron: int, record_every: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """One neuron's compact-model membrane (time s, v V) under its column of ``drive_A``."""
    trace = _compact(drive_A[:, [neuron]], layer, [neuron], record_every)
    return trace.time.numpy(), trace.v[:, 0].numpy()


def model_spike_times(spikes: torch.Tensor, dt: float) -> list[list[float]]:
    """The trained layer's coarse-step spike counts [T * S, N] as times: the end of the coarse
    step (``dt``) that fired, once per spike (a reset-rule step can hold several)."""
    return [
        [(k + 1) * dt for k in torch.nonzero(spikes[:, j]).flatten().tolist()
         for _ in range(int(spikes[k, j]))]
        for j in range(spikes.shape[1])
    ]  # fmt: skip
