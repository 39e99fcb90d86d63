"""`python -m pipelines train [EXPERIMENT|config.json] [options]`: train one experiment.

Each seed of the experiment is one run, written to ``results/train/<name>_s<seed>/``::

    config.json      the resolved config (what was run)
    metrics.csv      one row per epoch (train loss, validation metrics, time, memory)
    metrics.json     final metrics on the test split (model selected on the validation split)
    last.pt          checkpoint after the last completed epoch (model, optimiser, RNG states)
    best.pt          model weights of the best validation epoch
    curves.png       learning curves
    split.json       (Braille) the train/validation/test indices

A run whose directory holds a ``last.pt`` of the same config resumes from it (a run killed
mid-epoch repeats that epoch and reaches the same result as an uninterrupted run: data order and
random streams are restored). A finished run is not repeated unless ``--fresh``.

Distributed: under ``torchrun --nproc_per_node=N`` the run uses DistributedDataParallel (gloo on
CPU, nccl on GPU). Every rank builds the same global batch and takes its share; the loss is
normalised by the *global* batch, so the gradients equal a single-process run at the same global
batch. Only rank 0 writes files.

Faults: a non-finite loss, output or parameter stops the run with a message naming the epoch and
batch; the last good checkpoint (written only after a finite epoch) is kept. Tests inject faults
(a killed process, a NaN loss) through :data:`BATCH_HOOKS`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipelines import config as cfg
from pipelines import datasets as ds
from pipelines import models
from pipelines.distributed import Dist
from pipelines.runfiles import (
    peak_rss_mb,
    plot_curves,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_csv,
    write_json,
)
from pipelines.tasks import make_task

RESULTS_DIR = Path("results/train")
#: Called with ``(epoch, batch, loss)`` (1-based) after each training batch's loss, returning the
#: loss to use; empty in production. Tests inject faults through it (tests/fault_injection.py).
BATCH_HOOKS: list[Callable[[int, int, torch.Tensor], torch.Tensor]] = []


class TrainingDiverged(RuntimeError):
    """NaN/Inf in the loss, the network's outputs or its parameters."""


# --------------------------------------------------------------------------------------------------
# Training


def _optimiser(params, optim: dict):
    name, lr, decay = optim["name"], optim["lr"], optim["weight_decay"]
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)


def _batches(size: int, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    order = (
        torch.randperm(size, generator=generator) if generator is not None else torch.arange(size)
    )
    order = order.tolist()
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]


def _check_finite(tensors: dict, where: str) -> str | None:
    for name, tensor in tensors.items():
        if tensor is not None and torch.is_tensor(tensor) and not torch.isfinite(tensor).all():
            return f"non-finite {name} {where}"
    return None


def evaluate(model, task, split: str, batch_size: int, dist: Dist) -> dict:
    model.eval()
    batches = _batches(task.size(split), batch_size, None)
    sums = None
    with torch.no_grad():
        for number, index in enumerate(batches):
            if number % dist.world != dist.rank:  # whole batches per rank; sums are additive
                continue
            inputs, targets, mask = task.batch(split, index, dist.device)
            logits, _ = model(inputs)
            local = task.eval_sums(logits, targets, mask)
            sums = local if sums is None else [a + b for a, b in zip(sums, local, strict=True)]
    sums = dist.sum(sums if sums is not None else _zero_sums(task))
    return task.eval_metrics(sums, split)


def _zero_sums(task) -> list[float]:
    return [0.0] * task.eval_sum_count


def run_one(config: dict, seed: int, run_dir: Path, dist: Dist, fresh=False, progress=True):
    """Train (or resume) one seed of an experiment; returns the final metrics."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    resolved = dict(config, seeds=[seed])
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    config_path, last_path, best_path = (
        run_dir / "config.json",
        run_dir / "last.pt",
        run_dir / "best.pt",
    )
    metrics_path = run_dir / "metrics.json"
    if fresh and dist.main:
        for path in (
            last_path,
            best_path,
            metrics_path,
            run_dir / "metrics.csv",
            run_dir / "failure.json",
        ):
            path.unlink(missing_ok=True)
    dist.barrier()
    if config_path.exists() and (last_path.exists() or metrics_path.exists()):
        previous = json.loads(config_path.read_text())
        try:  # fill in defaults of keys added since that run was written
            previous = cfg.resolve(previous, name=previous.get("name"))
        except cfg.ConfigError:
            pass
        if previous != json.loads(json.dumps(resolved)):
            raise cfg.ConfigError(
                f"{run_dir} holds a run of a different config; use --fresh to overwrite it or "
                f"--run NAME to write elsewhere"
            )
        if metrics_path.exists():
            if dist.main:
                print(f"train: {run_dir} is complete (use --fresh to run it again)")
            return json.loads(metrics_path.read_text())
    if dist.main:
        write_json(config_path, resolved)

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    task = make_task(config)
    model = models.build(config, seed).to(dist.device)
    optim = config["optim"]
    optimiser = _optimiser(model.parameters(), optim)
    start_epoch, history, best, elapsed = 0, [], None, 0.0
    if last_path.exists():
        state = torch.load(last_path, map_location=dist.device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        elapsed = state.get("elapsed", 0.0)
        set_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
        if dist.main:
            print(f"train: resuming {run_dir.name} after epoch {start_epoch}")
    trained = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=None if dist.device.type == "cpu" else [dist.device]
        )

    baseline_rss = peak_rss_mb()
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)
    budget = optim.get("time_budget_s")
    stopped = None
    for epoch in range(start_epoch, optim["epochs"]):
        if budget and history and elapsed + history[-1]["epoch_time_s"] > budget:
            stopped = f"time budget {budget:.0f} s reached after epoch {epoch}"
            break
        trained.train()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        batches = _batches(task.size("train"), optim["batch_size"], generator)
        started = time.perf_counter()
        loss_total, norm_total, skipped = 0.0, 0.0, 0
        bar = tqdm(
            batches,
            desc=f"{run_dir.name} epoch {epoch + 1}/{optim['epochs']}",
            disable=not (progress and dist.main),
            leave=False,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        for number, index in enumerate(bar):
            normaliser = task.normaliser("train", index)
            shard = index[dist.rank :: dist.world]
            # more ranks than samples in this batch: run one sample with weight 0 so that every
            # rank takes part in DDP's gradient all-reduce
            weight = 1.0 if shard else 0.0
            inputs, targets, mask = task.batch("train", shard or index[:1], dist.device)
            logits, aux = trained(inputs)
            loss_sum = weight * task.loss_sum(logits, targets, mask)
            for hook in BATCH_HOOKS:
                loss_sum = hook(epoch + 1, number + 1, loss_sum)
            problem = _check_finite(
                {"loss": loss_sum, "output": logits, **aux},
                f"at epoch {epoch + 1} batch {number + 1}",
            )
            if dist.any(problem is not None):
                raise TrainingDiverged(
                    problem or f"non-finite values on another rank at epoch {epoch + 1}"
                )
            loss = loss_sum * (dist.world / normaliser)  # DDP averages over ranks
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            problem = _check_finite(
                {f"gradient of {n}": q.grad for n, q in model.named_parameters()},
                f"at epoch {epoch + 1} batch {number + 1}",
            )
            if problem and optim["on_nonfinite_grad"] == "stop":
                raise TrainingDiverged(problem)
            if problem:  # "skip": no update from this batch (gradients are identical on all ranks)
                skipped += 1
                optimiser.zero_grad(set_to_none=True)
            else:
                if optim["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
                optimiser.step()
            problem = _check_finite(
                dict(model.named_parameters()),
                f"(parameters) after epoch {epoch + 1} batch {number + 1}",
            )
            if problem:
                raise TrainingDiverged(problem)
            loss_total += loss_sum.item()
            norm_total += normaliser / dist.world
            if dist.main and number % 5 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() * dist.world / normaliser:.3f}")
        bar.close()
        train_loss = dist.sum([loss_total])[0] / dist.sum([norm_total])[0]
        train_time = time.perf_counter() - started
        valid = evaluate(model, task, "valid", optim["eval_batch_size"], dist)
        epoch_time = time.perf_counter() - started
        elapsed += epoch_time
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **valid,
            "train_time_s": train_time,
            "epoch_time_s": epoch_time,
            "skipped_batches": skipped,
            "batches": len(batches),
            "peak_rss_mb": peak_rss_mb(),
        }
        if dist.device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
        if not all(math.isfinite(v) for v in (train_loss, *[v for v in valid.values()])):
            raise TrainingDiverged(
                f"non-finite validation metrics after epoch {epoch + 1}: {valid}"
            )
        history.append(row)
        value = row[task.select_key]
        improved = best is None or (
            value < best["value"] if task.select_mode == "min" else value > best["value"]
        )
        if improved:
            best = {"epoch": epoch + 1, "value": value}
        rng = _gather_rng(dist)
        if dist.main:
            if improved:
                save_checkpoint(best_path, {"model": model.state_dict(), "epoch": epoch + 1})
            save_checkpoint(
                last_path,
                {
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "best": best,
                    "elapsed": elapsed,
                    "rng": rng,
                },
            )
            write_csv(run_dir / "metrics.csv", history)
            plot_curves(run_dir / "curves.png", history, run_dir.name, task.select_key)
            summary = ", ".join(
                f"{k}={v:.4f}"
                for k, v in row.items()
                if k.startswith("valid_") and isinstance(v, float)
            )
            print(
                f"{run_dir.name} epoch {epoch + 1}/{optim['epochs']}: train_loss={train_loss:.4f} "
                f"{summary} ({epoch_time:.1f} s)",
                flush=True,
            )
        dist.barrier()

    # final evaluation with the best validation epoch's weights
    dist.barrier()
    state = torch.load(best_path, map_location=dist.device, weights_only=False)
    model.load_state_dict(state["model"])
    final = {}
    for split in ("valid", "test"):
        final.update(evaluate(model, task, split, optim["eval_batch_size"], dist))
    metrics = {
        "experiment": config["name"],
        "task": config["task"],
        "seed": seed,
        "best_epoch": state["epoch"],
        "epochs_run": len(history),
        "train_time_s": sum(r["train_time_s"] for r in history),
        "total_time_s": elapsed,
        "mean_epoch_time_s": sum(r["epoch_time_s"] for r in history) / max(len(history), 1),
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline_rss,
        "skipped_batches": sum(r.get("skipped_batches", 0) for r in history),
        "batches": sum(r.get("batches", 0) for r in history),
        "world_size": dist.world,
        "device": str(dist.device),
        "stopped_early": stopped,
        "presets": models.presets_used(config),
        **final,
    }
    if dist.device.type == "cuda":
        metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
    if dist.main:
        write_json(metrics_path, metrics)
        (run_dir / "failure.json").unlink(missing_ok=True)
        print(f"train: {run_dir} done: " + _headline(metrics))
    dist.barrier()
    return metrics


def _gather_rng(dist: Dist) -> list:
    states = [rng_state()]
    if dist.initialised:
        import torch.distributed as dist_module

        gathered = [None] * dist.world
        dist_module.all_gather_object(gathered, states[0])
        return gathered
    return states


def _headline(metrics: dict) -> str:
    keys = ("test_nll_per_step", "test_frame_accuracy", "test_accuracy", "best_epoch")
    return ", ".join(
        f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
        for k in keys
        if k in metrics
    )


# --------------------------------------------------------------------------------------------------
# Command line


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides`` for :func:`cfg.load`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.epochs=3 (JSON values)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "experiment",
        nargs="?",
        default=cfg.DEFAULT_EXPERIMENT,
        help="experiment name in pipelines/configs/ or a config path "
        f"(default {cfg.DEFAULT_EXPERIMENT})",
    )
    parser.add_argument("--seed", type=int, action="append", help="run only this seed (repeatable)")
    add_override_option(parser)
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="results root (results/train)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help=f"dataset directory (default ${ds.DATA_DIR_ENV}, <repo>/data)"
    )
    parser.add_argument("--run", help="run directory name (default <name>_s<seed>)")
    parser.add_argument(
        "--fresh", action="store_true", help="discard an existing run and start over"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir is not None:
        os.environ[ds.DATA_DIR_ENV] = str(args.data_dir)
    if args.list:
        for name in cfg.list_experiments():
            print(name)
        return 0
    try:
        config = cfg.load(args.experiment, args.overrides)
    except cfg.ConfigError as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    seeds = args.seed or config["seeds"]
    if args.run and len(seeds) > 1:
        print("train: --run names one run; give one --seed with it", file=sys.stderr)
        return 2
    try:
        _preflight(config)
    except (cfg.ConfigError, ds.DatasetError, ImportError) as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    dist = Dist()
    if "OMP_NUM_THREADS" not in os.environ:  # else torch already follows it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world))
    status = 0
    try:
        for seed in seeds:
            run_dir = args.out / (args.run or f"{config['name']}_s{seed}")
            run_one(config, seed, run_dir, dist, fresh=args.fresh, progress=not args.no_progress)
    except TrainingDiverged as error:
        if dist.main:
            write_json(
                run_dir / "failure.json",
                {
                    "experiment": config["name"],
                    "seed": seed,
                    "reason": str(error),
                    "peak_rss_mb": peak_rss_mb(),
                },
            )
        print(
            f"train: STOPPED - {error}. The last good checkpoint is kept "
            f"({run_dir / 'last.pt'}); lower optim.lr or set optim.grad_clip and run again "
            f"(it resumes from there), or use --fresh.",
            file=sys.stderr,
        )
        status = 3
    except (cfg.ConfigError, ds.DatasetError) as error:
        print(f"train: {error}", file=sys.stderr)
        status = 2
    finally:
        dist.close()
    return status


def _preflight(config: dict) -> None:
    """Checks that need imports but no training: the network builds with this config."""
    models.build(config, 0)
