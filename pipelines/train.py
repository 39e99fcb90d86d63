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
batch; the last good checkpoint (written only after a finite epoch) is kept. For tests,
``BRUNO_FAULT=kill@E.B`` kills the process (SIGKILL) at epoch E batch B, ``BRUNO_FAULT=nan@E.B``
makes that batch's loss NaN.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines import config as cfg
from pipelines import datasets as ds
from pipelines import models

RESULTS_DIR = Path("results/train")
FAULT_ENV = "BRUNO_FAULT"


class TrainingDiverged(RuntimeError):
    """NaN/Inf in the loss, the network's outputs or its parameters."""


# --------------------------------------------------------------------------------------------------
# Distributed helpers


class Dist:
    """The process group (or a single process): rank, world size, device, reductions."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialised = False
        if torch.cuda.is_available() and os.environ.get("BRUNO_DEVICE", "") != "cpu":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self.initialised = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if not self.initialised:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self):
        if self.initialised:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.initialised:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised = False


# --------------------------------------------------------------------------------------------------
# Data


class JSBTask:
    select_key, select_mode = "valid_nll_per_step", "min"

    def __init__(self, config: dict):
        data = config["data"]
        rolls = ds.load_jsb(data["grid"])
        if data["max_frames"]:
            rolls = {k: [r[: data["max_frames"]] for r in v] for k, v in rolls.items()}
        if data["max_train"]:
            rolls["train"] = rolls["train"][: data["max_train"]]
        if data["max_eval"]:
            for split in ("valid", "test"):
                rolls[split] = rolls[split][: data["max_eval"]]
        self.rolls = rolls

    def size(self, split: str) -> int:
        return len(self.rolls[split])

    def batch(self, split: str, index: list[int], device):
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
    select_key, select_mode = "valid_accuracy", "max"

    def __init__(self, config: dict):
        data = config["data"]
        loaded = ds.load_braille(
            n_steps=data["n_steps"], split_seed=data["split_seed"], fractions=data["fractions"]
        )
        self.inputs, self.labels = loaded.inputs, loaded.labels
        self.splits = {k: v.clone() for k, v in loaded.splits.items()}
        rng = np.random.default_rng(data["split_seed"] + 12345)
        for split, limit in (
            ("train", data["max_train"]),
            ("valid", data["max_eval"]),
            ("test", data["max_eval"]),
        ):
            if limit and limit < len(self.splits[split]):
                self.splits[split] = _stratified_subset(self.splits[split], self.labels, limit, rng)

    def size(self, split: str) -> int:
        return len(self.splits[split])

    def batch(self, split: str, index: list[int], device):
        rows = self.splits[split][index]
        inputs = self.inputs[rows].transpose(0, 1).contiguous()  # [T, B, 24]
        return inputs.to(device), self.labels[rows].to(device), None

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


def _stratified_subset(index: torch.Tensor, labels: torch.Tensor, limit: int, rng) -> torch.Tensor:
    index = index.numpy()
    classes = np.unique(labels.numpy())
    per_class = max(1, limit // len(classes))
    keep = []
    for label in classes:
        members = index[labels.numpy()[index] == label]
        keep.append(rng.permutation(members)[:per_class])
    return torch.from_numpy(np.sort(np.concatenate(keep))).long()


def make_task(config: dict):
    return JSBTask(config) if config["task"] == "jsb" else BrailleTask(config)


# --------------------------------------------------------------------------------------------------
# Checkpoints and files


def _save(path: Path, payload: dict) -> None:
    from bruno.io import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, payload) -> None:
    from bruno.io import atomic_write_json

    atomic_write_json(path, payload)


def _write_csv(path: Path, rows: list[dict]) -> None:
    from bruno.io import atomic_write_text

    if not rows:
        return
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def plot_curves(path: Path, history: list[dict], title: str, select_key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    valid_loss = "valid_nll_per_step" if "valid_nll_per_step" in history[0] else "valid_loss"
    axes[0].plot(epochs, [row[valid_loss] for row in history], "s-", label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("NLL per step (nats)" if "nll" in valid_loss else "cross-entropy")
    axes[0].legend()
    second = "valid_frame_accuracy" if "valid_frame_accuracy" in history[0] else "valid_accuracy"
    axes[1].plot(epochs, [row[second] for row in history], "s-", color="C1")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(second.replace("_", " "))
    fig.suptitle(title)
    fig.tight_layout()
    from bruno.io import atomic_save_figure

    atomic_save_figure(fig, path, dpi=110)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# --------------------------------------------------------------------------------------------------
# Training


def _fault() -> tuple[str, int, int] | None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    try:
        kind, where = spec.split("@")
        epoch, batch = where.split(".")
        return kind, int(epoch), int(batch)
    except ValueError:
        raise SystemExit(
            f"{FAULT_ENV}={spec!r}: expected kill@EPOCH.BATCH or nan@EPOCH.BATCH"
        ) from None


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
    return [0.0] * (5 if isinstance(task, JSBTask) else 3)


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
        _write_json(config_path, resolved)

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
        _set_rng_state(
            state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0]
        )
        if dist.main:
            print(f"train: resuming {run_dir.name} after epoch {start_epoch}")
    trained = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=None if dist.device.type == "cpu" else [dist.device]
        )

    fault = _fault()
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
            if fault and fault[0] == "kill" and (epoch + 1, number + 1) == fault[1:]:
                os.kill(os.getpid(), signal.SIGKILL)
            normaliser = task.normaliser("train", index)
            shard = index[dist.rank :: dist.world]
            # more ranks than samples in this batch: run one sample with weight 0 so that every
            # rank takes part in DDP's gradient all-reduce
            weight = 1.0 if shard else 0.0
            inputs, targets, mask = task.batch("train", shard or index[:1], dist.device)
            logits, aux = trained(inputs)
            loss_sum = weight * task.loss_sum(logits, targets, mask)
            if fault and fault[0] == "nan" and (epoch + 1, number + 1) == fault[1:]:
                loss_sum = loss_sum * float("nan")
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
                _save(best_path, {"model": model.state_dict(), "epoch": epoch + 1})
            _save(
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
            _write_csv(run_dir / "metrics.csv", history)
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
        _write_json(metrics_path, metrics)
        (run_dir / "failure.json").unlink(missing_ok=True)
        print(f"train: {run_dir} done: " + _headline(metrics))
    dist.barrier()
    return metrics


def _gather_rng(dist: Dist) -> list:
    states = [_rng_state()]
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
            _write_json(
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
