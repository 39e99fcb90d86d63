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
(a killed process, a NaN loss) through :data:`pipelines.loop.BATCH_HOOKS`.

A run stops before ``optim.epochs`` when the next epoch would end past ``optim.time_budget_s`` or
when the selected validation metric has not improved for ``optim.patience`` epochs (early
stopping); the test metrics are those of the best validation epoch's weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bruno import devices
from pipelines import config as cfg
from pipelines import datasets as ds
from pipelines import loop, models
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
from pipelines.schema import AnyExperiment, Optim
from pipelines.tasks import make_task

RESULTS_DIR = Path("results/train")
# re-exported: the loop's pieces live in pipelines.loop
TrainingDiverged = loop.TrainingDiverged
evaluate = loop.evaluate


@dataclass
class RunFiles:
    """The files of one run directory (module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.config, self.last, self.best = (
            self.root / n for n in ("config.json", "last.pt", "best.pt")
        )
        self.metrics = self.root / "metrics.json"

    def clear(self) -> None:
        for path in (self.last, self.best, self.metrics, self.root / "metrics.csv"):
            path.unlink(missing_ok=True)
        (self.root / "failure.json").unlink(missing_ok=True)


def _open(files: RunFiles, resolved: dict, dist: Dist, fresh: bool) -> dict | None:
    """Prepare the run directory; returns the finished run's metrics when it is complete.
    A directory holding a run of another config is refused (ConfigError)."""
    if dist.main:
        files.root.mkdir(parents=True, exist_ok=True)
        if fresh:
            files.clear()
    dist.barrier()
    if files.config.exists() and (files.last.exists() or files.metrics.exists()):
        previous = json.loads(files.config.read_text())
        try:  # fill in defaults of keys added since that run was written
            previous = cfg.dump(cfg.resolve(previous, name=previous.get("name")))
        except cfg.ConfigError:
            pass  # a config of another format: certainly a different run
        if cfg.what_runs(previous) != cfg.what_runs(resolved):
            raise cfg.ConfigError(
                f"{files.root} holds a run of a different config; use --fresh to overwrite it or "
                f"--run NAME to write elsewhere"
            )
        if files.metrics.exists():
            if dist.main:
                print(f"train: {files.root} is complete (use --fresh to run it again)")
            return json.loads(files.metrics.read_text())
    if dist.main:
        write_json(files.config, resolved)
    return None


@dataclass
class Progress:
    """What a checkpoint carries besides weights: epochs done, their rows, the best epoch."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best: dict | None = None
    elapsed: float = 0.0

    def improved(self, value: float, mode: str) -> bool:
        best = self.best
        return best is None or (value < best["value"] if mode == "min" else value > best["value"])

    def stop_reason(self, optim: Optim) -> str | None:
        """Why no further epoch starts: the time budget or early stopping (patience)."""
        if optim.time_budget_s and self.history:
            if self.elapsed + self.history[-1]["epoch_time_s"] > optim.time_budget_s:
                return f"time budget {optim.time_budget_s:.0f} s reached after epoch {self.epoch}"
        if optim.patience and self.best and self.epoch - self.best["epoch"] >= optim.patience:
            return f"no validation improvement for {optim.patience} epochs after epoch {self.epoch}"
        return None


def _restore(files: RunFiles, model, optimiser, dist: Dist) -> Progress:
    if not files.last.exists():
        return Progress()
    state = torch.load(files.last, map_location=dist.device, weights_only=False)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    set_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
    if dist.main:
        print(f"train: resuming {files.root.name} after epoch {state['epoch']}")
    return Progress(state["epoch"], state["history"], state["best"], state.get("elapsed", 0.0))


def _record(files: RunFiles, model, optimiser, progress: Progress, improved, task, dist: Dist):
    """Checkpoints (best, last), the per-epoch CSV and curves, and one line on stdout."""
    rng = _gather_rng(dist)
    if not dist.main:
        return
    if improved:
        save_checkpoint(files.best, {"model": model.state_dict(), "epoch": progress.epoch})
    save_checkpoint(
        files.last,
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "epoch": progress.epoch,
            "history": progress.history,
            "best": progress.best,
            "elapsed": progress.elapsed,
            "rng": rng,
        },
    )
    write_csv(files.root / "metrics.csv", progress.history)
    plot_curves(files.root / "curves.png", progress.history, files.root.name, task.select_key)
    row = progress.history[-1]
    summary = ", ".join(
        f"{k}={v:.4f}" for k, v in row.items() if k.startswith("valid_") and isinstance(v, float)
    )
    print(
        f"{files.root.name} epoch {progress.epoch}: train_loss={row['train_loss']:.4f} "
        f"{summary} lr={row['lr']:.2g} ({row['epoch_time_s']:.1f} s)",
        flush=True,
    )


def run_one(
    config: AnyExperiment, seed: int, run_dir: Path, dist: Dist, fresh=False, progress=True
):
    """Train (or resume) one seed of an experiment; returns the final metrics."""
    files = RunFiles(run_dir)
    done = _open(files, cfg.dump(config.model_copy(update={"seeds": [seed]})), dist, fresh)
    if done is not None:
        return done
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    task = make_task(config)
    model = models.build(config, seed).to(dist.device)
    optim = config.optim
    optimiser = loop.optimiser(loop.parameter_groups(model), optim)
    state = _restore(files, model, optimiser, dist)
    trained = dist.wrap(model)
    baseline_rss = peak_rss_mb()
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)
    stopped = None
    while state.epoch < optim.epochs and not (stopped := state.stop_reason(optim)):
        epoch = state.epoch
        label = f"{files.root.name} epoch {epoch + 1}/{optim.epochs}" if progress else None
        started = time.perf_counter()
        result = loop.train_epoch(trained, model, task, optimiser, optim, epoch, seed, dist, label)
        valid = evaluate(model, task, "valid", optim.eval_batch_size, dist)
        epoch_time = time.perf_counter() - started
        if not all(math.isfinite(v) for v in (result.train_loss, *valid.values())):
            raise TrainingDiverged(
                f"non-finite validation metrics after epoch {epoch + 1}: {valid}"
            )
        row = {
            "epoch": epoch + 1,
            "train_loss": result.train_loss,
            **valid,
            "lr": loop.learning_rate(optim, epoch),
            "train_time_s": result.train_time_s,
            "epoch_time_s": epoch_time,
            "skipped_batches": result.skipped_batches,
            "batches": result.batches,
            "peak_rss_mb": peak_rss_mb(),
        }
        if dist.device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
        improved = state.improved(row[task.select_key], task.select_mode)
        state.epoch, state.elapsed = epoch + 1, state.elapsed + epoch_time
        state.history.append(row)
        if improved:
            state.best = {"epoch": epoch + 1, "value": row[task.select_key]}
        _record(files, model, optimiser, state, improved, task, dist)
        dist.barrier()
    return _finish(files, config, seed, model, task, state, stopped, baseline_rss, dist)


def _finish(files, config, seed, model, task, state: Progress, stopped, baseline_rss, dist):
    """Final evaluation with the best validation epoch's weights; writes metrics.json."""
    dist.barrier()
    best = torch.load(files.best, map_location=dist.device, weights_only=False)
    model.load_state_dict(best["model"])
    final = {}
    for split in ("valid", "test"):
        final.update(evaluate(model, task, split, config.optim.eval_batch_size, dist))
    history = state.history
    metrics = {
        "experiment": config.name,
        "task": config.task,
        "seed": seed,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "train_time_s": sum(r["train_time_s"] for r in history),
        "total_time_s": state.elapsed,
        "mean_epoch_time_s": sum(r["epoch_time_s"] for r in history) / max(len(history), 1),
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline_rss,
        "skipped_batches": sum(r.get("skipped_batches", 0) for r in history),
        "batches": sum(r.get("batches", 0) for r in history),
        "world_size": dist.world,
        "device": str(dist.device),
        "stopped_early": stopped,
        "presets": models.presets_used(config),
        "host": host(),
        **final,
    }
    if dist.device.type == "cuda":
        metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dist.device) / 2**20
    if dist.main:
        write_json(files.metrics, metrics)
        (files.root / "failure.json").unlink(missing_ok=True)
        print(f"train: {files.root} done: " + _headline(metrics))
    dist.barrier()
    return metrics


def host() -> dict:
    """What the run's floating point depends on besides its config and seed: a rerun on another
    CPU (another vector unit: torch picks its kernels by it) or torch build may round
    differently, and spiking thresholds turn those last bits into another training run."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            ln
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


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
    try:
        config = cfg.use_device(config)
    except devices.DeviceError as error:
        print(f"train: {error}", file=sys.stderr)
        return 2
    seeds = args.seed or config.seeds
    if args.run and len(seeds) > 1:
        print("train: --run names one run; give one --seed with it", file=sys.stderr)
        return 2
    if args.run and Path(args.run).name != args.run:
        print(
            f"train: --run is a directory name under --out ({args.out}), not a path: "
            f"got {args.run!r}; give --out for another root",
            file=sys.stderr,
        )
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
            run_dir = args.out / (args.run or f"{config.name}_s{seed}")
            run_one(config, seed, run_dir, dist, fresh=args.fresh, progress=not args.no_progress)
    except TrainingDiverged as error:
        if dist.main:
            write_json(
                run_dir / "failure.json",
                {
                    "experiment": config.name,
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


def _preflight(config: AnyExperiment) -> None:
    """Checks that need imports but no training: the network builds with this config."""
    models.build(config, 0)
