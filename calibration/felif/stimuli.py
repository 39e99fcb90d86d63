"""FeLIF stimuli: DC levels, current pulse trains and random spike-train inputs, as SPICE PWL
sources and as compact-model inputs; the training and the held-out validation sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from calibration.felif.common import (
    DT,
    I_MAX,
    I_MIN,
    I_NEGATIVE_MAX,
    QUICK_RHEOBASE_TRAINING,
    QUICK_RHEOBASE_VALIDATION,
    RHEOBASE_FIT_WEIGHT,
    RHEOBASE_TRAINING,
    RHEOBASE_VALIDATION,
    StimulusRangeError,
)


@dataclasses.dataclass(frozen=True)
class Stimulus:
    """An input current: DC (``dc``) or piecewise linear through (``times``, ``currents``)."""

    name: str
    duration: float  # s
    dc: float | None = None  # A
    times: tuple[float, ...] = ()  # s, PWL breakpoints (strictly increasing, first 0)
    currents: tuple[float, ...] = ()  # A
    description: str = ""
    fit_weight: float = 1.0  # weight of its spike residuals in the fit (calibration.felif.fit)

    def current(self, t: np.ndarray) -> np.ndarray:
        """Input current (A) at times ``t`` (s); after ``duration`` it holds its last value."""
        if self.dc is not None:
            return np.full(np.shape(t), float(self.dc))
        return np.interp(t, self.times, self.currents)

    def fine_waveform(self, steps: int, dt: float = DT) -> np.ndarray:
        """One value per fine step: the current at the step's midpoint (exact for linear ramps)."""
        return self.current((np.arange(steps) + 0.5) * dt)

    def spice_source(self, node: str = "mem") -> str:
        """The netlist's input source line for this stimulus."""
        if self.dc is not None:
            return f"Iin 0 {node} DC {self.dc!r}"
        pairs = [f"{t:.9g} {i:.9g}" for t, i in zip(self.times, self.currents, strict=True)]
        lines, line = [], f"Iin 0 {node} PWL("
        for pair in pairs:
            if len(line) > 200:
                lines.append(line)
                line = "+"
            line += " " + pair
        lines.append(line + " )")
        return "\n".join(lines)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "duration_s": self.duration}
        if self.dc is not None:
            out["dc_A"] = self.dc
        else:
            out.update(
                pwl_points=len(self.times),
                mean_A=float(self.mean_current()),
                max_A=float(max(self.currents)),
                description=self.description,
            )
        if self.fit_weight != 1.0:
            out["fit_weight"] = self.fit_weight
        return out

    def mean_current(self) -> float:
        if self.dc is not None:
            return float(self.dc)
        t = np.linspace(0.0, self.duration, 20001)
        return float(np.mean(self.current(t)))


def dc_stimulus(current: float, duration: float | None = None, name: str | None = None) -> Stimulus:
    """DC input; by default long enough for about three spikes."""
    if duration is None:
        duration = min(0.5, 3.3 * 15e-12 / max(current, 1e-12))
    return Stimulus(name=name or f"dc_{current * 1e9:.3g}nA", duration=float(duration), dc=current)


def _pwl_from_pulses(
    starts: Sequence[float],
    widths: Sequence[float],
    amplitudes: Sequence[float],
    baseline: float,
    duration: float,
    edge: float,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Breakpoints of baseline + non-overlapping trapezoidal pulses (edges of ``edge`` s)."""
    times, currents = [0.0], [baseline]
    for start, width, amplitude in zip(starts, widths, amplitudes, strict=True):
        if start <= times[-1] or start + width + edge >= duration:
            continue
        times += [start, start + edge, start + width, start + width + edge]
        currents += [baseline, baseline + amplitude, baseline + amplitude, baseline]
    times.append(duration)
    currents.append(baseline)
    return tuple(times), tuple(currents)


def _pulses(
    name: str,
    description: str,
    starts: Sequence[float],
    amplitudes: Sequence[float],
    width: float,
    baseline: float,
    duration: float,
    edge: float,
) -> Stimulus:
    """Current pulses of one ``width`` starting at ``starts`` on a ``baseline`` (A)."""
    times, currents = _pwl_from_pulses(
        starts, [width] * len(starts), amplitudes, baseline, duration, edge
    )
    return Stimulus(
        name=name, duration=duration, times=times, currents=currents, description=description
    )


def pulse_train(
    amplitude: float,
    width: float,
    period: float,
    duration: float,
    baseline: float = 0.0,
    delay: float = 0.0,
    edge: float = 1e-6,
    name: str | None = None,
) -> Stimulus:
    """Regular current pulses of ``amplitude`` on ``baseline`` (A)."""
    starts = np.arange(delay if delay > 0 else period - width, duration, period)
    return _pulses(
        name or f"pulses_{amplitude * 1e9:.3g}nA_{width * 1e3:.3g}ms_{period * 1e3:.3g}ms",
        f"pulses {amplitude:.3g} A, width {width:.3g} s, period {period:.3g} s, "
        f"baseline {baseline:.3g} A",
        starts,
        [amplitude] * len(starts),
        width,
        baseline,
        duration,
        edge,
    )


def spike_train(
    rate: float,
    duration: float,
    seed: int,
    amplitude: tuple[float, float] = (0.4e-9, 1.2e-9),
    width: float = 2e-3,
    baseline: float = 0.15e-9,
    edge: float = 1e-6,
    name: str | None = None,
) -> Stimulus:
    """Random (Poisson, with a dead time of one pulse) spike train of synaptic current pulses."""
    rng = np.random.default_rng(seed)
    starts, t = [], 0.0
    while True:
        t += width + 2 * edge + rng.exponential(1.0 / rate)
        if t >= duration:
            break
        starts.append(t)
    return _pulses(
        name or f"spiketrain_{rate:.3g}Hz_seed{seed}",
        f"Poisson {rate:.3g} Hz (dead time {width:.3g} s), pulses {width:.3g} s of "
        f"U({amplitude[0]:.3g}, {amplitude[1]:.3g}) A on {baseline:.3g} A, seed {seed}",
        starts,
        rng.uniform(amplitude[0], amplitude[1], size=len(starts)),
        width,
        baseline,
        duration,
        edge,
    )


def negative_step(
    negative: float, hold: float, positive: float, duration: float, edge: float = 1e-6
) -> Stimulus:
    """``negative`` (A, < 0) for ``hold`` s, then ``positive`` (A) to the end: the membrane is
    driven onto the negative clamp and must then recover and fire as the circuit does."""
    return Stimulus(
        name=f"neg_{-negative * 1e9:.3g}nA_{hold * 1e3:.3g}ms_then_{positive * 1e9:.3g}nA",
        duration=duration,
        times=(0.0, edge, hold, hold + edge, duration),
        currents=(0.0, negative, negative, positive, positive),
        description=f"{negative:.3g} A for {hold:.3g} s, then {positive:.3g} A",
    )


def check_stimulus(stimulus: Stimulus) -> None:
    """Refuse stimuli outside the working range the compact model is calibrated for."""
    where = f"stimulus {stimulus.name!r}"
    if not (np.isfinite(stimulus.duration) and 0 < stimulus.duration <= 2.0):
        raise StimulusRangeError(f"{where}: duration {stimulus.duration!r} s is not in (0, 2] s")
    if stimulus.dc is not None:
        if not (
            np.isfinite(stimulus.dc) and I_MIN * (1 - 1e-9) <= stimulus.dc <= I_MAX * (1 + 1e-9)
        ):
            raise StimulusRangeError(
                f"{where}: DC current {stimulus.dc!r} A is outside the calibrated working range "
                f"[{I_MIN:.3g}, {I_MAX:.3g}] A"
            )
        return
    times, currents = np.asarray(stimulus.times), np.asarray(stimulus.currents)
    if (
        times.size < 2
        or times.size != currents.size
        or times[0] != 0
        or np.any(np.diff(times) <= 0)
    ):
        raise StimulusRangeError(f"{where}: PWL times must start at 0 and increase strictly")
    if (
        not np.all(np.isfinite(currents))
        or currents.min() < -I_NEGATIVE_MAX * (1 + 1e-9)
        or currents.max() > I_MAX * (1 + 1e-9)
    ):
        raise StimulusRangeError(
            f"{where}: currents span [{currents.min():.3g}, {currents.max():.3g}] A; the "
            f"validated range for time-varying inputs is [{-I_NEGATIVE_MAX:.3g}, {I_MAX:.3g}] A"
        )


def near_rheobase(
    rheobase: float,
    levels: Sequence[tuple[float, float]],
    fit_weight: float = 1.0,
    scale: float = 1.0,
) -> list[Stimulus]:
    """DC levels near the circuit's ``rheobase`` (A): ``(multiple m, window s)`` pairs at
    ``rheobase x (1 + (m - 1) x scale)`` (``scale``: :func:`~calibration.felif.fit.
    near_rheobase_scale`, 1 for the shipped device)."""
    out = []
    for m, window in levels:
        current = rheobase * (1.0 + (m - 1.0) * scale)
        stimulus = dc_stimulus(current, window, name=f"dc_{current * 1e12:.4g}pA")
        out.append(dataclasses.replace(stimulus, fit_weight=fit_weight))
    return out


def lowest_training_level(quick: bool) -> tuple[float, float]:
    """The near-rheobase training level ``(multiple, window s)`` that sets the device's scale."""
    return min(QUICK_RHEOBASE_TRAINING if quick else RHEOBASE_TRAINING)


def training_stimuli(quick: bool, rheobase: float, scale: float = 1.0) -> list[Stimulus]:
    """DC levels across the working range, near the circuit's ``rheobase`` (A; levels placed by
    ``scale``, :func:`near_rheobase`) included, and current pulse trains (never used by
    validation)."""
    if quick:
        return [
            dc_stimulus(0.6e-9, 0.06),
            dc_stimulus(1.6e-9, 0.03),
            pulse_train(1.5e-9, 1e-3, 2.5e-3, 0.06, name="pulses_1.5nA_1ms_2.5ms"),
            *near_rheobase(rheobase, QUICK_RHEOBASE_TRAINING, RHEOBASE_FIT_WEIGHT, scale),
        ]
    window = 0.2
    return [
        dc_stimulus(0.16e-9, window),
        dc_stimulus(0.22e-9, window),
        dc_stimulus(0.35e-9, window),
        dc_stimulus(0.6e-9, 0.12),
        dc_stimulus(1.0e-9, 0.08),
        dc_stimulus(1.6e-9, 0.05),
        pulse_train(1.5e-9, 1e-3, 4e-3, window, baseline=0.05e-9, name="pulses_1.5nA_1ms_4ms"),
        pulse_train(0.8e-9, 5e-3, 8e-3, 0.15, name="pulses_0.8nA_5ms_8ms"),
        *near_rheobase(rheobase, RHEOBASE_TRAINING, RHEOBASE_FIT_WEIGHT, scale),
    ]


def validation_stimuli(
    quick: bool, rheobase: float, scale: float = 1.0
) -> tuple[list[Stimulus], list[Stimulus]]:
    """(trace/ISI stimuli, extra f-I levels): held-out DC levels, the top of the range and near
    the circuit's ``rheobase`` (A; below it the neuron must not fire) included, a random spike
    train, and negative drive (steps onto the clamp, a spike train of signed pulses as a signed
    synaptic sum makes); none of them is a training stimulus, and calibration never sees a
    negative input."""
    if quick:
        main = [
            dc_stimulus(0.45e-9, 0.09),
            dc_stimulus(2.0e-9, 0.03),
            spike_train(120.0, 0.08, seed=11),
            negative_step(-2e-9, 10e-3, 1.2e-9, 0.04),
            *near_rheobase(rheobase, QUICK_RHEOBASE_VALIDATION, scale=scale),
        ]
        return main, []
    signed = (-3e-9, 1.5e-9)
    main = [
        dc_stimulus(0.1e-9),
        dc_stimulus(0.27e-9),
        dc_stimulus(0.8e-9),
        dc_stimulus(2.0e-9),
        spike_train(150.0, 0.3, seed=7),
        negative_step(-0.5e-9, 50e-3, 0.8e-9, 0.1),
        negative_step(-5e-9, 10e-3, 1.2e-9, 0.06),
        negative_step(-20e-9, 5e-3, 1.5e-9, 0.04),
        spike_train(
            200.0, 0.3, seed=23, amplitude=signed, baseline=0.4e-9, name="signed_spiketrain_seed23"
        ),
        *near_rheobase(rheobase, RHEOBASE_VALIDATION, scale=scale),
    ]
    extra = [dc_stimulus(i) for i in (0.13e-9, 0.19e-9, 0.45e-9, 1.3e-9)]
    return main, extra
