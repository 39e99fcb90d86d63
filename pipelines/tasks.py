"""The tasks a network trains on: batches, loss and evaluation metrics of JSB Chorales (next-frame
prediction) and Braille letters (classification), on the splits of :mod:`pipelines.datasets`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines import datasets as ds
from pipelines.schema import AnyExperiment


class JSBTask:
    eval_sum_count = 5  # the length of eval_sums
    select_key, select_mode = "valid_nll_per_step", "min"

    def __init__(self, config: AnyExperiment):
        data = config.data
        rolls = ds.load_jsb(data.grid)
        if data.max_frames:
            rolls = {k: [r[: data.max_frames] for r in v] for k, v in rolls.items()}
        if data.max_train:
            rolls["train"] = rolls["train"][: data.max_train]
        if data.max_eval:
            for split in ("valid", "test"):
                rolls[split] = rolls[split][: data.max_eval]
        self.rolls = rolls

    def size(self, split: str) -> int:
        return len(self.rolls[split])

    def batch(self, split: str, index: list[int], device, train: bool = False):
        inputs, targets, mask = ds.jsb_batch([self.rolls[split][i] for i in index])
        return inputs.to(device), targets.to(device), mask.to(device)

    def normaliser(self, split: str, index: list[int]) -> float:
        return float(sum(self.rolls[split][i].shape[0] - 1 for i in index))

    @staticmethod
    def loss_sum(logits, targets, mask) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
        return (bce * mask).sum()

    @staticmethod
    def eval_sums(logits, targets, mask) -> list[float]:
        nll = JSBTask.loss_sum(logits, targets, mask)
        predicted = (torch.sigmoid(logits) > 0.5).float() * mask.unsqueeze(-1)
        truth = targets * mask.unsqueeze(-1)
        tp = (predicted * truth).sum()
        fp = (predicted * (1 - truth)).sum()
        fn = ((1 - predicted) * truth).sum()
        return [nll.item(), mask.sum().item(), tp.item(), fp.item(), fn.item()]

    @staticmethod
    def eval_metrics(sums: list[float], split: str) -> dict:
        nll, frames, tp, fp, fn = sums
        return {
            f"{split}_nll_per_step": nll / max(frames, 1.0),
            f"{split}_frame_accuracy": tp / max(tp + fp + fn, 1.0),
            f"{split}_frames": int(frames),
        }


class BrailleTask:
    eval_sum_count = 3  # the length of eval_sums
    select_key, select_mode = "valid_accuracy", "max"

    def __init__(self, config: AnyExperiment):
        data = config.data
        loaded = ds.load_braille(
            n_steps=data.n_steps, split_seed=data.split_seed, fractions=data.fractions
        )
        self.inputs, self.labels = loaded.inputs, loaded.labels
        self.augment = data.augment
        self.splits = {k: v.clone() for k, v in loaded.splits.items()}
        rng = np.random.default_rng(data.split_seed + 12345)
        for split, limit in (
            ("train", data.max_train),
            ("valid", data.max_eval),
            ("test", data.max_eval),
        ):
            if limit and limit < len(self.splits[split]):
                self.splits[split] = _stratified_subset(self.splits[split], self.labels, limit, rng)

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def batch(self, split: str, index: list[int], device, train: bool = False):
        """Time-major inputs [T, B, 24], labels, no mask; ``train`` applies the augmentation
        (random streams of the global torch RNG, which checkpoints restore)."""
        rows = self.splits[split][index]
        inputs = self.inputs[rows]  # [B, T, 24]
        if train:
            inputs = augment(inputs, self.augment)
        return inputs.transpose(0, 1).contiguous().to(device), self.labels[rows].to(device), None

    def normaliser(self, split: str, index: list[int]) -> float:
        return float(len(index))

    @staticmethod
    def loss_sum(logits, labels, _mask) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="sum")

    @staticmethod
    def eval_sums(logits, labels, _mask) -> list[float]:
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = (logits.argmax(-1) == labels).sum()
        return [loss.item(), float(labels.numel()), correct.item()]

    @staticmethod
    def eval_metrics(sums: list[float], split: str) -> dict:
        loss, count, correct = sums
        return {
            f"{split}_loss": loss / max(count, 1.0),
            f"{split}_accuracy": correct / max(count, 1.0),
            f"{split}_samples": int(count),
        }


def augment(inputs: torch.Tensor, options) -> torch.Tensor:
    """Event trains ``[B, T, C]`` with each sample shifted in time by a random whole number of
    steps in ``[-time_shift, time_shift]`` (zeros shifted in) and each event dropped with
    probability ``event_dropout`` (an event count is thinned binomially)."""
    if options.time_shift:
        steps = inputs.shape[1]
        shifts = torch.randint(-options.time_shift, options.time_shift + 1, (inputs.shape[0],))
        source = torch.arange(steps)[None, :] - shifts[:, None]  # [B, T]
        valid = (source >= 0) & (source < steps)
        gathered = inputs.gather(1, source.clamp(0, steps - 1)[..., None].expand_as(inputs))
        inputs = gathered * valid[..., None]
    if options.event_dropout:
        keep = 1.0 - options.event_dropout
        if bool(((inputs == 0) | (inputs == 1)).all()):
            inputs = inputs * (torch.rand_like(inputs) < keep)
        else:  # counts: binomial thinning
            inputs = torch.distributions.Binomial(inputs, torch.full_like(inputs, keep)).sample()
    return inputs


def _stratified_subset(index: torch.Tensor, labels: torch.Tensor, limit: int, rng) -> torch.Tensor:
    index = index.numpy()
    classes = np.unique(labels.numpy())
    per_class = max(1, limit // len(classes))
    keep = []
    for label in classes:
        members = index[labels.numpy()[index] == label]
        keep.append(rng.permutation(members)[:per_class])
    return torch.from_numpy(np.sort(np.concatenate(keep))).long()


def make_task(config: AnyExperiment):
    return JSBTask(config) if config.task == "jsb" else BrailleTask(config)
