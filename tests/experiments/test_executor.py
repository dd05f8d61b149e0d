"""The parallel executors (``processes``, ``ray``) against the serial one, on a toy study.

Three variants of ``resnet-mini`` on ``synthetic`` data, two seeds: ``base`` (one epoch on
512 images, about 40% clean accuracy, so per-image outcomes are mixed), ``silu`` (base's ReLUs swapped for SiLUs, then finetuned: a conversion, so its model
needs base's) and ``other`` (trained apart, with a transfer column whose surrogate is base: its
evaluation needs base's model). The serial run (``local`` executor, one torch thread) is
computed once in its own folder; each parallel run (workers on one thread each) starts from an
empty folder and must give the same records field by field (timings aside) and the same model
weights. A ``probe`` column (a clean column that, inside a worker process, kills the process
when the environment says so) stands for a worker killed mid-task.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from robustlab.cli import app
from robustlab.core import InputError
from robustlab.experiments.columns import COLUMN_KINDS, Column, ColumnKind, EvalContext
from robustlab.experiments.executor import Task, TaskResult, _Backend, _drive, study_tasks
from robustlab.experiments.records import Record, RecordStore
from robustlab.experiments.report import Cell, Table
from robustlab.experiments.study import (
    STUDIES,
    Plan,
    Profile,
    Study,
    StudyConfig,
    _Run,
    run_study,
    select_jobs,
)
from robustlab.experiments.variants import Convert, Train, TrainSpec, Variant

KILL = "ROBUSTLAB_TEST_EXECUTOR_KILL"
"""``variant/seed`` whose probe column kills the worker process evaluating it."""
KILL_CODE = 17
PROBE = "executor-test-probe"


def _probe(ctx: EvalContext, model: torch.nn.Module, column: Column, variant: str, seed: int) -> Record:
    """Clean accuracy; inside a worker process, death when :data:`KILL` names (variant, seed)."""
    if os.environ.get(KILL) == f"{variant}/{seed}" and multiprocessing.parent_process() is not None:
        os._exit(KILL_CODE)
    return COLUMN_KINDS.get("clean").evaluate(ctx, model, column, variant, seed)


COLUMN_KINDS.register(PROBE, ColumnKind(_probe, "clean"), about="test only: clean accuracy, or a killed worker")


@dataclass(frozen=True)
class ToyConfig(StudyConfig):
    epochs: int = 1


TOY = ToyConfig(profile="toy", dataset="synthetic", model="resnet-mini", eps=0.03, seeds=(0, 1), eval_n=16,
                clean_n=32, eval_batch_size=16)
PGD = {"steps": 3, "step_size": 0.01, "random_start": True, "restarts": 1, "early_stop": True, "eot": 0}
LABELS = ("base", "silu", "other")
JOBS = (("base", ("clean", "pgd")), ("silu", ("clean", "probe", "pgd")), ("other", ("clean", "transfer-base")))


def toy_plan(cfg: ToyConfig, baseline: str | None) -> Plan:
    spec = TrainSpec(cfg.epochs, 0.05, batch_size=16)  # the 512 training images: ~40% clean accuracy
    finetune = TrainSpec(1, 0.01, batch_size=32, limit=64)
    return Plan(
        variants=(Variant("base", Train(cfg.model, spec)),
                  Variant("silu", Convert("base", "activations", (("kind", "silu"),), finetune)),
                  Variant("other", Train(cfg.model, replace(spec, seed_offset=7)))),
        columns=(Column("clean", "clean", "Clean"), Column("pgd", "pgd", "PGD", PGD), Column("probe", PROBE, "Probe"),
                 Column("transfer-base", "transfer", "Transfer from base", {"source": "base", "attack": "pgd"})),
        jobs=JOBS,
        tables=(Table("main", "Toy", "", LABELS, (Cell("clean", "Clean"), Cell("pgd", "PGD"))),))


TOY_STUDY = Study(name="toy-executor-test", title="Toy executors", paper="none",
                  profiles={"toy": Profile(TOY, "seconds", "three variants, two seeds")}, plan=toy_plan,
                  intro=lambda cfg, facts: "Toy.")
EXPECTED = sorted((v, s, c) for s in TOY.seeds for v, cols in JOBS for c in cols)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread in this process, as each worker runs (float sums may depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def records(out: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Every record of the folder, timings left out."""
    return {(r.variant, r.seed, r.column): {k: v for k, v in r.to_dict().items() if k != "seconds"}
            for r in RecordStore(out / "records")}


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(out)): load_file(p) for p in sorted((out / "models").glob("*/*/model.safetensors"))}


def assert_same_run(out: Path, serial: Path) -> None:
    got, want = records(out), records(serial)
    assert sorted(got) == sorted(want) == EXPECTED
    for key in EXPECTED:
        assert got[key] == want[key], key
    got_w, want_w = weights(out), weights(serial)
    assert sorted(got_w) == sorted(want_w) and len(got_w) == 6  # base, silu, other for 2 seeds
    for name, tensors in want_w.items():
        assert got_w[name].keys() == tensors.keys()
        assert all(torch.equal(got_w[name][k], t) for k, t in tensors.items()), name


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The toy study run by the local executor on one thread: its folder and its results' summary."""
    out = tmp_path_factory.mktemp("serial")
    with one_thread():
        result = run_study(TOY_STUDY, out, TOY)
    assert not result.partial
    return out, result.summary


def test_the_task_graph_puts_each_model_before_what_reads_it(tmp_path):
    run = _Run(TOY_STUDY, TOY, toy_plan(TOY, None), tmp_path, torch.device("cpu"), lambda s: None, ())
    def model(v: str, s: int) -> Task:
        return Task("model", v, s, needs=(("model", "base", s),) if v == "silu" else ())

    def evaluate(v: str, s: int) -> Task:
        return Task("evaluate", v, s, dict(JOBS)[v], (("model", v, s),) + ((("model", "base", s),) if v == "other" else ()))

    # the plan's job order, each model listed just before the first evaluation that reads it (so a
    # free worker starts seed 0's evaluations before seed 1's trainings, as the local executor would)
    assert study_tasks(run, TOY.seeds) == [
        model("base", 0), evaluate("base", 0), model("silu", 0), evaluate("silu", 0), model("other", 0), evaluate("other", 0),
        model("base", 1), evaluate("base", 1), model("silu", 1), evaluate("silu", 1), model("other", 1), evaluate("other", 1)]
    RecordStore(tmp_path / "records").put(Record.of_outcomes("base", 1, "pgd", "attack", [1.0]))
    run.reload()
    # a record on disk is not computed again; a model still needed by others is still made
    assert [t for t in study_tasks(run, TOY.seeds) if t.label == "base" and t.kind == "evaluate"] == [
        Task("evaluate", "base", 0, ("clean", "pgd"), (("model", "base", 0),)),
        Task("evaluate", "base", 1, ("clean",), (("model", "base", 1),))]


class LastFirst(_Backend):
    """Runs nothing: of the running tasks, the one submitted last ends first (the order least
    like the list's), failing when its key is in ``fail``."""

    def __init__(self, slots: int, fail: tuple[tuple[str, str, int], ...] = ()) -> None:
        self.slots, self.fail, self.events, self.running = slots, fail, [], 0

    def submit(self, task: Task) -> int:
        self.events.append(("start", task.key))
        self.running += 1
        assert self.running <= self.slots
        return len(self.events)

    def wait(self, handles: list[Any]) -> list[Any]:
        return [max(handles)]

    def result(self, handle: Any, task: Task, running: Any) -> TaskResult:
        self.events.append(("end", task.key))
        self.running -= 1
        if task.key in self.fail:
            raise InputError(f"{task} failed")
        return TaskResult(task.key, ("a line",), 0.0, 0)


def test_the_scheduler_starts_a_task_only_after_the_tasks_it_needs(tmp_path):
    tasks = study_tasks(_Run(TOY_STUDY, TOY, toy_plan(TOY, None), tmp_path, torch.device("cpu"), lambda s: None, ()),
                        TOY.seeds)
    backend, lines = LastFirst(slots=3), []
    _drive(tasks, backend, lines.append, "resume")
    events = backend.events
    assert sorted(key for what, key in events if what == "start") == sorted(t.key for t in tasks)
    for task in tasks:
        started = events.index(("start", task.key))
        assert all(events.index(("end", need)) < started for need in task.needs), task
    assert lines.count("  a line") == len(tasks) == 12  # each task's own lines, once
    assert [line.split(",")[0] for line in lines if line.startswith("done")] == [f"done ({k}/12" for k in range(1, 13)]

    failing = ("model", "other", 0)
    backend, lines = LastFirst(slots=3, fail=(failing,)), []
    with pytest.raises(InputError, match="model other .seed 0. failed"):
        _drive(tasks, backend, lines.append, "rerun to resume")
    failed_at = backend.events.index(("end", failing))
    assert all(what == "end" for what, _ in backend.events[failed_at:])  # nothing new starts
    assert backend.running == 0  # the running tasks finished
    assert lines[-1] == "rerun to resume" and "failed: model other (seed 0): model other (seed 0) failed" in lines


@pytest.mark.slow
def test_processes_match_the_serial_run_and_keep_dependency_order(serial, tmp_path):
    out, lines = tmp_path / "processes", []
    result = run_study(TOY_STUDY, out, TOY, executor="processes", workers=2, threads=1, log=lines.append)
    assert not result.partial and result.summary == serial[1]
    assert_same_run(out, serial[0])

    def at(line: str) -> int:
        assert lines.count(line) == 1, (line, lines)
        return lines.index(line)

    done = {line.split(": ", 1)[1]: i for i, line in enumerate(lines) if line.startswith("done (")}
    for s in (0, 1):
        base = done[f"model base (seed {s})"]
        assert base < at(f"start: model silu (seed {s})")  # a conversion waits for its source
        assert base < at(f"start: evaluate other (seed {s}): clean, transfer-base")  # a transfer for its surrogate
        assert at(f"  base: training resnet-mini for 1 epochs (seed {s})") > base  # trained once, by its task
        # the worker made silu after base's model was on disk (it would have trained base itself otherwise)
        models = out / "models"
        assert (models / "silu" / f"seed{s}" / "variant.json").stat().st_mtime_ns >= \
            (models / "base" / f"seed{s}" / "model.safetensors").stat().st_mtime_ns
    assert sum(line.startswith("start: ") for line in lines) == len(done) == 12


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_clearly_and_any_executor_resumes_it(serial, tmp_path, monkeypatch):
    monkeypatch.setitem(STUDIES._items, TOY_STUDY.name, TOY_STUDY)  # the CLI finds studies by name
    out = tmp_path / "killed"
    args = ["run", TOY_STUDY.name, "--profile", "toy", "--out", str(out), "--device", "cpu",
            "--executor", "processes", "--workers", "2"]
    r = CliRunner().invoke(app, args, env={KILL: "silu/1"}, terminal_width=400)
    assert r.exit_code == 2, r.output
    error = " ".join(r.output[r.output.index("error: "):].split())  # one line, however the console wraps it
    assert f"a worker process died (exit code {KILL_CODE}) while running task evaluate silu (seed 1)" in error
    assert f"What finished is kept in {out}: running the same command again resumes" in error
    got, want = records(out), records(serial[0])
    assert ("silu", 1, "clean") in got and ("silu", 1, "probe") not in got  # killed between the two
    assert all(got[key] == want[key] for key in got)  # whole records only, each the serial one
    assert not list(out.rglob("*.tmp")) and not (out / "report.md").exists()

    with one_thread():  # another executor completes it
        result = run_study(TOY_STUDY, out, TOY)
    assert not result.partial and result.summary == serial[1]
    assert_same_run(out, serial[0])


@pytest.mark.slow
def test_ray_matches_the_serial_run(serial, tmp_path):
    pytest.importorskip("ray", reason="the ray executor's extra (robustlab[ray]) is not installed")
    out = tmp_path / "ray"
    result = run_study(TOY_STUDY, out, TOY, executor="ray", workers=2, threads=1)
    assert not result.partial and result.summary == serial[1]
    assert_same_run(out, serial[0])


def test_a_selection_keeps_the_named_rows_and_columns_in_plan_order():
    plan = toy_plan(TOY, None)
    assert select_jobs(plan) == JOBS
    assert select_jobs(plan, rows=("other", "base")) == (("base", ("clean", "pgd")), ("other", ("clean", "transfer-base")))
    assert select_jobs(plan, columns=("pgd",)) == (("base", ("pgd",)), ("silu", ("pgd",)))  # other has no pgd: dropped
    assert select_jobs(plan, rows=("silu",), columns=("pgd", "clean")) == (("silu", ("clean", "pgd")),)
    with pytest.raises(InputError, match="unknown row 'bsae'; this study's rows with these settings: 'base', 'silu', 'other'"):
        select_jobs(plan, rows=("bsae",))
    with pytest.raises(InputError, match="unknown column 'aa'; this study's columns .*'transfer-base'"):
        select_jobs(plan, columns=("aa",))
    with pytest.raises(InputError, match="no row among 'other' has any of the columns 'pgd': nothing to run"):
        select_jobs(plan, rows=("other",), columns=("pgd",))


def test_the_task_graph_of_a_selection_has_its_cells_and_the_models_they_read(tmp_path):
    run = _Run(TOY_STUDY, TOY, toy_plan(TOY, None), tmp_path, torch.device("cpu"), lambda s: None, ())
    jobs = (("other", ("transfer-base",)),)
    # no silu and no clean column; base's model only as the transfer's surrogate
    assert study_tasks(run, (1,), jobs) == [
        Task("model", "other", 1), Task("model", "base", 1),
        Task("evaluate", "other", 1, ("transfer-base",), (("model", "other", 1), ("model", "base", 1)))]


@pytest.mark.slow
def test_a_selected_run_computes_only_its_cells_and_a_later_run_completes_it(serial, tmp_path):
    out = tmp_path / "selected"
    with one_thread():
        result = run_study(TOY_STUDY, out, TOY, rows=("other",), columns=("transfer-base",))
    assert result.partial
    assert sorted(records(out)) == [("other", 0, "transfer-base"), ("other", 1, "transfer-base")]
    assert sorted(p.parent.parent.name for p in (out / "models").glob("*/*/model.safetensors")) == [
        "base", "base", "other", "other"]  # silu was not needed
    assert "—" in (out / "report.md").read_text()  # the cells not computed
    with one_thread():  # the same folder without a selection: the whole study, as if run at once
        result = run_study(TOY_STUDY, out, TOY)
    assert not result.partial and result.summary == serial[1]
    assert_same_run(out, serial[0])


def test_evaluations_attack_a_channels_last_copy_and_the_trained_model_stays_as_it_was(tmp_path):
    run = _Run(TOY_STUDY, TOY, toy_plan(TOY, None), tmp_path, torch.device("cpu"), lambda s: None, ())
    trained = run.workshop.model("base", 0)
    attacked = run.attacked("base", 0)
    assert run.ctx.model_of("base", 0) is attacked  # a transfer's source is the same copy

    def convs(model: torch.nn.Module) -> list[torch.Tensor]:
        return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    assert convs(trained) and all(w.is_contiguous() for w in convs(trained))
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs(attacked))
    # (with one input channel or a 1x1 kernel both layouts are the same strides)
    assert any(w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1 for w in convs(attacked))
    assert all(not w.is_contiguous() for w in convs(attacked) if w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1)
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, fast = trained(x), attacked(x)
    assert torch.allclose(fast, plain, rtol=0, atol=1e-5 * plain.abs().max().item())  # float rounding only


def test_an_unknown_row_is_refused_before_the_folder_is_made(tmp_path):
    out = tmp_path / "none"
    r = CliRunner().invoke(app, ["run", "sd-study", "--out", str(out), "--row", "SD", "--row", "Basline"],
                           terminal_width=400)
    assert r.exit_code == 2, r.output
    error = " ".join(r.output[r.output.index("error: "):].split())
    assert "unknown row 'Basline'; this study's rows with these settings: 'Baseline'," in error
    assert not out.exists()


def test_bad_executor_settings_are_refused_before_anything_runs(tmp_path, monkeypatch):
    out = tmp_path / "none"
    cases = [({"executor": "threads"}, "unknown executor 'threads'; known executors: local, processes, ray"),
             ({"workers": 2}, "workers=2 applies to the parallel executors: pass executor='processes' or "
                              "executor='ray' with it"),
             ({"executor": "processes", "workers": 0}, "workers must be an int >= 1, got 0"),
             ({"executor": "processes", "address": "auto"}, "address='auto' names a Ray cluster: pass executor='ray'")]
    for kw, message in cases:
        with pytest.raises(InputError, match=message):
            run_study(TOY_STUDY, out, TOY, **kw)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(InputError, match=r'needs Ray, which is not installed: pip install "robustlab\[ray\]"'):
        run_study(TOY_STUDY, out, TOY, executor="ray")
    assert not out.exists()
    local = replace(TOY_STUDY, name="toy-executor-local")  # defined nowhere a worker could find it
    with pytest.raises(InputError, match="register it .register_study. or define it at the top level"):
        run_study(local, out, TOY, executor="processes", workers=2)
    assert not (out / "records").exists()
