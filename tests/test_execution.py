"""The execution layer (bruno.execution): the local process pool and Ray return the same results
and report the same failures (an exception, a crashed worker: the crashed job is rerun alone and
only one that crashes by itself is reported); a SPICE Monte-Carlo batch gives identical values on
both; a missing or unknown backend is a clear error."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from bruno import execution
from calibration import spice
from calibration.rram import cell


def _square_or_fail(x: int) -> int:
    if x == 3:
        os._exit(3)  # a crashing worker, as a segfaulting ngspice would
    if x == 4:
        raise ValueError("four")
    return x * x


def test_results_and_failures_are_the_same_on_every_backend(backend):
    results, failures = execution.run_many(
        _square_or_fail, range(8), backend=backend, workers=2, runs_per_worker=2
    )
    # the jobs that shared the crashed worker's pool were rerun and have their results
    assert results == [0, 1, 4, None, None, 25, 36, 49]
    by_index = {f.index: f for f in failures}
    assert sorted(by_index) == [3, 4]
    assert by_index[3].error.startswith("worker crashed") and by_index[3].arguments == 3
    assert by_index[4].error == "ValueError: four"


def _rc_final_voltage(resistance: float) -> float:
    if resistance < 0:
        raise ValueError("negative resistance")
    if resistance == 0:
        os._exit(3)
    deck = spice.set_parameters(spice.read_netlist("rc.cir"), {"r_series": resistance})
    return float(spice.simulate(deck, "tran 10u 1m 0 10u uic", name="rc")["out"][-1])


@pytest.mark.spice
def test_spice_batch_reports_failures_and_crashes_instead_of_dropping_them(backend):
    arguments = [1e3, -1.0, 2e3, 0.0]
    results, failures = execution.run_many(
        _rc_final_voltage, arguments, backend=backend, workers=2, runs_per_worker=1
    )
    assert results[0] == pytest.approx(1 - np.exp(-1.0), abs=1e-4)
    assert results[2] == pytest.approx(1 - np.exp(-0.5), abs=1e-4)
    assert results[1] is None and results[3] is None
    by_index = {f.index: f for f in failures}
    assert set(by_index) == {1, 3}
    assert "negative resistance" in by_index[1].error
    assert "crashed" in by_index[3].error


@pytest.mark.spice
def test_monte_carlo_batch_is_identical_on_local_and_ray(ray_instance, monkeypatch):
    """calibration's RRAM Monte-Carlo (program + read transients of sampled devices), chosen by
    $BRUNO_EXECUTION_BACKEND as the CLIs do: the same conductances to the last bit."""
    by_backend = {}
    for name in ("local", "ray"):
        monkeypatch.setenv(execution.BACKEND_ENV, name)
        per_state, failures, raw = cell.monte_carlo([60e-6, 200e-6], 2, seed=5, workers=2)
        assert failures == []
        by_backend[name] = (per_state, raw)
    assert by_backend["ray"] == by_backend["local"]
    low, high = by_backend["local"][0]
    assert len(low) == len(high) == 2 and min(high) > max(low)  # more current, wider filament


def test_a_missing_ray_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(execution.BackendUnavailable, match=r"pip install -e '\.\[cluster\]'"):
        execution.run_many(_square_or_fail, [1], backend="ray")
    from pipelines import sweep

    assert sweep.main(["jsb_lif", "--backend", "ray", "--no-progress"]) == 2
    assert "[cluster]" in capsys.readouterr().err


def test_an_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv(execution.BACKEND_ENV, "dask")
    with pytest.raises(ValueError, match=r"\$BRUNO_EXECUTION_BACKEND must be one of local, ray"):
        execution.run_many(_square_or_fail, [1])
    with pytest.raises(ValueError, match="backend must be one of"):
        execution.run_many(_square_or_fail, [1], backend="slurm")
