"""Conductance vs programming current (an lmfit law), the eight 3-bit level currents it gives,
and the statistics of each level (distribution fits, separations, KS critical distance)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from calibration.rram.common import (
    I_PROG_MAX,
    I_PROG_MIN,
    LAW_NAME,
    LEVEL_CURRENT_RANGE,
    N_LEVELS,
    RRAMError,
)


def conductance_law(
    i_prog: np.ndarray,
    r_s: float,
    k: float,
    p: float,
    q: float,
    g_max: float = math.inf,
    m: float = 1.0,
) -> np.ndarray:
    """Read conductance (S) vs programming current (A).

    A series resistance ``r_s`` (interface at high N, plug, TiOx and electrodes) in series with a
    filament whose conductance grows as a bent power of the compliance current,
    ``g_p = k x^(p + q ln x)``, ``x = i_prog / 100 uA``, until it saturates at ``g_max`` (the
    filament at N_discmax: F_lim stops the SET there, and a narrow filament gets there within the
    useful current range) with a smooth minimum of sharpness ``m``:
    ``1/G = r_s + 1/g_f``, ``g_f = g_p / (1 + (g_p / g_max)^m)^(1/m)``. ``g_max = inf`` is the
    bent power alone (the law of presets before the saturation term).
    """
    x = np.asarray(i_prog, dtype=float) / 100e-6
    log_x = np.log(x)
    g_p = k * np.exp((p + q * log_x) * log_x)
    g_f = g_p / (1.0 + (g_p / g_max) ** m) ** (1.0 / m)
    return 1.0 / (r_s + 1.0 / g_f)


#: Starting points of the law fit (``g_max`` in units of the largest swept conductance, ``m``): the
#: saturation term makes the least-squares problem multi-modal (a fit started with a far ``g_max``
#: stays on the bent power alone), so the fit starts from each and keeps the best.
LAW_FIT_STARTS = tuple((g, m) for g in (1.5, 3.0, 10.0, 100.0) for m in (2.0, 6.0))


def fit_conductance_law(currents: Sequence[float], conductances: Sequence[float]) -> dict[str, Any]:
    """lmfit least squares in relative error (best of :data:`LAW_FIT_STARTS`); parameters,
    1-sigma uncertainties and the report."""
    import lmfit

    currents = np.asarray(currents, dtype=float)
    conductances = np.asarray(conductances, dtype=float)
    if currents.size < 7 or not np.all(np.isfinite(conductances)):
        raise RRAMError(
            f"the conductance law needs >= 7 finite sweep points, got {currents.size} "
            f"({int(np.sum(~np.isfinite(conductances)))} not finite)"
        )
    model = lmfit.Model(conductance_law, independent_vars=["i_prog"])
    g_top = float(np.max(conductances))
    result = None
    for g_start, m_start in LAW_FIT_STARTS:
        params = model.make_params(r_s=1400.0, k=3e-4, p=1.5, q=0.0, g_max=g_start * g_top)
        params.add("m", value=m_start, min=0.5, max=20.0)
        params["r_s"].set(min=0.0, max=1e5)
        params["k"].set(min=1e-7, max=1.0)
        params["p"].set(min=0.0, max=5.0)
        params["q"].set(min=-2.0, max=2.0)
        params["g_max"].set(min=0.5 * g_top, max=1.0)
        fit = model.fit(conductances, params, i_prog=currents, weights=1.0 / conductances)
        if fit.success and (result is None or fit.chisqr < result.chisqr):
            result = fit
    if result is None:
        raise RRAMError(f"conductance-law fit did not converge from any of {LAW_FIT_STARTS}")
    predicted = result.eval(i_prog=currents)
    rel = (predicted - conductances) / conductances
    return {
        "model": LAW_NAME,
        "parameters": {name: float(par.value) for name, par in result.params.items()},
        "uncertainties": {
            name: (float(par.stderr) if par.stderr is not None else None)
            for name, par in result.params.items()
        },
        "units": {"r_s": "Ohm", "k": "S", "p": "1", "q": "1", "g_max": "S", "m": "1"},
        "fit_currents_A": currents.tolist(),
        "fit_conductances_S": conductances.tolist(),
        "fit_rel_error_max": float(np.max(np.abs(rel))),
        "chi_square_rel": float(np.sum(rel**2)),
        "report": result.fit_report(),
    }


def law_from_payload(law: Mapping[str, Any]) -> Any:
    """The law of a preset as a function of programming current (A) -> conductance (S): a fitted
    law, or one interpolated in read voltage between two (:meth:`bruno.presets.RRAMPreset.
    at_read_voltage`: ``{"interpolated_between": [law, law], "weights": [w, 1 - w]}``)."""
    if "interpolated_between" in law:
        parts = [law_from_payload(part) for part in law["interpolated_between"]]
        weights = [float(w) for w in law["weights"]]
        return lambda i: sum(w * f(i) for w, f in zip(weights, parts, strict=True))
    parameters = dict(law["parameters"])
    return lambda i: conductance_law(np.asarray(i, dtype=float), **parameters)


def fitted_range(law: Mapping[str, Any]) -> tuple[float, float]:
    """The programming currents (A) a preset's law was fitted over (an interpolated law: both)."""
    if "interpolated_between" in law:
        ranges = [fitted_range(part) for part in law["interpolated_between"]]
        return max(lo for lo, _ in ranges), min(hi for _, hi in ranges)
    currents = law["fit_currents_A"]
    return float(min(currents)), float(max(currents))


def invert_law(law: Any, target: float, lo: float = I_PROG_MIN, hi: float = I_PROG_MAX) -> float:
    """Programming current that the law maps to ``target`` S (bisection in log current)."""
    from scipy.optimize import brentq

    f = lambda log_i: float(law(np.exp(log_i))) - target  # noqa: E731
    if f(np.log(lo)) > 0 or f(np.log(hi)) < 0:
        raise RRAMError(f"conductance {target:g} S is outside the law's range over [{lo}, {hi}] A")
    return float(np.exp(brentq(f, np.log(lo), np.log(hi), xtol=1e-10)))


def level_currents(law: Any) -> list[float]:
    """Eight programming currents whose conductances are equally spaced over LEVEL_CURRENT_RANGE."""
    g_lo, g_hi = (float(law(i)) for i in LEVEL_CURRENT_RANGE)
    targets = np.linspace(g_lo, g_hi, N_LEVELS)
    currents = [LEVEL_CURRENT_RANGE[0]]
    currents += [invert_law(law, float(g)) for g in targets[1:-1]]
    currents.append(LEVEL_CURRENT_RANGE[1])
    return currents


def fit_distribution(samples: Sequence[float]) -> dict[str, Any]:
    """Normal distribution fitted (lmfit) to a state's empirical CDF: mean, std, uncertainties."""
    import lmfit
    from scipy.stats import norm

    x = np.sort(np.asarray(samples, dtype=float))
    if x.size < 3:
        raise RRAMError(f"a distribution fit needs >= 3 samples, got {x.size}")
    ecdf = (np.arange(1, x.size + 1) - 0.5) / x.size

    def cdf(g: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        return norm.cdf(g, loc=mu, scale=sigma)

    model = lmfit.Model(cdf, independent_vars=["g"])
    std0 = float(np.std(x, ddof=1)) or abs(float(np.mean(x))) * 1e-3 or 1e-9
    params = model.make_params(mu=float(np.mean(x)), sigma=std0)
    params["sigma"].set(min=std0 * 1e-3)
    result = model.fit(ecdf, params, g=x)
    mu, sigma = float(result.params["mu"].value), float(result.params["sigma"].value)
    return {
        "model": "normal (lmfit to the empirical CDF)",
        "mu_S": mu,
        "sigma_S": sigma,
        "mu_stderr_S": _stderr(result.params["mu"]),
        "sigma_stderr_S": _stderr(result.params["sigma"]),
        "ks_to_own_samples": float(np.max(np.abs(norm.cdf(x, mu, sigma) - ecdf)) + 0.5 / x.size),
        "sample_mean_S": float(np.mean(x)),
        "sample_std_S": float(np.std(x, ddof=1)),
        "sample_median_S": float(np.median(x)),
        "n": int(x.size),
    }


def _stderr(par: Any) -> float | None:
    return float(par.stderr) if par.stderr is not None else None


def separations(means: Sequence[float], stds: Sequence[float]) -> list[float]:
    """Gap between adjacent state means in units of the larger of the two standard deviations."""
    out = []
    for k in range(len(means) - 1):
        sigma = max(stds[k], stds[k + 1])
        # a zero spread (identical samples) counts as a very large separation; JSON has no inf
        out.append(float((means[k + 1] - means[k]) / sigma) if sigma > 0 else 1e12)
    return out


def robust_separations(samples: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Median gap over the larger 1.4826 MAD, and the fractions read nearer the neighbour state."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        med_a, med_b = float(np.median(a)), float(np.median(b))
        mad = max(1.4826 * float(np.median(np.abs(x - np.median(x)))) for x in (a, b))
        mid = 0.5 * (med_a + med_b)
        out.append(
            {
                "separation": (med_b - med_a) / mad if mad > 0 else 1e12,
                "lower_above_midpoint": float(np.mean(a > mid)),
                "upper_below_midpoint": float(np.mean(b < mid)),
            }
        )
    return out


def ks_critical(n: int, m: int, alpha: float = 0.01) -> float:
    """Two-sample Kolmogorov-Smirnov critical distance (asymptotic) at level ``alpha``."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))
