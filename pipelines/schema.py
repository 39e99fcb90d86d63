"""The typed schema of an experiment config (pydantic models; enumerations are the library's own).

Every option sits under the part of the network that reads it, so an option that means nothing for
a network cannot be written: FeLIF options live in a neuron of ``"kind": "felif"``, LIF time
constants in one of ``"kind": "lif"`` / ``"rlif"``, the spike-count readout in the Braille output
layer. Unknown keys, wrong types (no coercion: ``"1"`` is not a number, ``true`` is not 1),
non-finite numbers and out-of-range values are refused, each error naming its key path.

Shape (JSON; defaults in the models below)::

    {"task": "braille", "seeds": [0, 1, 2], "data": {...},
     "model": {"kind": "spiking", "coarse_dt": 0.001, "synapse": {"precision": "fp", ...},
               "hidden": {"size": 128, "gain": 200, "neuron": {"kind": "lif", "tau_mem": 0.02}},
               "output": {"gain": 10, "readout_scale": 0.3,
                          "neuron": {"kind": "felif", "algorithm": "bruno", "fine_steps": 1000}}},
     "optim": {"name": "adamax", "lr": 0.01, "epochs": 12}}

JSB networks have a hidden layer and a linear sigmoid readout (no ``output`` layer); a
``"kind": "lstm"`` or ``"gru"`` model is the non-spiking reference (both tasks). Units: SI.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bruno import algorithms, kernels, layers, surrogate
from bruno.synapses import PRECISIONS

# Literal[...] of a runtime tuple: the enumerations are bruno's, not restated here.
Algorithm = Literal[algorithms.names()]  # type: ignore[valid-type]
CoarseGradient = Literal[algorithms.COARSE_GRADIENTS]  # type: ignore[valid-type]
FineBackend = Literal[kernels.BACKENDS]  # type: ignore[valid-type]
SpikeRule = Literal[layers.SPIKE_RULES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Optimiser = Literal["adamax", "adam", "sgd"]

Positive = Annotated[float, Field(gt=0)]
Gain = Annotated[float, Field(ge=0, le=1e6)]
Sigma = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1, le=100_000)]


class Section(BaseModel):
    """A config section: strict types, no unknown keys, finite numbers, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class FeLIFNeuron(Section):
    """FeLIF device neurons (bruno.layers.FeLIFLayer), trained by ``algorithm``."""

    kind: Literal["felif"]
    preset: str = Field("calibrated", description="'calibrated', 'paper', or a preset path")
    algorithm: Algorithm = "bruno"
    coarse_gradient: CoarseGradient = Field(
        "implicit",
        description="bruno's backward: 'implicit' coarse step, 'euler' (the SPEC's literal form), "
        "'exact' (the fine path's own Jacobian, = BPTT's gradient)",
    )
    fine_backend: FineBackend = "auto"
    fine_steps: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        1000, description="fine steps per coarse step"
    )
    coarse_steps_per_frame: Annotated[int, Field(ge=1, le=1000)] = Field(
        1,
        description="coarse steps per frame of coarse_dt (the model's s per frame); the layer "
        "outputs each frame's spike count: > 1 is closer to a circuit's reset at the crossing",
    )
    spike_rule: SpikeRule = Field(
        "hold",
        description="'hold' (the paper's: a neuron that crossed holds until the next coarse "
        "step) or 'reset' (the circuit's: reset at the crossing fine step, several spikes per "
        "step; the held step's gradient)",
    )
    current_scale: Annotated[float, Field(gt=0, le=1)] = Field(1e-9, description="A per unit")
    reset_voltage: Annotated[float, Field(ge=-5, le=5)] | None = Field(
        None,
        description="the reset circuit's membrane target (V), a circuit-design what-if; null: "
        "the preset's (calibrated and SPEC: -1.5 V). Polarization resets to -Ps either way",
    )
    surrogate_slope: Annotated[float, Field(ge=1e-6, le=1e6)] = Field(
        surrogate.FELIF_SLOPE_PER_VOLT,
        description="the spike test's surrogate slope per volt of membrane above threshold "
        "(a swing from reset to threshold is ~4 V)",
    )
    variability_sigma: Sigma | None = Field(
        0.0, description="device-to-device spread of the preset's fields; null: the preset's"
    )


class LIFNeuron(Section):
    """Current-based LIF neurons (bruno.layers.LIFLayer); drive in units of the threshold."""

    kind: Literal["lif"]
    tau_mem: Annotated[float, Field(ge=1e-9, le=10)] = 20e-3
    tau_syn: Annotated[float, Field(ge=0, le=10)] = Field(5e-3, description="0: no filter")
    threshold: Annotated[float, Field(ge=1e-9, le=1e6)] = 1.0
    reset: Literal["zero", "subtract"] = "zero"
    floor: Annotated[float, Field(ge=-1e6, lt=0)] | None = Field(
        None,
        description="a lower rail of the membrane (units of the drive; null: none), like the "
        "FeLIF's -5 V clip: below it the state is lost and no gradient passes",
    )
    floor_gradient: Literal["none", "straight_through"] = Field(
        "none", description="the rail's gradient: none (its own), or passed straight through"
    )
    reset_potential: Annotated[float, Field(ge=-1e6, le=1e6)] = Field(
        0.0,
        description="the membrane after a 'zero' reset (units of the drive; 0: rest); below 0 "
        "like the FeLIF, which resets to -1.5 V = -0.6 of its 2.5 V threshold",
    )
    adaptation: Annotated[float, Field(ge=0, le=1e6)] = Field(
        0.0,
        description="spike-frequency adaptation: the threshold rises by this much per spike "
        "(units of the drive) and decays back with tau_adaptation; 0: none",
    )
    tau_adaptation: Annotated[float, Field(ge=1e-9, le=100)] = Field(
        0.1, description="s: decay of the adaptive threshold"
    )
    surrogate_slope: Annotated[float, Field(ge=1e-6, le=1e6)] = surrogate.LIF_SLOPE
    variability_sigma: Sigma = 0.0
    train_time_constants: bool = Field(
        False,
        description="train each neuron's tau_mem and tau_syn (from the values above; a tau_syn "
        "of 0 stays 0); no weight decay on them",
    )

    @model_validator(mode="after")
    def _reset_potential_needs_a_zero_reset(self):
        if self.reset_potential and self.reset != "zero":
            raise ValueError("reset_potential is where a 'zero' reset sets v; 'subtract' has none")
        if self.floor is not None and self.reset_potential < self.floor:
            raise ValueError("reset_potential must not be below the floor")
        return self


class RLIFNeuron(LIFNeuron):
    """LIF with recurrent synapses inside the layer (bruno.layers.RLIFLayer)."""

    kind: Literal["rlif"]  # type: ignore[assignment]
    recurrent_gain: Gain = Field(1.0, description="amplifier on the recurrent drive")


Neuron = Annotated[FeLIFNeuron | LIFNeuron | RLIFNeuron, Field(discriminator="kind")]


class Synapse(Section):
    """The weight matrices of a spiking network (bruno.synapses.SynapticLinear)."""

    precision: Precision = "fp"
    rram_preset: str | None = Field(None, description="an RRAM preset path; null: calibrated")
    device_variability: bool = True
    read_noise: bool = True
    bias: bool = True


class HiddenLayer(Section):
    """Synapses into ``size`` neurons; ``gain`` is a fixed amplifier on their drive."""

    size: Count = 150
    gain: Gain = 1.0
    neuron: Neuron


class OutputLayer(Section):
    """Braille: synapses hidden -> 27 output neurons; logits = readout_scale x spike counts
    (+ voltage_readout x the time-mean membrane voltage)."""

    gain: Gain = 1.0
    readout_scale: Annotated[float, Field(ge=1e-6, le=1e6)] = 1.0
    voltage_readout: Annotated[float, Field(ge=0, le=1e6)] = Field(
        0.0,
        description="logits per unit of the output membrane voltage averaged over the sample "
        "(FeLIF: per volt; LIF: per threshold); 0: spike counts only",
    )
    neuron: Neuron


class SpikingModel(Section):
    kind: Literal["spiking"]
    coarse_dt: Annotated[float, Field(ge=1e-9, le=10)] = Field(1e-3, description="s per frame")
    grad_window: Annotated[int, Field(ge=1)] | None = Field(
        None, description="truncate gradients through neuron state to N steps"
    )
    synapse: Synapse = Synapse()
    hidden: HiddenLayer

    def neurons(self) -> list[FeLIFNeuron | LIFNeuron | RLIFNeuron]:
        return [self.hidden.neuron]

    def felif(self) -> FeLIFNeuron | None:
        """The network's FeLIF neuron config (the first one), or None."""
        return next((n for n in self.neurons() if isinstance(n, FeLIFNeuron)), None)


class JSBSpikingModel(SpikingModel):
    """JSB: the readout synapses read the hidden layer's spikes (and, optionally, its membrane
    voltages through a second array)."""

    voltage_readout: bool = Field(
        False,
        description="a second readout synapse array (no bias) read by the hidden membrane "
        "voltages at the end of every frame, in units of the membrane's range (FeLIF: v / 5 V, "
        "the clip; LIF: v / threshold), added to the spike readout's logits",
    )
    readout_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0,
        description="training only: drop each hidden spike and voltage the readout reads with "
        "this probability (inverted dropout, a regulariser of the software readout; the hidden "
        "layer and its devices are untouched)",
    )


class BrailleSpikingModel(SpikingModel):
    output: OutputLayer
    hidden_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0,
        description="training only: drop each hidden spike on its way to the output synapses "
        "with this probability (inverted dropout, a regulariser; the hidden layer, its "
        "recurrence and the network evaluated are untouched)",
    )

    def neurons(self) -> list[FeLIFNeuron | LIFNeuron | RLIFNeuron]:
        return [self.hidden.neuron, self.output.neuron]


class RecurrentModel(Section):
    """The non-spiking references: LSTM or GRU(hidden) -> Linear (JSB: every frame; Braille: the
    last step's hidden state)."""

    kind: Literal["lstm", "gru"]
    hidden: Count = 150

    def neurons(self) -> list:
        return []

    def felif(self) -> None:
        return None


class Optim(Section):
    name: Optimiser = "adamax"
    lr: Annotated[float, Field(ge=0, le=10)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    grad_clip: Annotated[float, Field(ge=0, le=1e6)] | None = 1.0
    batch_size: Count = 16
    epochs: Count = 10
    eval_batch_size: Count = 64
    on_nonfinite_grad: Literal["stop", "skip"] = Field(
        "stop", description="stop the run, or skip that batch's update (counted)"
    )
    time_budget_s: Annotated[float, Field(ge=1)] | None = Field(
        None, description="start no epoch that would end past this"
    )
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate per epoch: constant, or cosine-annealed"
    )
    min_lr_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="cosine: the last epoch's learning rate as a fraction of lr"
    )
    patience: Annotated[int, Field(ge=1)] | None = Field(
        None, description="early stopping: stop after N epochs without validation improvement"
    )


class JSBData(Section):
    grid: Literal["quarter", "8th", "16th"] = "quarter"
    max_train: Annotated[int, Field(ge=1)] | None = None
    max_eval: Annotated[int, Field(ge=1)] | None = None
    max_frames: Annotated[int, Field(ge=2)] | None = None


class Augment(Section):
    """Training-time augmentation of the Braille event trains (never on valid/test)."""

    time_shift: Annotated[int, Field(ge=0, le=1000)] = Field(
        0, description="shift each sample by a random whole number of steps in [-N, N]"
    )
    event_dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="drop each input event with this probability"
    )


class BrailleData(Section):
    n_steps: Count = Field(130, description="coarse steps per 1.3 s sample")
    augment: Augment = Augment()
    split_seed: Annotated[int, Field(ge=0)] = 0
    fractions: list[Annotated[float, Field(ge=0)]] = [0.7, 0.1, 0.2]
    max_train: Annotated[int, Field(ge=1)] | None = None
    max_eval: Annotated[int, Field(ge=1)] | None = None

    @field_validator("fractions")
    @classmethod
    def _split(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or abs(sum(value) - 1) > 1e-9 or value[0] <= 0 or value[2] <= 0:
            raise ValueError("3 non-negative numbers (train, valid, test) summing to 1")
        return value


class Experiment(Section):
    """One run configuration (per seed) of a task."""

    name: str
    description: str = ""
    group: str
    seeds: list[Annotated[int, Field(ge=0)]] = [0]
    device: str | None = Field(
        None,
        description="the device whose calibrated presets the network uses: a device directory "
        "(a name under devices/ or a path); null: $BRUNO_DEVICE (make DEVICE=...), else the "
        "shipped device. A run records the device it used here.",
    )
    optim: Optim = Optim()

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("a non-empty list of distinct integers >= 0")
        return value

    @field_validator("name")
    @classmethod
    def _filename(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("non-empty, only [A-Za-z0-9._-] (it names the run directory)")
        return value


class JSBExperiment(Experiment):
    task: Literal["jsb"]
    data: JSBData = JSBData()
    model: Annotated[JSBSpikingModel | RecurrentModel, Field(discriminator="kind")]


class BrailleExperiment(Experiment):
    task: Literal["braille"]
    data: BrailleData = BrailleData()
    model: Annotated[BrailleSpikingModel | RecurrentModel, Field(discriminator="kind")]


EXPERIMENTS: dict[str, type[Experiment]] = {"jsb": JSBExperiment, "braille": BrailleExperiment}
AnyExperiment = JSBExperiment | BrailleExperiment
