"""The training loop's pieces: optimiser and learning-rate schedule, one training epoch, evaluation,
and the guards that stop a run on non-finite values (:class:`TrainingDiverged`).

An epoch draws its batch order from ``(seed, epoch)`` alone, so a resumed run repeats exactly the
batches an uninterrupted one would see. Under DDP every rank builds the same global batch and
takes its share; the loss is normalised by the *global* batch (gradients equal a single-process
run). Tests inject faults through :data:`BATCH_HOOKS`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipelines.distributed import Dist
from pipelines.schema import Optim

#: Called with ``(epoch, batch, loss)`` (1-based) after each training batch's loss, returning the
#: loss to use; empty in production. Tests inject faults through it (tests/fault_injection.py).
BATCH_HOOKS: list[Callable[[int, int, torch.Tensor], torch.Tensor]] = []


class TrainingDiverged(RuntimeError):
    """NaN/Inf in the loss, the network's outputs or its parameters."""


#: Trained parameters that are neuron physics, not synaptic weights: no weight decay on them
#: (decay would pull a log time constant towards log 1 s).
NO_DECAY_PREFIX = "log_tau"


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """The model's parameters for the optimiser: one group, plus a group without weight decay
    for the neurons' trained time constants when there are any (the one-group form keeps older
    checkpoints' optimiser state loadable)."""
    weights, physics = [], []
    for name, param in model.named_parameters():
        is_physics = name.rsplit(".", 1)[-1].startswith(NO_DECAY_PREFIX)
        (physics if is_physics else weights).append(param)
    groups = [{"params": weights}]
    if physics:
        groups.append({"params": physics, "weight_decay": 0.0})
    return groups


def optimiser(params, optim: Optim) -> torch.optim.Optimizer:
    """The configured optimiser over ``params`` (parameters or :func:`parameter_groups`)."""
    name, lr, decay = optim.name, optim.lr, optim.weight_decay
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)


def learning_rate(optim: Optim, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: constant, or cosine-annealed from ``lr`` to
    ``lr * min_lr_fraction`` over ``epochs`` (a pure function of the epoch: resumes exactly)."""
    if optim.schedule == "constant":
        return optim.lr
    floor = optim.lr * optim.min_lr_fraction
    progress = epoch / max(optim.epochs - 1, 1)
    return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))


def batches(size: int, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    order = (
        torch.randperm(size, generator=generator) if generator is not None else torch.arange(size)
    )
    order = order.tolist()
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]


def check_finite(tensors: dict, where: str) -> str | None:
    for name, tensor in tensors.items():
        if tensor is not None and torch.is_tensor(tensor) and not torch.isfinite(tensor).all():
            return f"non-finite {name} {where}"
    return None


def evaluate(model, task, split: str, batch_size: int, dist: Dist) -> dict:
    model.eval()
    sums = None
    with torch.no_grad():
        for number, index in enumerate(batches(task.size(split), batch_size, None)):
            if number % dist.world != dist.rank:  # whole batches per rank; sums are additive
                continue
            inputs, targets, mask = task.batch(split, index, dist.device)
            logits, _ = model(inputs)
            local = task.eval_sums(logits, targets, mask)
            sums = local if sums is None else [a + b for a, b in zip(sums, local, strict=True)]
    sums = dist.sum(sums if sums is not None else [0.0] * task.eval_sum_count)
    return task.eval_metrics(sums, split)


@dataclass
class EpochResult:
    train_loss: float
    train_time_s: float
    skipped_batches: int
    batches: int


def train_epoch(
    trained: torch.nn.Module,
    model: torch.nn.Module,
    task,
    optimiser: torch.optim.Optimizer,
    optim: Optim,
    epoch: int,
    seed: int,
    dist: Dist,
    progress_label: str | None,
) -> EpochResult:
    """One pass over the training split (``trained`` is ``model`` or its DDP wrapper); raises
    :class:`TrainingDiverged` on a non-finite loss, output or parameter, and on a non-finite
    gradient unless ``optim.on_nonfinite_grad == "skip"`` (that batch then makes no update)."""
    from tqdm.auto import tqdm

    trained.train()
    for group in optimiser.param_groups:
        group["lr"] = learning_rate(optim, epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = batches(task.size("train"), optim.batch_size, generator)
    started = time.perf_counter()
    loss_total, norm_total, skipped = 0.0, 0.0, 0
    bar = tqdm(
        order,
        desc=progress_label,
        disable=progress_label is None or not dist.main,
        leave=False,
        mininterval=1.0,
        dynamic_ncols=True,
    )
    for number, index in enumerate(bar):
        where = f"at epoch {epoch + 1} batch {number + 1}"
        normaliser = task.normaliser("train", index)
        shard = index[dist.rank :: dist.world]
        # more ranks than samples in this batch: run one sample with weight 0 so that every
        # rank takes part in DDP's gradient all-reduce
        weight = 1.0 if shard else 0.0
        inputs, targets, mask = task.batch("train", shard or index[:1], dist.device, train=True)
        logits, aux = trained(inputs)
        loss_sum = weight * task.loss_sum(logits, targets, mask)
        for hook in BATCH_HOOKS:
            loss_sum = hook(epoch + 1, number + 1, loss_sum)
        problem = check_finite({"loss": loss_sum, "output": logits, **aux}, where)
        if dist.any(problem is not None):
            raise TrainingDiverged(problem or f"non-finite values on another rank {where}")
        loss = loss_sum * (dist.world / normaliser)  # DDP averages over ranks
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        problem = check_finite(
            {f"gradient of {n}": q.grad for n, q in model.named_parameters()}, where
        )
        if problem and optim.on_nonfinite_grad == "stop":
            raise TrainingDiverged(problem)
        if problem:  # "skip": no update from this batch (gradients are identical on all ranks)
            skipped += 1
            optimiser.zero_grad(set_to_none=True)
        else:
            if optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimiser.step()
        problem = check_finite(dict(model.named_parameters()), f"(parameters) after {where[3:]}")
        if problem:
            raise TrainingDiverged(problem)
        loss_total += loss_sum.item()
        norm_total += normaliser / dist.world
        if dist.main and number % 5 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() * dist.world / normaliser:.3f}")
    bar.close()
    train_loss = dist.sum([loss_total])[0] / dist.sum([norm_total])[0]
    return EpochResult(train_loss, time.perf_counter() - started, skipped, len(order))
