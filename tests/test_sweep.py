"""`python -m pipelines sweep`: parallel runs equal sequential ones; a time-limited sweep stops
resumably and the next sweep finishes it to the same metrics; selections are checked up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import sweep, train
from tests import fault_injection
from tests.test_train import _config, _real_jsb  # noqa: F401  (autouse: real data, else skip/fail)

METRICS = ("test_nll_per_step", "test_frame_accuracy", "valid_nll_per_step", "best_epoch")


def _two_configs(tmp_path: Path, epochs: int) -> list[str]:
    paths = []
    for name, hidden in (("tiny_a", 8), ("tiny_b", 6)):
        path = _config(tmp_path / name, name=name, model__hidden=hidden, optim__epochs=epochs)
        paths.append(str(path))
    return paths


def _metrics(out: Path, run: str) -> dict:
    return json.loads((out / run / "metrics.json").read_text())


@pytest.fixture
def configs(tmp_path):
    for name in ("tiny_a", "tiny_b"):
        (tmp_path / name).mkdir()
    return _two_configs(tmp_path, epochs=3)


def test_parallel_sweep_equals_sequential_runs(tmp_path, configs, backend):
    sequential = tmp_path / "seq"
    for path in configs:
        assert train.main([path, "--out", str(sequential), "--no-progress"]) == 0
    parallel = tmp_path / "par"
    on = ["--backend", backend]
    assert sweep.main([*configs, *on, "--jobs", "2", "--out", str(parallel), "--no-progress"]) == 0
    for run in ("tiny_a_s0", "tiny_b_s0"):
        a, b = _metrics(sequential, run), _metrics(parallel, run)
        for key in METRICS:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (run, key)
        assert (parallel / run / "train.log").read_text().strip()
    # Everything complete: a second sweep starts nothing.
    assert sweep.main([*configs, *on, "--out", str(parallel), "--no-progress"]) == 0


def test_time_limited_sweep_resumes_to_the_same_result(tmp_path, configs, capsys, backend):
    reference = tmp_path / "ref"
    assert sweep.main([*configs, "--jobs", "2", "--out", str(reference), "--no-progress"]) == 0
    out = tmp_path / "out"
    on = ["--backend", backend]
    status = sweep.main(
        [*configs, *on, "--jobs", "1", "--time-limit", "3", "--out", str(out), "--no-progress"]
    )
    assert status == 4  # stopped, resumable
    assert "stopped" in capsys.readouterr().out
    assert not (out / "tiny_b_s0" / "metrics.json").exists()
    assert sweep.main([*configs, *on, "--jobs", "2", "--out", str(out), "--no-progress"]) == 0
    for run in ("tiny_a_s0", "tiny_b_s0"):
        for key in METRICS:
            assert _metrics(out, run)[key] == pytest.approx(
                _metrics(reference, run)[key], rel=1e-6, abs=1e-9
            )


def test_failed_run_is_reported(tmp_path, configs, monkeypatch, capsys):
    # every run stops on a NaN loss
    original = sweep.Job.command
    monkeypatch.setattr(
        sweep.Job,
        "command",
        lambda job, out, overrides: fault_injection.command(
            "nan@1.1", original(job, out, overrides)[4:]
        ),
    )
    out = tmp_path / "out"
    assert sweep.main([configs[0], "--out", str(out), "--no-progress"]) == 3
    printed = capsys.readouterr()
    assert "1 failed" in printed.out and "tiny_a_s0" in printed.out
    assert "non-finite loss" in (out / "tiny_a_s0" / "train.log").read_text()
    bad = ["--set", "optim.batch_size=0"]
    assert sweep.main([configs[0], *bad, "--out", str(out)]) == 2  # rejected before any run
    assert "batch_size" in capsys.readouterr().err


def test_selection_is_checked_and_ordered_slowest_first(capsys):
    assert sweep.main(["no_such_group"]) == 2
    assert "groups:" in capsys.readouterr().err
    jobs = sweep.plan(["braille"], [], None)
    assert len(jobs) == 75  # the 24-experiment grid x 3 seeds, and the GRU reference x 3
    assert sum(job.experiment == "braille_gru" for job in jobs) == 3
    kinds = ["felif" if "felif" in job.run else "other" for job in jobs]
    assert kinds == sorted(kinds)  # every FeLIF-output run before any LIF/RLIF one
    assert sweep.plan(["braille_lif_fp_v0"], [], [5])[0].run == "braille_lif_fp_v0_s5"
