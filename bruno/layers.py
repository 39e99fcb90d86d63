"""Spiking layers: FeLIF (the paper's device neuron, trained by a named algorithm), LIF and RLIF.

:class:`SpikingLayer` owns what every layer shares: ``forward(x)`` takes the time-major drive
``x`` of shape ``[T, B, N]`` (one step per coarse step / frame) and returns spikes ``[T, B, N]``
as float 0/1 with a surrogate gradient (:mod:`bruno.surrogate`); ``forward(x, state=...,
return_state=True)`` continues from / returns the state; ``grad_window=N`` detaches the state
every N steps (truncated BPTT: values unchanged, gradients through at most N steps of neuron
state); ``record_state = True`` keeps the last traces (``last_<name>``) for inspection. A neuron
layer supplies only its state, its per-forward constants and one step.
Everything is plain torch apart from the FeLIF fine path, so the layers run unchanged on CUDA
(where the fine path is the torch reference loop: the fused kernel is CPU code).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from bruno import algorithms, kernels, presets
from bruno.felif import FeLIFParameters, FeLIFState, crossed, initial_state, reset
from bruno.kernels import ffi
from bruno.lif import LIFParameters, LIFState, lif_step
from bruno.surrogate import FELIF_SLOPE_PER_VOLT, LIF_SLOPE, spike
from bruno.synapses import SynapticLinear


def _check_drive(x: torch.Tensor, size: int, reference: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != size:
        raise ValueError(
            f"{name}: input must have shape [T, B, {size}] (time-major), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name}: input must be floating point, got {x.dtype}")
    if x.device != reference.device:
        raise ValueError(
            f"{name}: input is on {x.device} but the layer is on {reference.device}; move one"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: input contains NaN or Inf")


#: FeLIF spike rules: "hold" (the paper's: a neuron that crossed holds until the next coarse step)
#: or "reset" (the circuit's: reset at the crossing fine step).
SPIKE_RULES = ("hold", "reset")


def _draw_factors(count: int, size: int, sigma: float, seed: int) -> torch.Tensor:
    """Per-neuron factors 1 + sigma N(0,1), floored at 0.05 (never reached for sigma ~ 0.1)."""
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.randn((count, size), generator=generator, dtype=torch.float64)
    return (1.0 + sigma * z).clamp_min(0.05)


class SpikingLayer(nn.Module):
    """The one time loop of every neuron layer (module docstring). Subclasses define
    :meth:`initial_state`, :meth:`prepare` (per-forward constants, e.g. per-neuron parameters in
    the input's dtype) and :meth:`step` (one frame: spikes, next state, recorded traces named by
    ``recorded``)."""

    recorded: tuple[str, ...] = ("v",)

    def __init__(self, size: int, grad_window: int | None = None, record_state: bool = False):
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size}")
        if grad_window is not None and (int(grad_window) != grad_window or grad_window < 1):
            raise ValueError(f"grad_window must be a positive integer or None, got {grad_window}")
        self.size = int(size)
        self.grad_window = None if grad_window is None else int(grad_window)
        self.record_state = record_state
        for name in self.recorded:
            setattr(self, f"last_{name}", None)

    def initial_state(self, batch: int, dtype: torch.dtype, device) -> tuple:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(self, state: tuple, frame: torch.Tensor, prepared: Any):
        """(spikes [B, N], next state, traces to record: one tensor per name in ``recorded``)."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        _check_drive(x, self.size, self.variability_factors, type(self).__name__)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple | None = None,
        return_state: bool = False,
        return_voltage: bool = False,
    ):
        """Spikes ``[T, B, N]``; with ``return_state`` also the end state, with
        ``return_voltage`` also the membrane voltage at the end of every step ``[T, B, N]``
        (before the reset; in the graph, for a readout of the membrane)."""
        self.check_input(x)
        batch = x.shape[1]
        prepared = self.prepare(x)
        if state is None:
            state = self.initial_state(batch, x.dtype, x.device)
        elif any(t.shape != (batch, self.size) for t in state):
            raise ValueError(
                f"{type(self).__name__}: state tensors must have shape [{batch}, {self.size}]"
            )
        spikes, traces, voltages = [], [], []
        # unbind, not x[k]: indexing makes each step's backward zero-fill a full [T, B, N] tensor
        for k, frame in enumerate(x.unbind(0)):
            if self.grad_window and k and k % self.grad_window == 0:
                state = type(state)(*(t.detach() for t in state))
            s, state, trace = self.step(state, frame, prepared)
            spikes.append(s)
            if return_voltage:
                voltages.append(trace[0])
            if self.record_state:
                traces.append([t.detach() for t in trace])
        if self.record_state:
            for j, name in enumerate(self.recorded):
                setattr(
                    self, f"last_{name}", torch.stack([t[j] for t in traces]) if traces else None
                )
        out = torch.stack(spikes) if spikes else x.new_zeros(x.shape)
        result = (out, state) if return_state else (out,)
        if return_voltage:
            result += (torch.stack(voltages) if voltages else x.new_zeros(x.shape),)
        return result if len(result) > 1 else out


class FeLIFLayer(SpikingLayer):
    """A layer of ``size`` FeLIF neurons driven by ``current_scale * x`` amperes.

    ``parameters``: a :class:`bruno.presets.FeLIFPreset` (the calibrated device:
    ``bruno.presets.load_felif_preset()``), bare :class:`FeLIFParameters`, or None for the
    SPEC/paper defaults. ``algorithm`` is one of :func:`bruno.algorithms.names`;
    ``coarse_gradient`` selects BRUNO's coarse Jacobian (:data:`bruno.algorithms.COARSE_STEPS`).
    Device-to-device variability: each field in ``variability_fields`` is drawn per neuron as
    ``mu * (1 + variability_sigma * N(0, 1))`` from ``seed``; :meth:`resample_variability` redraws.
    Left as None, both come from the preset (its calibrated spread), or are the SPEC's fields with
    sigma 0 for bare parameters.
    ``fine_backend`` picks the fine path's backend (:data:`bruno.kernels.BACKENDS`): ``"torch"``
    forces the torch loop (bit-identical to ``bptt`` values), ``"native"`` the fused kernel (an
    error where it cannot run), ``"auto"`` the kernel where it applies.
    ``coarse_steps_per_frame`` S: one input frame lasts S coarse steps of ``coarse_dt`` (the
    drive held), and the layer's output for the frame is the number of those steps that spiked
    (0..S). A neuron can fire at most once per coarse step and loses the rest of the step after a
    crossing (the held semantics); S > 1 brings that closer to a circuit, which resets at the
    crossing (:mod:`bruno.device`), at S times the coarse steps. The values and gradients equal
    those of S = 1 on every frame repeated S times (:meth:`coarse_step_spikes`; tested).
    ``spike_rule`` (:data:`SPIKE_RULES`): ``"hold"`` (default, the paper's, above) or
    ``"reset"``, the circuit's: the fine path resets at the crossing fine step and integrates on,
    so a coarse step's output is its number of crossings (any integer) and its values are those
    :mod:`bruno.device` and ngspice give; the gradient is the held step's
    (:func:`bruno.algorithms.circuit_step`).
    """

    recorded = ("v", "polarization")

    def __init__(
        self,
        size: int,
        parameters: presets.FeLIFPreset | FeLIFParameters | None = None,
        algorithm: str = "bruno",
        fine_steps: int = 1000,
        coarse_dt: float = 1e-3,
        variability_sigma: float | None = None,
        seed: int = 0,
        current_scale: float = 1e-9,
        *,
        variability_fields: tuple[str, ...] | None = None,
        surrogate_slope: float = FELIF_SLOPE_PER_VOLT,
        fine_backend: str = "auto",
        coarse_gradient: str = "implicit",
        coarse_steps_per_frame: int = 1,
        spike_rule: str = "hold",
        grad_window: int | None = None,
        record_state: bool = False,
    ) -> None:
        super().__init__(size, grad_window, record_state)
        if spike_rule not in SPIKE_RULES:
            raise ValueError(f"spike_rule must be one of {SPIKE_RULES}, got {spike_rule!r}")
        if spike_rule == "reset" and algorithm == "coarse":
            raise ValueError(
                "spike_rule 'reset' resets at the crossing fine step; algorithm 'coarse' has no "
                "fine steps (use bruno, bptt or checkpoint)"
            )
        if int(coarse_steps_per_frame) != coarse_steps_per_frame or coarse_steps_per_frame < 1:
            raise ValueError(
                f"coarse_steps_per_frame must be a positive integer, got {coarse_steps_per_frame}"
            )
        if coarse_gradient not in algorithms.COARSE_GRADIENTS:
            raise ValueError(
                f"coarse_gradient must be one of {algorithms.COARSE_GRADIENTS}, "
                f"got {coarse_gradient!r}"
            )
        if int(fine_steps) != fine_steps or fine_steps < 1:
            raise ValueError(f"fine_steps must be a positive integer, got {fine_steps}")
        for name, value in (("coarse_dt", coarse_dt), ("current_scale", current_scale)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        preset = parameters if isinstance(parameters, presets.FeLIFPreset) else None
        if preset is not None:
            parameters = preset.parameters
        if variability_sigma is None:
            variability_sigma = preset.variability_sigma if preset is not None else 0.0
        if variability_fields is None:
            variability_fields = (
                preset.variability_fields
                if preset is not None
                else presets.DEFAULT_VARIABILITY_FIELDS
            )
        if not (math.isfinite(variability_sigma) and variability_sigma >= 0):
            raise ValueError(f"variability_sigma must be finite and >= 0, got {variability_sigma}")
        kernels.check_backend(fine_backend)  # validates the name
        algorithms.get(algorithm)  # validates the name
        parameters = FeLIFParameters() if parameters is None else parameters
        if not isinstance(parameters, FeLIFParameters):
            raise TypeError("parameters must be a FeLIFPreset, FeLIFParameters or None")
        presets.validate_felif_parameters(parameters)
        unknown = set(variability_fields) - set(parameters.field_names())
        if unknown:
            raise ValueError(f"unknown variability field(s) {sorted(unknown)}")
        self.algorithm = algorithm
        self.fine_steps = int(fine_steps)
        self.coarse_dt = float(coarse_dt)
        self.current_scale = float(current_scale)
        self.variability_sigma = float(variability_sigma)
        self.variability_fields = tuple(variability_fields)
        self.surrogate_slope = float(surrogate_slope)
        self.fine_backend = fine_backend
        self.coarse_gradient = coarse_gradient
        self.coarse_steps_per_frame = int(coarse_steps_per_frame)
        self.spike_rule = spike_rule
        self.seed = int(seed)
        self.base_parameters = parameters
        # Per-neuron base values of every field (tensor-valued fields must broadcast to [size]).
        base = torch.stack(
            [
                torch.broadcast_to(
                    torch.as_tensor(getattr(parameters, f), dtype=torch.float64), (self.size,)
                )
                for f in parameters.field_names()
            ]
        )
        self._base_values = (
            base  # float64 CPU master copy (not a buffer: .float() must not round it)
        )
        self._base_cache: dict = {}
        self.register_buffer(
            "variability_factors", torch.ones(len(self.variability_fields), self.size)
        )
        self._version = 0
        self._coefficient_cache: dict = {}
        self.resample_variability(self.seed)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, algorithm={self.algorithm!r}, fine_steps={self.fine_steps}, "
            f"coarse_dt={self.coarse_dt}, coarse_steps_per_frame={self.coarse_steps_per_frame}, "
            f"spike_rule={self.spike_rule!r}, variability_sigma={self.variability_sigma}"
        )

    @property
    def frame_dt(self) -> float:
        """Duration of one input frame (s): ``coarse_steps_per_frame`` coarse steps."""
        return self.coarse_dt * self.coarse_steps_per_frame

    def coarse_step_spikes(self, x: torch.Tensor) -> torch.Tensor:
        """The spikes of every coarse step, ``[T * S, B, N]`` for frames ``x`` ``[T, B, N]``:
        :meth:`forward` on every frame repeated S times, one coarse step each; ``forward(x)`` is
        their sum over each frame's S steps (the same computations in the same order)."""
        steps = self.coarse_steps_per_frame
        self.coarse_steps_per_frame = 1
        try:
            return self.forward(x.repeat_interleave(steps, dim=0))
        finally:
            self.coarse_steps_per_frame = steps

    def resample_variability(self, seed: int | None = None) -> None:
        """Draw new per-neuron device parameters (seed None: the next seed after the last draw)."""
        self.seed = self.seed + 1 if seed is None else int(seed)
        factors = _draw_factors(
            len(self.variability_fields), self.size, self.variability_sigma, self.seed
        )
        if self.variability_sigma == 0:
            factors = torch.ones_like(factors)
        self.variability_factors.copy_(factors.to(self.variability_factors))
        self._version += 1
        self._coefficient_cache.clear()

    def neuron_parameters(self, dtype: torch.dtype = torch.float32, device=None) -> FeLIFParameters:
        """FeLIFParameters whose fields are per-neuron tensors of shape [size]."""
        device = self.variability_factors.device if device is None else device
        key = (str(device), dtype)
        if key not in self._base_cache:
            self._base_cache[key] = self._base_values.to(device=device, dtype=dtype)
        base = self._base_cache[key]
        names = self.base_parameters.field_names()
        values = {name: base[i] for i, name in enumerate(names)}
        factors = self.variability_factors.to(device=device, dtype=dtype)
        for j, name in enumerate(self.variability_fields):
            values[name] = values[name] * factors[j]
        return FeLIFParameters(**values)

    def initial_state(
        self, batch: int, dtype: torch.dtype = torch.float32, device=None
    ) -> FeLIFState:
        """The rest state (v = 0, P = -Ps) of every neuron."""
        device = self.variability_factors.device if device is None else device
        p = self.neuron_parameters(dtype, device)
        return initial_state((batch, self.size), p, device=device, dtype=dtype)

    def _coefficients(
        self, p: FeLIFParameters, batch: int, dtype: torch.dtype, device
    ) -> torch.Tensor | None:
        if (
            device.type != "cpu"
            or self.algorithm != "bruno"
            or kernels.check_backend(self.fine_backend) == "torch"
        ):
            return None
        key = (batch, dtype, self._version)
        if key not in self._coefficient_cache:
            self._coefficient_cache.clear()
            self._coefficient_cache[key] = ffi.pack_coefficients(p, (batch, self.size), dtype)
        return self._coefficient_cache[key]

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"FeLIFLayer: input must be float32 or float64, got {x.dtype} (the device "
                "equations span 1e-15..1e13 and overflow in half precision)"
            )

    def prepare(self, x: torch.Tensor) -> tuple:
        p = self.neuron_parameters(x.dtype, x.device)
        ctx = algorithms.CoarseStepContext(
            self.fine_steps,
            self.coarse_dt,
            self.fine_backend,
            self._coefficients(p, x.shape[1], x.dtype, x.device),
            self.coarse_gradient,
        )
        return p, ctx, algorithms.get(self.algorithm)

    def step(self, state: FeLIFState, frame: torch.Tensor, prepared: tuple):
        """One frame: ``coarse_steps_per_frame`` coarse steps by the layer's algorithm, each with
        the spike test on its end state and the reset (values detached from the graph) applied
        at the start of the next (``spike_rule="reset"``: at the crossing fine steps inside it);
        returns the frame's spike count and, as its membrane trace, the end-of-step voltage
        (before the reset; reset rule: V_thr for a step that fired) averaged over the steps."""
        p, ctx, coarse_step = prepared
        current = self.current_scale * frame
        count, voltages = None, []
        for _ in range(self.coarse_steps_per_frame):
            if self.spike_rule == "reset":
                circuit = algorithms.circuit_step(self.algorithm, state, current, p, ctx)
                s = spike(circuit.spike_voltage - p.threshold_voltage, self.surrogate_slope)
                s = circuit.count + (s - s.detach())  # the crossings, the surrogate's gradient
                new = state = circuit.state
                voltages.append(circuit.spike_voltage)
            else:
                new = coarse_step(state, current, p, ctx)
                s = spike(new.v - p.threshold_voltage, self.surrogate_slope)
                voltages.append(new.v)
                state = reset(new, crossed(new.v, p), p)
            count = s if count is None else count + s
        v = voltages[0] if len(voltages) == 1 else torch.stack(voltages).mean(0)
        return count, state, (v, new.polarization)


class LIFLayer(SpikingLayer):
    """Current-based LIF neurons (see :mod:`bruno.lif`), one step of ``dt`` per input frame.

    Optional per-neuron variability of ``tau_mem``, ``tau_syn`` and ``threshold``
    (``mu * (1 + variability_sigma * N(0,1))``, seeded, :meth:`resample_variability`).
    With ``train_time_constants`` each neuron's nominal ``tau_mem`` and ``tau_syn`` are trained
    parameters (``log_tau_mem``, ``log_tau_syn``: log-seconds, so a time constant stays > 0;
    float64 whatever the layer's dtype), starting at the configured values; the variability
    factors multiply the trained nominal values, as a device's mismatch multiplies whatever it
    is programmed to. A ``tau_syn`` of 0 (no filter) stays 0.
    """

    recurrent = False

    def __init__(
        self,
        size: int,
        tau_mem: float = 20e-3,
        tau_syn: float = 5e-3,
        dt: float = 1e-3,
        threshold: float = 1.0,
        reset: str = "zero",
        floor: float | None = None,
        floor_gradient: str = "none",
        reset_potential: float = 0.0,
        adaptation: float = 0.0,
        tau_adaptation: float = 0.1,
        surrogate_slope: float = LIF_SLOPE,
        variability_sigma: float = 0.0,
        train_time_constants: bool = False,
        seed: int = 0,
        grad_window: int | None = None,
        record_state: bool = False,
    ) -> None:
        super().__init__(size, grad_window, record_state)
        self.parameters_ = LIFParameters(
            tau_mem,
            tau_syn,
            threshold,
            dt,
            reset,
            floor,
            floor_gradient,
            reset_potential,
            adaptation,
            tau_adaptation,
        )
        self.parameters_.validate()
        self.train_time_constants = bool(train_time_constants)
        if self.train_time_constants:
            for name in ("tau_mem", "tau_syn"):
                value = float(getattr(self.parameters_, name))
                if value > 0:
                    # float64, so exp(log tau) rounds to the configured tau in float32
                    start = torch.full((self.size,), math.log(value), dtype=torch.float64)
                    setattr(self, f"log_{name}", nn.Parameter(start))
        self.surrogate_slope = float(surrogate_slope)
        self.variability_sigma = float(variability_sigma)
        if not (math.isfinite(self.variability_sigma) and self.variability_sigma >= 0):
            raise ValueError(f"variability_sigma must be finite and >= 0, got {variability_sigma}")
        self.seed = int(seed)
        self.register_buffer("variability_factors", torch.ones(3, self.size))
        self.resample_variability(self.seed)

    def resample_variability(self, seed: int | None = None) -> None:
        self.seed = self.seed + 1 if seed is None else int(seed)
        if self.variability_sigma == 0:
            self.variability_factors.fill_(1.0)
            return
        factors = _draw_factors(3, self.size, self.variability_sigma, self.seed)
        self.variability_factors.copy_(factors.to(self.variability_factors))

    def neuron_parameters(self, dtype=torch.float32, device=None) -> LIFParameters:
        f = self.variability_factors.to(dtype=dtype, device=device)
        p = self.parameters_
        tau = {}
        for name in ("tau_mem", "tau_syn"):
            trained = getattr(self, f"log_{name}", None)
            tau[name] = getattr(p, name) if trained is None else trained.exp().to(dtype)
        return dataclasses.replace(
            p,
            tau_mem=tau["tau_mem"] * f[0],
            tau_syn=tau["tau_syn"] * f[1],
            threshold=p.threshold * f[2],
        )

    def extra_repr(self) -> str:
        p = self.parameters_
        return (
            f"size={self.size}, tau_mem={p.tau_mem}, tau_syn={p.tau_syn}, dt={p.dt}, "
            f"threshold={p.threshold}, adaptation={p.adaptation}, "
            f"tau_adaptation={p.tau_adaptation}, train_time_constants={self.train_time_constants}"
        )

    def _recurrent_input(self, previous_spikes: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    def initial_state(self, batch: int, dtype: torch.dtype = torch.float32, device=None):
        zeros = torch.zeros(batch, self.size, dtype=dtype, device=device)
        return LIFState(zeros, zeros, zeros, zeros)

    def prepare(self, x: torch.Tensor) -> LIFParameters:
        return self.neuron_parameters(x.dtype, x.device)

    def step(self, state: LIFState, frame: torch.Tensor, p: LIFParameters):
        drive = frame + self._recurrent_input(state.spikes) if self.recurrent else frame
        state = lif_step(state, drive, p, self.surrogate_slope)
        return state.spikes, state, (state.v,)


class RLIFLayer(LIFLayer):
    """LIF with recurrent weights inside: drive_t = x_t + recurrent_gain W_rec s_{t-1}.

    The recurrent synapses are a :class:`bruno.synapses.SynapticLinear`, so they can be
    quantised like the feed-forward ones: pass one as ``recurrent_synapses`` (size -> size, no
    bias), or let the layer build one of ``recurrent_precision`` ("fp", "8bit", "4bit", "3bit"
    or "rram").
    """

    recurrent = True

    def __init__(
        self,
        size: int,
        *,
        recurrent_precision: str = "fp",
        rram_preset: presets.RRAMPreset | None = None,
        recurrent_synapses: SynapticLinear | None = None,
        recurrent_gain: float = 1.0,
        seed: int = 0,
        **lif_options: Any,
    ) -> None:
        """``lif_options``: the keyword arguments of :class:`LIFLayer` (time constants, dt,
        threshold, reset, surrogate slope, variability, grad_window, record_state).
        ``recurrent_gain`` is a fixed amplifier on the recurrent drive (like a layer's input
        gain: the recurrent synapses' initial weights are O(1/sqrt(size)))."""
        super().__init__(size, seed=seed, **lif_options)
        if not (math.isfinite(recurrent_gain) and recurrent_gain >= 0):
            raise ValueError(f"recurrent_gain must be finite and >= 0, got {recurrent_gain}")
        self.recurrent_gain = float(recurrent_gain)
        if recurrent_synapses is None:
            recurrent_synapses = SynapticLinear(
                size,
                size,
                precision=recurrent_precision,
                rram_preset=rram_preset,
                seed=seed,
                bias=False,
            )
        elif (recurrent_synapses.in_features, recurrent_synapses.out_features) != (size, size):
            raise ValueError(f"recurrent_synapses must map {size} -> {size} neurons")
        elif recurrent_synapses.bias is not None:
            raise ValueError("recurrent_synapses must have no bias")
        self.recurrent_weights = recurrent_synapses

    def _recurrent_input(self, previous_spikes: torch.Tensor) -> torch.Tensor:
        return self.recurrent_gain * self.recurrent_weights(previous_spikes)


#: The neuron layers by the name configs use for them.
NEURON_LAYERS: dict[str, type[nn.Module]] = {
    "felif": FeLIFLayer,
    "lif": LIFLayer,
    "rlif": RLIFLayer,
}
