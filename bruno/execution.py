"""Independent jobs on one execution layer: a local process pool (default) or a Ray cluster.

Three kinds of work here are many independent jobs: experiment sweeps (one training process per
run), SPICE batches (Monte-Carlo over devices and states, stimulus sets) and co-simulation runs.
They all go through :func:`run_many`, which calls a picklable function on each argument and
returns the results in order with the failures, each with its reason, so a batch that loses a job
says so instead of dropping it. Two backends, the same contract:

``"local"`` (default)
    worker processes on this machine, recycled after ``runs_per_worker`` jobs (ngspice leaks
    memory per run in shared mode): the jobs go in chunks of ``workers * runs_per_worker``, each
    chunk in a fresh pool. A crashed worker breaks its whole pool, so every job of that pool
    without a result is run again alone in a pool of its own: only a job that crashes by itself is
    reported as a crash. (``max_tasks_per_child`` is not used: on Python 3.11 a pool whose workers
    retire can deadlock instead of starting replacements.)
``"ray"``
    Ray tasks (``pip install -e '.[cluster]'``): on the cluster at ``$RAY_ADDRESS`` when it is
    set, else on a local Ray instance started with ``workers`` CPUs. ``cpus_per_job`` CPUs per
    job; a Ray worker retires after ``runs_per_worker`` jobs (``max_calls``), the recycling above;
    a job whose worker crashes is run once more in a fresh worker and reported only if it crashes
    again (no automatic retries otherwise, so both backends report the same failures). Every node
    needs what a job needs: the repository at the same path, its ``.venv``, ngspice, the data
    directory, and for sweeps a results directory shared with the driver.

The backend is the ``backend`` argument, else ``$BRUNO_EXECUTION_BACKEND``, else ``"local"``; a
backend that cannot run raises :class:`BackendUnavailable` with what to install. Results are the
same on both backends: the jobs are the same deterministic functions of their arguments.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

BACKENDS = ("local", "ray")
BACKEND_ENV = "BRUNO_EXECUTION_BACKEND"
RAY_INSTALL = "pip install -e '.[cluster]' (in the project's .venv: .venv/bin/pip ...)"


class BackendUnavailable(RuntimeError):
    """A named execution backend cannot run here (e.g. Ray is not installed)."""


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """One job of a batch that failed: its index, its arguments and why."""

    index: int
    arguments: Any
    error: str


def resolve_backend(backend: str | None = None) -> str:
    """The backend to use: ``backend``, else ``$BRUNO_EXECUTION_BACKEND``, else ``"local"``."""
    name = (backend or os.environ.get(BACKEND_ENV) or "local").strip().lower()
    if name not in BACKENDS:
        source = "backend" if backend else f"${BACKEND_ENV}"
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "ray":
        _import_ray()
    return name


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise BackendUnavailable(
            f"the Ray backend needs Ray, which is not installed: {RAY_INSTALL}"
        ) from error
    return ray


def ray_init(workers: int | None = None):
    """Connect to ``$RAY_ADDRESS`` or start a local Ray instance (``workers`` CPUs); returns ray.
    A session already initialised in this process is reused."""
    ray = _import_ray()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        options: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        if address is None:
            options.update(num_cpus=workers or os.cpu_count() or 1)
            # A local instance for one batch: a small object store (jobs pass small values).
            options.update(object_store_memory=200 * 1024**2)
        ray.init(address=address, **options)
    return ray


def run_many(
    function: Callable[[Any], Any],
    arguments: Sequence[Any] | Iterable[Any],
    *,
    backend: str | None = None,
    workers: int | None = None,
    runs_per_worker: int = 20,
    cpus_per_job: int = 1,
    progress: str | None = None,
) -> tuple[list[Any], list[RunFailure]]:
    """Call a picklable ``function`` on each argument on ``backend`` (module docstring).

    Returns the results in order (``None`` where a job failed) and the failures in index order.
    ``workers``: jobs at a time on either backend (default: one per CPU of this machine, at most
    one per job; on a Ray cluster its CPUs may bound it further). ``cpus_per_job``: the CPUs Ray
    reserves for each job (a training run with several threads); the local pool runs
    ``workers`` jobs whatever their threads. ``progress``: a tqdm label, or None.
    """
    from tqdm.auto import tqdm

    name = resolve_backend(backend)
    arguments = list(arguments)
    workers = workers or max(1, min(len(arguments), os.cpu_count() or 1))
    runs_per_worker = max(1, int(runs_per_worker))
    bar = tqdm(total=len(arguments), desc=progress, disable=progress is None, leave=False)
    try:
        if name == "local":
            results, failures = _run_local(
                function, arguments, workers, runs_per_worker, bar.update
            )
        else:
            results, failures = _run_ray(
                function, arguments, workers, runs_per_worker, max(1, cpus_per_job), bar.update
            )
    finally:
        bar.close()
    return results, [failures[i] for i in sorted(failures)]


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _run_local(function, arguments, workers, runs_per_worker, advance):
    results: list[Any] = [None] * len(arguments)
    failures: dict[int, RunFailure] = {}

    def run_pool(indices: list[int], pool_workers: int) -> list[int]:
        """Run ``indices`` in one fresh pool; return those lost to a broken pool."""
        broken: list[int] = []
        with concurrent.futures.ProcessPoolExecutor(max_workers=pool_workers) as pool:
            futures = {pool.submit(function, arguments[i]): i for i in indices}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                try:
                    results[index] = future.result()
                except concurrent.futures.process.BrokenProcessPool as error:
                    broken.append(index)
                    failures[index] = RunFailure(
                        index, arguments[index], f"worker crashed: {error}"
                    )
                    continue
                except Exception as error:  # noqa: BLE001 - reported per job
                    failures[index] = RunFailure(index, arguments[index], _reason(error))
                advance()
        return broken

    chunk = workers * runs_per_worker
    for start in range(0, len(arguments), chunk):
        indices = list(range(start, min(start + chunk, len(arguments))))
        for index in sorted(run_pool(indices, min(workers, len(indices)))):
            failures.pop(index)  # lost with its pool: run it again alone, which decides
            if run_pool([index], 1):  # it crashed by itself
                advance()
    return results, failures


def _run_ray(function, arguments, workers, runs_per_worker, cpus, advance):
    ray = ray_init(workers * cpus)
    from ray import exceptions

    crashes = (exceptions.WorkerCrashedError, exceptions.NodeDiedError)
    task = ray.remote(num_cpus=cpus, max_calls=runs_per_worker, max_retries=0)(function)
    results: list[Any] = [None] * len(arguments)
    failures: dict[int, RunFailure] = {}
    # at most ``workers`` jobs in flight, as on the local pool (a sweep's --jobs is a promise)
    waiting = list(enumerate(arguments))[::-1]
    pending: dict[Any, tuple[int, bool]] = {}

    def submit() -> None:
        while waiting and len(pending) < workers:
            i, argument = waiting.pop()
            pending[task.remote(argument)] = (i, False)

    submit()
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        index, retried = pending.pop(ready)
        submit()
        try:
            results[index] = ray.get(ready)
            failures.pop(index, None)
        except crashes as error:
            failures[index] = RunFailure(index, arguments[index], f"worker crashed: {error}")
            if not retried:  # as the local pool does: once more, alone in a fresh worker
                pending[task.remote(arguments[index])] = (index, True)
                continue
        except exceptions.RayTaskError as error:
            cause = error.cause if error.cause is not None else error
            failures[index] = RunFailure(index, arguments[index], _reason(cause))
        advance()
    return results, failures
