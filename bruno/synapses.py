"""Synaptic linear layers: full precision, plain n-bit quantisation, or calibrated 3-bit RRAM pairs.

``SynapticLinear(in, out, precision=...)`` is ``y = x W^T (+ b)`` applied per time step (any
leading shape, e.g. ``[T, B, in]``); the options differ in which ``W`` the forward pass uses. All
quantised forms train with a straight-through estimator: ``W_used = W + stopgrad(Q(W) - W)``, so the
gradient reaches the full-precision shadow weights ``W`` unchanged.

``"fp"``      ``W`` itself.
``"8bit"``, ``"4bit"``, ``"3bit"``
             symmetric uniform quantisation with ``2^(b-1) - 1`` levels per sign (3 bit: -3..3)
             of the per-layer scale ``max|W|``.
``"rram"``    each weight is a differential pair of RRAM cells, ``G+ - G-``, programmed to the
             calibrated levels (:func:`bruno.presets.load_rram_preset`; 3 bit = 8 levels
             ``g_0 < ... < g_7``): the sign picks the device that carries the weight, the other
             stays at ``g_0``, and the carrying device gets the level whose ``g_l - g_0`` is
             closest to ``|W| / max|W| * (g_7 - g_0)``; weight =
             ``(G+ - G-) * max|W| / (g_7 - g_0)`` (15 values, spaced like the levels).
             *Device-to-device variability* (``device_variability``): every cell has a fixed latent
             ``z ~ N(0, 1)`` (seeded, :meth:`resample_devices`); programmed to level ``l`` it reads
             the ``Phi(z)`` quantile of level ``l``'s calibrated conductance samples (or
             ``mean_l + std_l z`` when the preset has no samples), so a cell is consistently high or
             low across levels, as a larger filament would be.
             *Cycle-to-cycle read noise* (``read_noise``): every read multiplies each conductance by
             ``1 + r N(0, 1)`` (``r`` = ``cycle_to_cycle_read_noise_rel``), independently per read,
             i.e. per time step and sample. It is applied exactly in distribution on the output
             (local reparameterisation): ``y += r sqrt(x^2 (G+^2 + G-^2)^T) N(0, 1)`` in weight
             units, which costs one extra matmul instead of a weight tensor per read. No
             gradient flows through the noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from bruno.presets import RRAMPreset, load_rram_preset

PRECISIONS = ("fp", "8bit", "4bit", "3bit", "rram")


class RRAMCells(NamedTuple):
    """The cells of an RRAM synapse array, index [pair (0: G+, 1: G-), out, in]."""

    levels: torch.Tensor  # programmed level of each cell (0 .. 7)
    latent: torch.Tensor  # device-to-device latent z of each cell
    conductance_S: torch.Tensor  # read conductance the forward pass uses (S, at the read voltage)
    weight_per_siemens: float  # weight = (G+ - G-) * weight_per_siemens


_BITS = {"8bit": 8, "4bit": 4, "3bit": 3}


def quantize_symmetric(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric uniform ``bits``-bit quantisation (per-tensor scale) with an STE gradient."""
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    levels = 2 ** (bits - 1) - 1
    scale = (weight.detach().abs().max() / levels).clamp_min(torch.finfo(weight.dtype).tiny)
    quantized = torch.round(weight.detach() / scale).clamp(-levels, levels) * scale
    return weight + (quantized - weight).detach()


class SynapticLinear(nn.Module):
    """Linear synapses with a precision option; see the module docstring."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        precision: str = "fp",
        rram_preset: RRAMPreset | None = None,
        device_variability: bool = True,
        read_noise: bool = True,
        seed: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.precision = precision
        self.device_variability = bool(device_variability)
        self.read_noise = bool(read_noise)
        generator = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = nn.Parameter(
            (torch.rand(self.out_features, self.in_features, generator=generator) * 2 - 1) * bound
        )
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self.rram_preset = None
        if precision == "rram":
            preset = load_rram_preset() if rram_preset is None else rram_preset
            if not isinstance(preset, RRAMPreset):
                raise TypeError("rram_preset must be a bruno.presets.RRAMPreset (or None)")
            self.rram_preset = preset
            means = torch.tensor(preset.means, dtype=torch.float64)
            stds = torch.tensor(preset.stds, dtype=torch.float64)
            counts = [len(level.conductance_samples_S) for level in preset.levels]
            width = max(2, max(counts))
            table = torch.zeros(len(counts), width, dtype=torch.float64)
            for k, level in enumerate(preset.levels):
                if counts[k] >= 2:
                    samples = torch.tensor(sorted(level.conductance_samples_S), dtype=torch.float64)
                    table[k, : counts[k]] = samples
            # Normalise conductances by the full differential range g_max - g_min.
            span = float(means[-1] - means[0])
            self._span_S = span
            self.register_buffer("level_means", (means / span).float())
            self.register_buffer("level_stds", (stds / span).float())
            self.register_buffer("sample_table", (table / span).float())
            self.register_buffer("sample_counts", torch.tensor(counts, dtype=torch.long))
            self.register_buffer("device_z", torch.zeros(2, self.out_features, self.in_features))
            self.read_noise_rel = float(preset.cycle_to_cycle_read_noise_rel)
            self.resample_devices(seed)

    def extra_repr(self) -> str:
        extra = ""
        if self.precision == "rram":
            extra = f", device_variability={self.device_variability}, read_noise={self.read_noise}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"precision={self.precision!r}{extra}"
        )

    def resample_devices(self, seed: int | None = None) -> None:
        """Draw new device-to-device latents for every RRAM cell (rram precision only)."""
        if self.precision != "rram":
            return
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed) + 7919)
        z = torch.randn(self.device_z.shape, generator=generator)
        self.device_z.copy_(z.to(self.device_z))

    def _cell_conductance(self, level: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Normalised conductance of cells with latent ``z`` programmed to ``level`` (indices)."""
        means = self.level_means.to(z.dtype)
        if not self.device_variability:
            return means[level]
        counts = self.sample_counts[level]
        normal = means[level] + self.level_stds.to(z.dtype)[level] * z
        if int(self.sample_counts.max()) < 2:
            return normal
        u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
        position = u * (counts - 1).clamp_min(0).to(z.dtype)
        low = position.floor().long().clamp(max=self.sample_table.shape[1] - 2)
        fraction = position - low.to(z.dtype)
        table = self.sample_table.to(z.dtype)
        empirical = table[level, low] + fraction * (table[level, low + 1] - table[level, low])
        return torch.where(counts >= 2, empirical, normal)

    def _levels(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The level programmed into each cell of the pairs (G+, G-) and the weight scale."""
        w = weight.detach()
        scale = w.abs().max().clamp_min(torch.finfo(w.dtype).tiny)
        means = self.level_means.to(w.dtype)
        offsets = means - means[0]  # 0 .. 1
        target = (w.abs() / scale).unsqueeze(-1)
        level = (target - offsets).abs().argmin(dim=-1)
        zero = torch.zeros_like(level)
        positive = w >= 0
        return torch.where(positive, level, zero), torch.where(positive, zero, level), scale

    def _rram_pair(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G+, G-) normalised by g_max - g_min, and the weight per unit normalised conductance."""
        level_pos, level_neg, scale = self._levels(weight)
        z = self.device_z.to(scale.dtype)
        g_pos = self._cell_conductance(level_pos, z[0])
        g_neg = self._cell_conductance(level_neg, z[1])
        return g_pos, g_neg, scale

    def rram_cells(self) -> RRAMCells:
        """Every cell of the array as the forward pass reads it (rram precision only): what a
        circuit export programs (pipelines/cosim.py)."""
        if self.precision != "rram":
            raise ValueError(f"rram_cells: the synapses are {self.precision!r}, not 'rram'")
        with torch.no_grad():
            w = self.weight.detach()  # in its own dtype: the levels the forward pass picks
            level_pos, level_neg, scale = self._levels(w)
            g_pos, g_neg, _ = self._rram_pair(w)
        return RRAMCells(
            levels=torch.stack([level_pos, level_neg]),
            latent=self.device_z.detach().double().clone(),
            conductance_S=torch.stack([g_pos, g_neg]).double() * self._span_S,
            weight_per_siemens=float(scale) / self._span_S,
        )

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (noise-free read), with the STE gradient path."""
        w = self.weight
        if self.precision == "fp":
            return w
        if self.precision in _BITS:
            return quantize_symmetric(w, _BITS[self.precision])
        g_pos, g_neg, scale = self._rram_pair(w)
        return w + ((g_pos - g_neg) * scale - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("SynapticLinear: input must be a floating-point tensor")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"SynapticLinear: last input dimension must be {self.in_features}, "
                f"got {tuple(x.shape)}"
            )
        if x.device != self.weight.device:
            raise ValueError(
                f"SynapticLinear: input on {x.device}, weights on {self.weight.device}"
            )
        weight = self.effective_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = F.linear(x, weight, bias)
        if self.precision == "rram" and self.read_noise and self.read_noise_rel > 0:
            with torch.no_grad():
                g_pos, g_neg, scale = self._rram_pair(self.weight)
                power = ((g_pos * scale) ** 2 + (g_neg * scale) ** 2).to(x.dtype)
                std = self.read_noise_rel * torch.sqrt(
                    F.linear(x.detach() ** 2, power).clamp_min(0)
                )
                noise = std * torch.randn_like(y)
            y = y + noise
        return y
