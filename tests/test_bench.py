"""The benchmark harness: fresh-process measurement, extrapolation and ratios."""

from __future__ import annotations

import pytest

from pipelines import bench


def test_fresh_process_measurement_reports_memory_and_time():
    config = bench.BenchConfig("bruno", hidden=8, steps=2, fine_steps=5, repeats=1)
    record = bench.run_in_fresh_process(config, timeout_s=120)
    assert "error" not in record, record.get("error")
    assert record["method"] == "bruno" and record["H"] == 8 and record["T"] == 2
    assert record["step_time_s"] > 0
    assert record["peak_rss_bytes"] >= record["baseline_rss_bytes"] > 0
    assert record["peak_memory_bytes"] == record["peak_rss_bytes"] - record["baseline_rss_bytes"]
    assert record["extrapolated"] is False
    assert record["saved_bytes"] > 0


def test_saved_bytes_count_what_autograd_keeps_once_without_parameters():
    import torch

    x = torch.rand(1000)
    w = torch.nn.Parameter(torch.rand(1000))
    # x * w keeps x for w's gradient (4000 B), exp keeps its result (4000 B), sum nothing
    _, saved = bench.saved_for_backward_bytes(lambda: (x * w).exp().sum(), [w])
    assert saved == 8000
    # with x requiring grad: x * x keeps x twice (counted once), (x * x) * w keeps the product
    # and w (a parameter: not counted)
    x.requires_grad_(True)
    _, saved = bench.saved_for_backward_bytes(lambda: (x * x * w).sum(), [w])
    assert saved == 8000


def test_bruno_keeps_a_hundredth_of_what_bptt_keeps_for_backward():
    """n = 1000 fine steps per coarse step: BPTT keeps every fine step's tensors, BRUNO one
    Jacobian per coarse step (the issue's <= 0.01 target, here at T = 4)."""
    import torch

    from bruno.layers import FeLIFLayer

    saved = {}
    for method in ("bptt", "bruno"):
        torch.manual_seed(0)
        linear = torch.nn.Linear(16, 32)
        layer = FeLIFLayer(32, algorithm=method, fine_steps=1000, seed=0)
        inputs = (torch.rand(4, 1, 16) < 0.3).float()
        parameters = list(linear.parameters()) + list(layer.parameters())
        _, saved[method] = bench.saved_for_backward_bytes(
            lambda f=layer, g=linear, x=inputs: f(g(x)), parameters
        )
    assert 0 < saved["bruno"] <= 0.01 * saved["bptt"], saved


def test_failed_configuration_is_reported_not_hidden():
    config = bench.BenchConfig("no-such-method", hidden=8, steps=2, fine_steps=5, repeats=1)
    record = bench.run_in_fresh_process(config, timeout_s=120)
    assert "no-such-method" in record["error"]


def _record(method, steps, memory, seconds):
    return {
        "method": method,
        "H": 64,
        "T": steps,
        "n": 1000,
        "batch": 1,
        "peak_memory_bytes": memory,
        "step_time_s": seconds,
        "extrapolated": False,
    }


def test_extrapolation_is_linear_in_sequence_length_and_marked():
    measured = [_record("bptt", 10, 1000, 1.0), _record("bptt", 20, 2000, 2.0)]
    predicted = bench.extrapolate(measured, bench.BenchConfig("bptt", 64, 40, 1000))
    assert predicted["extrapolated"] is True
    assert predicted["peak_memory_bytes"] == 4000
    assert predicted["step_time_s"] == pytest.approx(4.0)
    assert predicted["extrapolated_from_T"] == [10, 20]
    assert bench.extrapolate(measured, bench.BenchConfig("bruno", 64, 40, 1000)) is None


def test_ratios_pair_each_method_with_bptt_at_the_same_configuration():
    records = [_record("bptt", 10, 1000, 2.0), _record("bruno", 10, 10, 0.5)]
    (row,) = bench.ratios(records)
    assert row["bruno_memory_ratio"] == pytest.approx(0.01)
    assert row["bruno_time_ratio"] == pytest.approx(0.25)
    assert "checkpoint_memory_ratio" not in row
