"""`python -m pipelines sweep GROUP|EXPERIMENT... [--jobs N]`: every seed of several experiments.

An experiment matrix (the Braille comparison: 12 experiments x 3 seeds) is many independent,
single-threaded runs; this stage runs them as parallel ``python -m pipelines train EXP --seed S``
processes, ``--jobs`` at a time with ``--threads`` threads each, slowest first (FeLIF output
layers before LIF ones), so a machine with many cores finishes the matrix in a fraction of the
sequential time. Each run writes its usual ``<out>/<name>_s<seed>/`` plus ``train.log`` (its
output). Runs already complete are skipped by ``train`` itself; unfinished ones resume from their
last checkpoint, so a sweep stopped by ``--time-limit``, Ctrl-C or a lost machine is continued by
running the same command again. The runs go through the execution layer (``--backend``:
:mod:`bruno.execution`'s local process pool, or Ray for a cluster; same runs, same results).

Exit status: 0 when every run finished, 3 when some run failed (its log is named), 4 when the
time limit stopped runs that can be resumed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines import config as cfg
from pipelines.schema import AnyExperiment
from pipelines.train import RESULTS_DIR, add_override_option

REPO = Path(__file__).resolve().parents[1]
# Relative cost of one epoch, for the slowest-first order (measured: a FeLIF output layer with
# 1000 fine steps per coarse step takes ~6x a LIF one's epoch on Braille).
_NEURON_COST = {"felif": 6.0, "rlif": 1.2, "lif": 1.0}


@dataclass(frozen=True)
class Job:
    experiment: str
    seed: int
    run: str
    cost: float

    def command(self, out: Path, overrides: list[str]) -> list[str]:
        sets = [item for o in overrides for item in ("--set", o)]
        return [
            sys.executable,
            "-m",
            "pipelines",
            "train",
            self.experiment,
            "--seed",
            str(self.seed),
            "--out",
            str(out),
            "--no-progress",
            *sets,
        ]


def _estimated_cost(config: AnyExperiment) -> float:
    kinds = [neuron.kind for neuron in config.model.neurons()]
    per_epoch = max((_NEURON_COST.get(kind, 1.0) for kind in kinds), default=1.0)
    return per_epoch * config.optim.epochs


def plan(selection: list[str], overrides: list[str], seeds: list[int] | None) -> list[Job]:
    """The runs of ``selection`` (experiment names, config paths or report groups), slowest first.

    Every config is loaded and validated before anything runs (a bad key fails the whole sweep
    up front instead of one run hours in)."""
    experiments = cfg.list_experiments()
    groups: dict[str, list[str]] | None = None  # group -> experiments, read when first needed
    names: list[str] = []
    for item in selection:
        if item in experiments or Path(item).suffix == ".json":
            names.append(item)
            continue
        if groups is None:
            groups = {}
            for name in experiments:
                groups.setdefault(cfg.load(name).group, []).append(name)
        if item not in groups:
            raise cfg.ConfigError(
                f"{item!r} is neither an experiment nor a group; groups: "
                + ", ".join(sorted(groups))
            )
        names.extend(groups[item])
    jobs = []
    for name in dict.fromkeys(names):
        config = cfg.load(name, overrides)
        for seed in seeds or config.seeds:
            jobs.append(Job(name, seed, f"{config.name}_s{seed}", _estimated_cost(config)))
    return sorted(jobs, key=lambda job: (-job.cost, job.run))


def _finished(out: Path, job: Job) -> bool:
    return (out / job.run / "metrics.json").exists()


@dataclass(frozen=True)
class Launch:
    """What one worker runs for a job: its command line, log file and environment additions
    (merged into the worker's own environment, so that a Ray node keeps its PATH), and the wall
    clock time (``time.time()``) past which it stops the run (it resumes on the next sweep)."""

    run: str
    command: tuple[str, ...]
    log: str
    env: tuple[tuple[str, str], ...]
    deadline: float | None


def launch(job: Launch) -> str:
    """Run one training process to its end or to the deadline; returns ``"exit <code>"`` or
    ``"stopped"``. Its output goes to its log; an interrupted worker stops its run first."""
    if job.deadline is not None and time.time() >= job.deadline:
        return "stopped"
    with open(job.log, "a") as log:
        process = subprocess.Popen(
            list(job.command),
            cwd=REPO,
            env=dict(os.environ, **dict(job.env)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    return f"exit {process.wait(timeout=0.5)}"
                except subprocess.TimeoutExpired:
                    if job.deadline is not None and time.time() >= job.deadline:
                        _terminate(process)
                        return "stopped"
        except BaseException:
            _terminate(process)
            raise


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM the run's process group (a run keeps its last epoch's checkpoint); SIGKILL after
    30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run(
    jobs: list[Job],
    out: Path,
    overrides: list[str],
    parallel: int,
    threads: int,
    time_limit: float | None = None,
    progress: bool = True,
    backend: str | None = None,
) -> dict[str, list[str]]:
    """Run ``jobs`` ``parallel`` at a time on the execution layer's ``backend``
    (:mod:`bruno.execution`); returns the run names by outcome (``done``, ``failed``,
    ``stopped``)."""
    from bruno import execution

    env = {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    deadline = time.time() + time_limit if time_limit else None
    launches = []
    for job in jobs:
        (out / job.run).mkdir(parents=True, exist_ok=True)
        command = tuple(job.command(out, overrides))
        log = str(out / job.run / "train.log")
        launches.append(Launch(job.run, command, log, tuple(env.items()), deadline))
    results, failures = execution.run_many(
        launch,
        launches,
        backend=backend,
        workers=min(parallel, max(1, len(launches))),
        runs_per_worker=max(1, len(launches)),
        cpus_per_job=threads,
        progress="sweep" if progress else None,
    )
    outcome: dict[str, list[str]] = {"done": [], "failed": [], "stopped": []}
    for job, result in zip(jobs, results, strict=True):
        if result == "stopped":
            outcome["stopped"].append(job.run)
        elif result == "exit 0" and _finished(out, job):
            outcome["done"].append(job.run)
        else:
            outcome["failed"].append(job.run)
    for failure in failures:
        print(f"sweep: {jobs[failure.index].run}: {failure.error}", file=sys.stderr)
    return outcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("selection", nargs="+", help="experiment names, config paths or groups")
    parser.add_argument(
        "--jobs",
        type=int,
        default=max(1, os.cpu_count() or 1),
        help="runs at a time (default: one per CPU core)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1)")
    parser.add_argument("--seed", type=int, action="append", help="only these seeds")
    add_override_option(parser)  # applies to every run
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results root")
    parser.add_argument(
        "--time-limit", type=float, metavar="SECONDS", help="stop (resumably) after this long"
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        help="execution layer (bruno.execution): local process pool (default, or "
        "$BRUNO_EXECUTION_BACKEND) or Ray ($RAY_ADDRESS, else a local Ray instance)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        print("sweep: --jobs and --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        jobs = plan(args.selection, args.overrides, args.seed)
    except cfg.ConfigError as error:
        print(f"sweep: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for job in jobs:
            print(f"{job.run}\t{job.experiment}\tseed {job.seed}\tcost {job.cost:g}")
        return 0
    from bruno import execution

    try:
        backend = execution.resolve_backend(args.backend)
    except (execution.BackendUnavailable, ValueError) as error:
        print(f"sweep: {error}", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    todo = [job for job in jobs if not _finished(args.out, job)]
    print(
        f"sweep: {len(jobs)} runs, {len(jobs) - len(todo)} already complete; "
        f"{args.jobs} at a time x {args.threads} thread(s) on the {backend} backend"
    )
    outcome = run(
        todo,
        args.out,
        args.overrides,
        args.jobs,
        args.threads,
        args.time_limit,
        progress=not args.no_progress,
        backend=backend,
    )
    print(
        f"sweep: {len(outcome['done'])} finished, {len(outcome['failed'])} failed, "
        f"{len(outcome['stopped'])} stopped"
    )
    for name in outcome["failed"]:
        print(f"  failed: {name} ({args.out / name / 'train.log'})")
    if outcome["stopped"]:
        print(
            f"sweep: time limit reached; {len(outcome['stopped'])} runs stopped (the same command "
            "continues them: finished runs are skipped, the others resume from their last epoch)"
        )
    if outcome["failed"]:
        return 3
    return 4 if outcome["stopped"] else 0
