"""Executors: where a study's trainings and evaluations run.

:func:`~.study.run_study` makes each (variant, seed) model and evaluates each (variant, seed,
column) record. The ``local`` executor (the default) does so one after another in its own
process, in the plan's order. The others fan the same work out as tasks:

- ``processes``: a pool of ``workers`` local processes
  (:class:`concurrent.futures.ProcessPoolExecutor`, spawn context), each running torch on
  ``threads`` threads (by default the cores shared out: ``workers * threads <= cores``);
- ``ray``: tasks on a Ray cluster (``pip install "robustlab[ray]"``): the one at ``address``
  (``"auto"``: the cluster this machine belongs to), else a local one of ``workers * threads``
  CPUs. Every node must see the run folder at the same path (a shared filesystem) and import
  robustlab and the study's module.

The plan becomes a graph of tasks (:func:`study_tasks`):

- **model** (variant, seed): train, convert or load the model into ``models/`` (a variant
  shared by every seed once); a :class:`~.variants.Convert` waits for its source's model;
- **evaluate** (variant, seed): the missing columns of that variant and seed, in job order; it
  waits for its own model and for every model its columns read from other variants (a
  transfer column's surrogate).

One evaluation task per (variant, seed), not per column: a model's columns depend on each
other (a column that repeats another on a deterministic model, an audit that reads its
target's evaluation state), so only whole-model tasks guarantee that two workers never compute,
or write, the same record or evaluation state; a task also loads its model once. Studies have
variants times seeds to spread (tens), which is the parallelism that pays. The tasks are listed
in the plan's job order, each model just before the first evaluation that reads it, and a free
worker takes the first task that is ready: the verdict's evaluations (a plan lists them first)
start as soon as their models exist, not after every model of the study, so a long run stopped
early has the rows its verdict needs, as the local executor's has. Model tasks are keyed by the
model, so no model is ever trained twice, and the
plan's resources (a learned dictionary) are made by the driver before any task starts, so
workers only read them.

Each worker opens the run folder as the driver did (it finds the study again by its name in
its module) and writes models and records exactly as the local executor does, one file each,
atomically: a folder made by one executor is read, and resumed, by any other, and the records
equal the local executor's bit for bit at the same number of torch threads. The driver logs
each task's start and end with the lines the task logged (workers never write to the console
themselves) and writes the report at the end.

A task that raises stops the run: nothing new starts, the running tasks finish, and the error
is raised. A worker that dies (killed, out of memory) fails the run with a
:class:`~robustlab.core.errors.RobustlabError` naming its task; what finished is kept and
running the same command again resumes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..core.checks import check_int
from ..core.errors import InputError, RobustlabError
from .columns import Column
from .variants import Convert, Train, Variant

if TYPE_CHECKING:
    from .study import Study, StudyConfig, _Run

__all__ = ["EXECUTORS", "Task", "TaskResult", "WorkerLost", "check_executor", "cores", "fan_out", "find_study",
           "model_sources", "study_tasks"]

EXECUTORS: tuple[str, ...] = ("local", "processes", "ray")
"""The executors :func:`~.study.run_study` takes."""

RAY_MISSING = 'the ray executor needs Ray, which is not installed: pip install "robustlab[ray]"'

TaskKey = tuple[str, str, int]
"""``(kind, variant label, seed)``: a task's identity."""


@dataclass(frozen=True)
class Task:
    """One unit of work: make a model, or evaluate the missing columns of one (variant, seed).

    Attributes:
        kind: ``model`` or ``evaluate``.
        seed: the evaluation's seed; for a model, the seed of its folder (0 for a shared one).
        columns: the columns to evaluate (evaluate tasks).
        needs: the keys of the tasks that must finish first.
        shared: a model that every seed shares (:attr:`~.variants.Variant.per_seed` off).
    """

    kind: Literal["model", "evaluate"]
    label: str
    seed: int
    columns: tuple[str, ...] = ()
    needs: tuple[TaskKey, ...] = ()
    shared: bool = False

    @property
    def key(self) -> TaskKey:
        return (self.kind, self.label, self.seed)

    def __str__(self) -> str:
        if self.kind == "model":
            return f"model {self.label} ({'shared by every seed' if self.shared else f'seed {self.seed}'})"
        return f"evaluate {self.label} (seed {self.seed}): {', '.join(self.columns)}"


@dataclass(frozen=True)
class TaskResult:
    """What a worker sends back: the lines its task logged, its wall time and its process."""

    key: TaskKey
    lines: tuple[str, ...]
    seconds: float
    pid: int


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to open the run folder as the driver did (sent with every task).

    Attributes:
        module: the module that defines the study (a worker imports it to find the study).
        study: the study's name.
        config: the study's config, pickled: a worker first adds ``paths`` to its own, so that
            it can import the module that defines the config's class.
        threads: torch threads of the worker.
        paths: the driver's ``sys.path`` (a Ray worker starts with its own; the run folder's
            filesystem is shared, so the driver's folders are most likely there too).
    """

    module: str
    study: str
    config: bytes
    out: str
    device: str
    baseline: str | None
    state_dir: str | None
    threads: int
    paths: tuple[str, ...] = ()


def cores() -> int:
    """The CPU cores this process may use."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def check_executor(executor: str, workers: int | None, threads: int | None, address: str | None) -> None:
    """Refuse an unknown executor, settings that do not apply to it, and the ray executor
    without Ray installed."""
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; known executors: {', '.join(EXECUTORS)}")
    if workers is not None:
        check_int(workers, "workers", 1)
    if threads is not None:
        check_int(threads, "threads", 1)
    if executor == "local" and (workers is not None or threads is not None):
        setting = f"workers={workers}" if workers is not None else f"threads={threads}"
        raise InputError(f"{setting} applies to the parallel executors: pass executor='processes' or "
                         "executor='ray' with it")
    if address is not None and executor != "ray":
        raise InputError(f"address={address!r} names a Ray cluster: pass executor='ray' with it")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise InputError(RAY_MISSING)


# ---------------------------------------------------------------------------------------------
# the task graph


def _made(run: _Run, variant: Variant, seed: int) -> bool:
    """Whether a trained model is already on disk (its task would only load it). A loaded
    checkpoint and a conversion without finetuning are never saved, so they always get a task."""
    trained = isinstance(variant.make, Train) or (isinstance(variant.make, Convert) and variant.make.finetune is not None)
    folder = run.workshop.folder(variant, seed)
    return trained and (folder / "model.safetensors").exists() and (folder / "cost.json").exists()


def model_sources(columns: Mapping[str, Column], name: str) -> list[str]:
    """The variants whose models column ``name`` reads besides the evaluated one: a transfer's
    surrogate, through the column an audit audits and the one a column repeats on a
    deterministic model (both evaluated in the same task)."""
    found: list[str] = []
    stack, seen = [name], set()
    while stack:
        column = columns.get(stack.pop())
        if column is None or column.name in seen:
            continue
        seen.add(column.name)
        s = column.settings
        if column.kind == "transfer" and s.get("source") not in (None, "twin"):
            found.append(str(s["source"]))
        if column.kind == "audit" and "column" in s:
            stack.append(str(s["column"]))
        if column.deterministic not in (None, "skip"):
            stack.append(str(column.deterministic))
    return found


def study_tasks(run: _Run, seeds: Iterable[int], jobs: Sequence[tuple[str, Sequence[str]]] | None = None) -> list[Task]:
    """The tasks that complete ``run``'s folder for ``seeds``, each after the tasks it needs:
    the evaluations in the plan's order (seed by seed, job by job), each preceded by the models
    it reads that no earlier evaluation read (a source before its conversion). Records already
    on disk are left out, and models already trained are not remade (an evaluation then loads
    them). ``jobs``: only these ``(variant, columns)`` (a selection of the plan's, as
    :func:`~.study.select_jobs` makes it; default: the whole plan)."""
    models: dict[TaskKey, Task] = {}

    def model(label: str, seed: int) -> TaskKey | None:
        variant = run.workshop.variant(label)
        own = seed if variant.per_seed else 0
        key: TaskKey = ("model", label, own)
        if key in models:
            return key
        if _made(run, variant, own):
            return None
        source = model(variant.make.source, own) if isinstance(variant.make, Convert) else None
        models[key] = Task("model", label, own, needs=() if source is None else (source,), shared=not variant.per_seed)
        return key

    todo: dict[tuple[str, int], dict[str, None]] = {}
    for seed in seeds:
        for label, cols in run.plan.jobs if jobs is None else jobs:
            missing = [c for c in cols if not run.store.has(label, seed, c)]
            if missing:
                todo.setdefault((label, seed), {}).update(dict.fromkeys(missing))
    tasks: list[Task] = []
    listed: set[TaskKey] = set()

    def list_model(key: TaskKey) -> None:
        if key not in listed:
            listed.add(key)
            for need in models[key].needs:
                list_model(need)
            tasks.append(models[key])

    for (label, seed), names in todo.items():
        needs = [model(label, seed), *(model(source, seed) for c in names for source in model_sources(run.columns, c))]
        keys = tuple(dict.fromkeys(k for k in needs if k))
        for key in keys:
            list_model(key)
        tasks.append(Task("evaluate", label, seed, tuple(names), keys))
    return tasks


def _make_resources(run: _Run, labels: Iterable[str]) -> None:
    """Make (or read back) every resource the variants ``labels`` refer to, in this process,
    before any worker starts, so that no two workers compute the same one."""
    for label in dict.fromkeys(labels):
        make = run.workshop.variant(label).make
        if isinstance(make, Convert):
            run.workshop.options(make.options)
        elif isinstance(make, Train):
            for _, options in make.conversions:
                run.workshop.options(options)


# ---------------------------------------------------------------------------------------------
# the worker side

_OPEN: list[Any] = []
"""This worker process's open run folder: ``[spec, run, log lines]`` (one at a time)."""
_STARTED: Any = None
"""The process pool's queue of ``(task key, pid)``, sent as each task starts."""


def find_study(module: str, name: str) -> Study:
    """The study called ``name`` defined at the top level of ``module`` (imported), or
    registered in :data:`~.study.STUDIES`."""
    from .study import STUDIES, Study

    if module == "__main__" and "__mp_main__" in sys.modules:  # a spawned worker's name for it
        module = "__mp_main__"
    mod = importlib.import_module(module)
    for value in vars(mod).values():
        if isinstance(value, Study) and value.name == name:
            return value
    if name in STUDIES:
        return STUDIES.get(name)
    raise RobustlabError(f"study {name!r} is neither registered nor defined at the top level of module {module!r}")


def _open(spec: WorkerSpec) -> tuple[_Run, list[str]]:
    """The worker's view of the run folder, opened once per process (records and models are
    read again by every task, since other workers write them)."""
    from .study import _Run

    if _OPEN and _OPEN[0] == spec:
        _OPEN[1].reload()
        return _OPEN[1], _OPEN[2]
    sys.path.extend(p for p in spec.paths if p not in sys.path and os.path.isdir(p))
    config = pickle.loads(spec.config)  # from the driver, never from a file
    study = find_study(spec.module, spec.study)
    lines: list[str] = []
    plan = study.plan(config, spec.baseline)
    run = _Run(study, config, plan, Path(spec.out), torch.device(spec.device), lines.append, (),
               None if spec.state_dir is None else Path(spec.state_dir))
    _OPEN[:] = [spec, run, lines]
    return run, lines


def _init_worker(started: Any) -> None:
    global _STARTED
    _STARTED = started


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")


def _execute(spec: WorkerSpec, task: Task) -> TaskResult:
    """Run ``task`` in this worker process."""
    t0 = time.perf_counter()
    if _STARTED is not None:
        _STARTED.put((task.key, os.getpid()))
    torch.set_num_threads(spec.threads)
    for name in _TORCHRUN_ENV:  # a task is one process: never join a torchrun group it inherited
        os.environ.pop(name, None)
    run, lines = _open(spec)
    del lines[:]
    if task.kind == "model":
        run.workshop.model(task.label, task.seed)
    else:
        run.run_job(task.label, task.seed, task.columns)
    return TaskResult(task.key, tuple(lines), time.perf_counter() - t0, os.getpid())


# ---------------------------------------------------------------------------------------------
# the driver side


class WorkerLost(RobustlabError):
    """A worker process died while running a task (the task did not raise: it never ended)."""


class _Backend:
    """Where tasks run: submit one, wait for some, read one's result."""

    slots: int
    broken = False
    """Whether a failure stopped every running task (a process pool after a worker's death)."""

    def submit(self, task: Task) -> Any:
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> list[Any]:
        raise NotImplementedError

    def result(self, handle: Any, task: Task, running: Mapping[Any, Task]) -> TaskResult:
        raise NotImplementedError


def _drive(tasks: list[Task], backend: _Backend, say: Callable[[str], None], resume: str) -> None:
    """Run ``tasks`` on ``backend``, each once every task it needs is done, at most
    ``backend.slots`` at a time, in list order among those ready. After a failure nothing new
    starts; the running tasks finish (unless their workers were stopped with the failed one)
    and the first error is raised."""
    waiting, running = list(tasks), dict[Any, Task]()
    done: set[TaskKey] = set()
    failure: Exception | None = None
    while waiting or running:
        if failure is None:
            for task in [t for t in waiting if all(k in done for k in t.needs)]:
                if len(running) >= backend.slots:
                    break
                waiting.remove(task)
                running[backend.submit(task)] = task
                say(f"start: {task}")
        if not running:
            if failure is None:
                raise RobustlabError(f"tasks wait for tasks that never run: {', '.join(map(str, waiting))}")
            break
        for handle in backend.wait(list(running)):
            task = running.pop(handle)
            try:
                result = backend.result(handle, task, running)
            except Exception as e:
                if failure is not None:
                    say(f"stopped: {task}")
                    continue
                failure = e
                say(f"failed: {task}" + (" (its worker died)" if isinstance(e, WorkerLost) else f": {e}"))
                if backend.broken:  # the others were stopped with it
                    raise
                if running:
                    say(f"waiting for the {len(running)} running task(s) to finish; nothing new starts")
                continue
            done.add(task.key)
            say(f"done ({len(done)}/{len(tasks)}, {result.seconds:.1f} s): {task}")
            for line in result.lines:
                say("  " + line.strip())
    if failure is not None:
        if not isinstance(failure, WorkerLost):  # a worker's death says it itself
            say(resume)
        raise failure


class _Processes(_Backend):
    def __init__(self, pool: ProcessPoolExecutor, spec: WorkerSpec, started: Any, slots: int, resume: str) -> None:
        self.pool, self.spec, self.started, self.slots, self.resume = pool, spec, started, slots, resume
        self.pids: dict[TaskKey, int] = {}
        self.lost: WorkerLost | None = None

    def submit(self, task: Task) -> Future[TaskResult]:
        return self.pool.submit(_execute, self.spec, task)

    def wait(self, handles: list[Any]) -> list[Any]:
        finished = list(wait(handles, return_when=FIRST_COMPLETED).done)
        self._drain()
        return finished

    def _drain(self) -> None:
        while not self.started.empty():
            key, pid = self.started.get()
            self.pids[key] = pid

    def result(self, handle: Any, task: Task, running: Mapping[Any, Task]) -> TaskResult:
        error = handle.exception()
        if error is None:
            out: TaskResult = handle.result()
            return out
        if not isinstance(error, BrokenProcessPool):
            raise error
        if self.lost is None:
            self.lost = self._lost([task, *running.values()])
            self.broken = True
        raise self.lost

    def _lost(self, tasks: list[Task]) -> WorkerLost:
        """Name the task whose worker died: the pool stops the others (SIGTERM) after the first
        death, so once every worker has ended, the one that ended otherwise ran the failed task."""
        self._drain()
        processes = getattr(self.pool, "_processes", None) or {}  # best effort: the standard library's own table
        deadline = time.monotonic() + 10.0
        while any(getattr(p, "exitcode", 0) is None for p in processes.values()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the pool is stopping them (and may be reaping one right now)
        codes = {pid: getattr(processes.get(pid), "exitcode", None) for pid in self.pids.values()}
        dead = [t for t in tasks if codes.get(self.pids.get(t.key, -1)) not in (None, -signal.SIGTERM)]
        if len(dead) == 1:
            code = codes[self.pids[dead[0].key]]
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            others = [str(t) for t in tasks if t is not dead[0]]
            stopped = f"; stopped with it: {'; '.join(others)}" if others else ""
            return WorkerLost(f"a worker process died ({how}) while running task {dead[0]}{stopped}. {self.resume}")
        return WorkerLost(f"a worker process died while running one of the tasks {'; '.join(map(str, tasks))}. "
                          f"{self.resume}")


class _Ray(_Backend):
    def __init__(self, ray: Any, spec: WorkerSpec, slots: int, resume: str) -> None:
        self.ray, self.spec, self.slots, self.resume = ray, spec, slots, resume
        self.remote = ray.remote(_execute).options(num_cpus=spec.threads, max_retries=0)

    def submit(self, task: Task) -> Any:
        return self.remote.remote(self.spec, task)

    def wait(self, handles: list[Any]) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        return list(ready)

    def result(self, handle: Any, task: Task, running: Mapping[Any, Task]) -> TaskResult:
        exceptions = self.ray.exceptions
        try:
            out: TaskResult = self.ray.get(handle)
            return out
        except exceptions.RayTaskError as e:  # the task raised: the error itself
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from e
            raise
        except exceptions.RayError as e:  # the worker or its node died
            first = str(e).splitlines()[0] if str(e) else ""
            raise WorkerLost(f"the Ray worker running task {task} died ({type(e).__name__}: {first}). "
                             f"{self.resume}") from e


@contextlib.contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """Processes started inside the block read ``threads`` from ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` when they import torch (this process's torch is already set up, so the
    variables change nothing here)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


def fan_out(study: Study, cfg: StudyConfig, run: _Run, jobs: Sequence[tuple[str, Sequence[str]]] | None = None, *,
            executor: str, workers: int | None, threads: int | None, address: str | None, device: str,
            baseline: str | None, state_dir: str | None, log: Callable[[str], None]) -> None:
    """Complete ``run``'s folder with the ``processes`` or ``ray`` executor (see the module
    docstring): every missing model and record of ``cfg.seeds`` (of ``jobs`` only, when given),
    as the local executor makes them.

    Raises:
        InputError: for a study a worker cannot find again (not registered and not defined at
            the top level of a module), or Ray not installed.
        RobustlabError: when a worker dies; a task's own error as it raised it.
    """
    module = getattr(study.plan, "__module__", None) or "robustlab.experiments"
    if executor == "ray" and module == "__main__":
        raise InputError(f"the ray executor finds study {study.name!r} by its module on the workers, which cannot "
                         "import a script's __main__: define the study in a module")
    try:
        found = find_study(module, study.name)
    except RobustlabError:
        found = None
    if found is not study:
        raise InputError(f"the {executor} executor runs study {study.name!r} in other processes, which find it by its "
                         f"name in module {module!r}: register it (register_study) or define it at the top level of "
                         "that module")
    tasks = study_tasks(run, cfg.seeds, jobs)
    if not tasks:
        return
    ray = _import_ray() if executor == "ray" else None
    if executor == "ray" and address is not None:  # a cluster: as many at a time as its CPUs hold
        threads = threads or 1
    else:  # this machine's cores, shared out
        workers = workers or max(1, cores() // (threads or 1))
        threads = threads or max(1, cores() // workers)
    try:
        config = pickle.dumps(cfg)
    except Exception as e:
        raise InputError(f"the {executor} executor sends the study's config to other processes, which it cannot: "
                         f"{e}; use a config class defined at the top level of a module") from e
    spec = WorkerSpec(module, study.name, config, str(run.out), device, baseline, state_dir, threads,
                      tuple(p for p in sys.path if p))
    _make_resources(run, [t.label for t in tasks] + [s for t in tasks for s in _convert_sources(run, t.label)])
    resume = (f"What finished is kept in {run.out}: running the same command again resumes the run (with any "
              "executor).")
    if ray is not None:
        started_here = not ray.is_initialized()
        if started_here and address is not None:
            ray.init(address=address, logging_level=logging.WARNING)
        elif started_here:
            ray.init(num_cpus=(workers or 1) * threads, include_dashboard=False, logging_level=logging.WARNING)
        try:
            slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
            log(f"ray executor: {len(tasks)} tasks, {slots} at a time, {threads} thread(s) each")
            _drive(tasks, _Ray(ray, spec, slots, resume), log, resume)
        finally:
            if started_here:
                ray.shutdown()
        return
    assert workers is not None
    context = multiprocessing.get_context("spawn")
    started = context.SimpleQueue()
    log(f"processes executor: {len(tasks)} tasks on {workers} worker processes, {threads} thread(s) each")
    with _thread_env(threads):
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(started,))
        try:
            _drive(tasks, _Processes(pool, spec, started, workers, resume), log, resume)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _convert_sources(run: _Run, label: str) -> list[str]:
    """The variants a conversion chain starting at ``label`` passes through (a conversion
    without finetuning is remade from its source by every task that uses it)."""
    chain = []
    make = run.workshop.variant(label).make
    while isinstance(make, Convert):
        chain.append(make.source)
        make = run.workshop.variant(make.source).make
    return chain

