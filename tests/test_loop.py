"""The training loop's pieces: learning-rate schedule, early stopping, Braille augmentation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipelines import loop, schema, train
from pipelines.tasks import augment
from tests.test_train import _config, _real_jsb  # noqa: F401  (autouse: real data, else skip/fail)


def test_cosine_schedule_runs_from_lr_to_its_floor():
    optim = schema.Optim(lr=0.01, epochs=5, schedule="cosine", min_lr_fraction=0.1)
    rates = [loop.learning_rate(optim, e) for e in range(5)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.001)
    assert rates[2] == pytest.approx(0.001 + 0.5 * 0.009)  # half-way: the mean
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert loop.learning_rate(schema.Optim(lr=0.01), 3) == 0.01


def test_trained_time_constants_get_no_weight_decay():
    """Weight decay shrinks synaptic weights only; the neurons' log time constants are a group
    of their own without it (decay would pull them towards log 1 s), and a model without them
    keeps the single group older checkpoints' optimiser state has."""
    from bruno.layers import RLIFLayer

    layer = RLIFLayer(4, train_time_constants=True)
    groups = loop.parameter_groups(layer)
    optimiser = loop.optimiser(groups, schema.Optim(weight_decay=0.1))
    decays = {
        id(p): group["weight_decay"] for group in optimiser.param_groups for p in group["params"]
    }
    assert decays[id(layer.log_tau_mem)] == decays[id(layer.log_tau_syn)] == 0.0
    assert decays[id(layer.recurrent_weights.weight)] == 0.1
    assert len(loop.parameter_groups(RLIFLayer(4))) == 1


def test_patience_stops_a_run_that_no_longer_improves(tmp_path):
    """lr = 0: the validation metric never improves after epoch 1, so patience 2 stops the run
    after epoch 3 of 10, and the test metrics are those of epoch 1's weights."""
    path = _config(tmp_path, optim__lr=0.0, optim__epochs=10, optim__patience=2)
    assert train.main([str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "out" / "tiny_s0" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["best_epoch"] == 1
    assert "no validation improvement for 2 epochs" in metrics["stopped_early"]


def test_augmentation_shifts_and_thins_events():
    torch.manual_seed(0)
    events = (torch.rand(64, 40, 3) < 0.2).float()
    events[:, :5] = 0
    events[:, -5:] = 0  # shifts of up to 5 steps lose nothing
    shifted = augment(events, schema.Augment(time_shift=5))
    assert torch.equal(shifted.sum(1), events.sum(1))  # every event kept, per channel
    assert not torch.equal(shifted, events)
    for b in range(4):  # each sample is one shift of the original
        assert any(torch.equal(shifted[b], events[b].roll(k, 0)) for k in range(-5, 6))
    thinned = augment(events, schema.Augment(event_dropout=0.25))
    assert bool((thinned <= events).all())
    assert thinned.sum() / events.sum() == pytest.approx(0.75, abs=0.03)
    counts = torch.full((2000, 1, 1), 4.0)
    kept = augment(counts, schema.Augment(event_dropout=0.5))
    assert float(kept.mean()) == pytest.approx(2.0, abs=0.1) and math.isclose(
        float(kept.round().sub(kept).abs().max()), 0.0
    )
    assert augment(events, schema.Augment()) is events  # no augmentation: untouched
