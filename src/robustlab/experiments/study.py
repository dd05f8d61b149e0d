"""The study machinery: a study is a recipe (variants, columns, tables, claims) and this runs it.

A recipe registers a :class:`Study` in :data:`STUDIES`: its typed config (a frozen dataclass
deriving from :class:`StudyConfig`, every setting explicit), named :class:`Profile` s
(``quick``, ``cpu``, ``full``) with their expected time, and a ``plan`` function that turns a
config into a :class:`Plan`. :func:`run_study` then

1. makes each variant per seed (:class:`~.variants.Workshop`, cached and resumable),
2. evaluates each job's columns (:mod:`.columns`), one typed record per (variant, seed, column)
   (:mod:`.records`), skipping every record already on disk, so a killed run resumes,
3. writes ``report.md``, ``results.json`` and the plot from the records alone (:mod:`.report`,
   :mod:`.stats`, :mod:`.claims`), which is all ``report_only=True`` does.

The same command-line options work for every study (``robustlab run NAME --profile --seeds
--eval-n --eps --model --out --report-only``); ``robustlab run --list`` names them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from ..attacks import logits_of
from ..core import Registry
from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError
from ..core.randomness import detect_randomness, is_stochastic
from ..core.types import ThreatModel
from ..data import as_tensors, get_info
from ..evaluate.fast import prepare_fast
from ..train import Callback
from .audits import audit_section
from .claims import WORST, Claim, ClaimResult, check_claims, render_verdict
from .columns import COLUMN_KINDS, Column, EvalContext, evaluate_column
from .executor import check_executor, fan_out
from .figures import FigureContext
from .html import first_heading, write_html
from .prose import verdict_opening
from .records import Record, RecordStore
from .report import (
    Plot,
    Table,
    chance_warnings,
    cost_section,
    ledger_section,
    render_table,
    scatter_plot,
    warnings_section,
)
from .stats import worst_case
from .variants import Convert, Load, Train, Variant, Workshop

logger = logging.getLogger(__name__)

__all__ = ["STUDIES", "DemoPart", "FigureContext", "Plan", "Profile", "Study", "StudyConfig", "StudyResult",
           "TrainingStudyConfig", "register_study", "run_study", "select_jobs", "study_config"]


@dataclass(frozen=True)
class StudyConfig:
    """What every study's numbers depend on; a study's config derives from it and adds its own.

    Attributes:
        profile: the profile this config came from.
        eval_n: test images attacked (the first of a stratified draw).
        clean_n: test images for clean accuracy and corruptions (``None``: the whole test split).
        audit: the audit profile (``demo``, ``quick`` or ``full``,
            :data:`robustlab.audit.AUDIT_PROFILES`) of the study's ``audit`` columns, which audit
            its defense's evaluations; ``None``: no audit.
        audited: the roles of the columns whose evaluation is audited, ``paper`` (the paper's
            protocol) and ``adaptive`` (the library's adaptive evaluation); ``None``: every one the
            study offers.
    """

    profile: str = "quick"
    dataset: str = "fashion-mnist"
    model: str = "resnet-mini"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = 0.1
    seeds: tuple[int, ...] = (0,)
    eval_n: int = 100
    clean_n: int | None = None
    eval_batch_size: int = 200
    audit: str | None = None
    audited: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved as the run's resolved config)."""
        return json.loads(json.dumps(asdict(self), default=repr))


@dataclass(frozen=True)
class TrainingStudyConfig(StudyConfig):
    """A study that trains its models: ``epochs`` at peak learning rate ``lr`` in batches of
    ``batch_size`` on ``train_limit`` training images (a stratified subset; ``None``: all)."""

    clean_n: int | None = 1000
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    train_limit: int | None = 10_000


@dataclass(frozen=True)
class Profile:
    """A named setting of a study, and what it costs.

    Attributes:
        time: the expected time, in words (``"3 min on 2 CPU cores"``).
        about: what the profile covers.
    """

    config: StudyConfig
    time: str
    about: str


@dataclass(frozen=True)
class Plan:
    """Everything a study does for one config.

    Attributes:
        jobs: ``(variant label, column names)`` in run order; every seed runs them all before the
            next seed starts, so a stopped run has whole tables on fewer seeds.
        paper: the paper's setting its figures come from (``CIFAR-10 (ResNet-18)``); the verdict
            opens by setting it against the run's dataset, model and threat model
            (:func:`~.prose.verdict_opening`, which also states the attacks run and how the claims
            are judged).
        verdict_note: the study's own sentences after that opening.
        notes: sanity-check codes -> the study's note on them (printed beside the finding).
        cost: add the cost table (seconds per epoch, FLOPs, activation memory per variant).
        figures: ``(FigureContext) -> markdown``: the study's analyses (PNG figures and their
            numbers), written into the report before the verdict once the run is complete.
        resources: name -> ``(run folder) -> value`` for the :class:`~.variants.Ref` options of
            the variants (made once per process, on first use; cache on disk in the folder).
    """

    variants: tuple[Variant, ...]
    columns: tuple[Column, ...]
    jobs: tuple[tuple[str, tuple[str, ...]], ...]
    tables: tuple[Table, ...]
    claims: tuple[Claim, ...] = ()
    plot: Plot | None = None
    paper: str = ""
    verdict_note: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)
    cost: bool = False
    resources: Mapping[str, Callable[[Path], Any]] = field(default_factory=dict)
    figures: Callable[[FigureContext], str] | None = None
    answer: Callable[[FigureContext], str] | None = None
    """The study's answer in one table (markdown), written right after the intro, partial runs
    included, and returned as :attr:`StudyResult.answer` (the demo opens with the arena's)."""
    passes: Mapping[str, float] = field(default_factory=dict)
    """Per variant, its training's forward-backward passes per training image (the cost table's
    budget column; a variant not named has none stated)."""


@dataclass(frozen=True)
class DemoPart:
    """How ``robustlab demo`` (:mod:`.demo`) runs a study, declared by its recipe.

    Attributes:
        order: the study's place in the demo (lower runs first).
        about: ``(config) -> str``: the demo report's sentence on the study, before the link to
            its own report.
        inherits: the demo's settings the study takes over (``dataset``, ``model``).
        baseline: the demo model the study gets as its baseline checkpoint (``standard``: the
            cross-entropy model, ``pgd-at``: the adversarially trained one), or ``None``: the
            study trains its own.
        heading: the demo report's heading (default: the study's title).
        profile: the profile the demo runs unless told otherwise.
        reuse: ``(demo folder) -> {variant label: checkpoint}``: models the demo already made
            (the studies' quick models) that the study loads instead of training; the demo passes
            the ones that exist as the config's ``reuse`` setting.
        audits: the study's audit columns run in the demo (at the demo's audit profile); the
            demo audits each model once, in the study that sets this (the arena), and runs the
            others without their audits.
    """

    order: int
    about: Callable[[Any], str]
    inherits: tuple[str, ...] = ("dataset", "model")
    baseline: Literal["standard", "pgd-at"] | None = None
    heading: str = ""
    profile: str = "quick"
    reuse: Callable[[Path], Mapping[str, str]] | None = None
    audits: bool = False


@dataclass(frozen=True)
class Study:
    """A registered study: everything about it is declared here, in its recipe.

    Attributes:
        plan: ``(config, baseline checkpoint or None) -> Plan``.
        intro: ``(config, facts) -> str``, the report's opening paragraph (facts: image counts,
            device, compute time).
        demo: how the demo runs it (``None``: the demo leaves it out).
    """

    name: str
    title: str
    paper: str
    profiles: Mapping[str, Profile]
    plan: Callable[[Any, str | None], Plan]
    intro: Callable[[Any, Mapping[str, Any]], str]
    demo: DemoPart | None = None


STUDIES: Registry[Study] = Registry("study", plural="studies")


def register_study(study: Study) -> Study:
    """Register ``study`` under its name in :data:`STUDIES` (a recipe's last line); a recipe
    module named ``*_study.py`` in this package is imported, and so registered, with it."""
    STUDIES.register(study.name, study)
    return study


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` returns (``results.json`` holds the same)."""

    study: str
    config: dict[str, Any]
    report: str
    summary: str
    claims: list[ClaimResult]
    partial: bool
    seconds: float
    facts: dict[str, Any]
    answer: str = ""


def study_config(study: Study | str, profile: str, **overrides: Any) -> StudyConfig:
    """A study's ``profile`` (the study or its name in :data:`STUDIES`) with some fields replaced
    (``None`` values are ignored)."""
    study = STUDIES.get(study) if isinstance(study, str) else study
    name = study.name
    if profile not in study.profiles:
        raise InputError(f"unknown {name} profile {profile!r}; known profiles: {', '.join(study.profiles)}")
    cfg = study.profiles[profile].config
    known = {f.name for f in fields(cfg)}
    bad = sorted(k for k, v in overrides.items() if v is not None and k not in known)
    if bad:
        raise InputError(f"{name} has no setting {', '.join(bad)}; its settings: {', '.join(sorted(known))}")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


class _Run:
    """One run folder of one study: its records, models and the worst case per (variant, seed)."""

    def __init__(self, study: Study, cfg: StudyConfig, plan: Plan, out: Path, device: torch.device,
                 log: Callable[[str], None], callbacks: Sequence[Callback], state_dir: Path | None = None) -> None:
        self.cfg, self.plan, self.out, self.log = cfg, plan, out, log
        self.store = RecordStore(out / "records")
        self.columns = {c.name: c for c in plan.columns}
        if len(self.columns) != len(plan.columns):
            raise InputError(f"{study.name}: two columns share a name")
        resources = {name: functools.partial(make, out) for name, make in plan.resources.items()}
        self.workshop = Workshop(out, plan.variants, cfg.dataset, device, callbacks, log, resources)
        self.ctx = EvalContext(cfg.dataset, ThreatModel(cfg.norm, cfg.eps), cfg.eval_n, cfg.clean_n, cfg.eval_batch_size,
                               device, out, self.columns, self.attacked,
                               {"recipe": study.name, "profile": cfg.profile}, state_dir)
        self._attacked: dict[tuple[str, int], torch.nn.Module] = {}
        # per variant, its columns in job order (a set's order would follow the string hash, and
        # the worst case's tie-break with it, so a report would change from one process to the next)
        self.planned: dict[str, dict[str, None]] = {}
        for label, cols in plan.jobs:
            self.workshop.variant(label)
            for c in cols:
                if c not in self.columns:
                    raise InputError(f"{study.name}: job {label!r} names unknown column {c!r}")
            self.planned.setdefault(label, {}).update(dict.fromkeys(cols))

    def reload(self) -> None:
        """Forget the records read and the models held in memory, so the next reads come from the
        folder (which other processes write too: the parallel executors' workers)."""
        self.store = RecordStore(self.out / "records")
        self.workshop.forget()
        self._attacked.clear()

    def attacked(self, label: str, seed: int) -> torch.nn.Module:
        """The model of ``(label, seed)`` as every evaluation (and a transfer's source) runs it:
        a copy in ``torch.channels_last`` (:func:`~robustlab.evaluate.fast.prepare_fast`: oneDNN's
        convolutions make PGD 0.73-0.93x as long on one CPU thread, ``benchmarks/eval_layout.py``; the
        logits differ at float rounding, checked on 16 evaluation images; a model the layout
        breaks or changes beyond :data:`~robustlab.evaluate.fast.FAST_RTOL` is attacked as it
        is, with a warning). The workshop's model stays as trained: conversions start from it
        and its cost is measured on it."""
        variant = self.workshop.variant(label)
        key = (label, seed if variant.per_seed else 0)
        if key not in self._attacked:
            model = self.workshop.model(label, seed)
            probe = as_tensors(self.ctx.eval_set, 16)[0].to(self.ctx.device)
            self._attacked[key] = prepare_fast(model, ("channels_last",), probe).model
        return self._attacked[key]

    def run_job(self, label: str, seed: int, cols: Sequence[str]) -> None:
        todo = [c for c in cols if not self.store.has(label, seed, c)]
        if not todo:
            return
        model = self.attacked(label, seed)
        stochastic = is_stochastic(model) or self._random_forward(model)

        def ensure(name: str) -> Record | None:
            rec = self.store.get(label, seed, name)
            if rec is None and name in self.columns:
                self.log(f"  {label} (seed {seed}): {name}")
                rec = evaluate_column(self.ctx, model, self.columns[name], label, seed, stochastic, ensure)
                self.store.put(rec)
            return rec

        for c in todo:
            ensure(c)

    def _random_forward(self, model: torch.nn.Module) -> bool:
        """Randomness outside the :class:`~robustlab.core.randomness.Stochastic` protocol (two
        forwards of the same images differ), so EOT columns are never skipped for it."""
        x = as_tensors(self.ctx.eval_set, 8)[0]
        with torch.no_grad():
            return detect_randomness(lambda b: logits_of(model(b)), x.to(self.ctx.device))

    def get(self, variant: str, seed: int, column: str) -> Record | None:
        return self.store.get(variant, seed, column)

    def worst_of(self, variant: str, seed: int) -> list[float] | None:
        """Per image, robust under every attack column of (variant, seed); ``None`` until every
        planned attack column of the variant has its record."""
        attacks = [c for c in self.planned.get(variant, ()) if self.columns[c].attack]
        recs = [self.store.get(variant, seed, c) for c in attacks]
        if not attacks or any(r is None for r in recs):
            return None
        extra = [r for r in self.store.of(variant, seed) if r.kind == "attack" and r.column not in attacks]
        applied = [r for r in [*recs, *extra] if r is not None and r.applies]
        masks = [list(r.per_image) for r in applied]
        selects = [list(r.per_image_select or r.per_image) for r in applied]
        return worst_case(masks, selects) if masks else None

    def missing(self) -> bool:
        return any(not self.store.has(v, s, c) for s in self.cfg.seeds for v, cols in self.plan.jobs for c in cols)


def _compute_seconds(out: Path, records: Sequence[Record]) -> float:
    """Training and evaluation time of everything the run folder holds (resumed runs included)."""
    total = sum(r.seconds for r in records)
    for f in (out / "models").glob("*/*/metrics.jsonl"):
        total += sum(json.loads(line).get("seconds", 0.0) for line in f.read_text().splitlines() if line.strip())
    return total


def _eval_seconds(records: Sequence[Record]) -> dict[str, float]:
    """Per variant, its evaluations' seconds (every column), mean over the seeds evaluated."""
    total: dict[str, dict[int, float]] = {}
    for r in records:
        per_seed = total.setdefault(r.variant, {})
        per_seed[r.seed] = per_seed.get(r.seed, 0.0) + r.seconds
    return {v: sum(s.values()) / len(s) for v, s in total.items()}


def _trained_at(variants: Sequence[Variant]) -> dict[str, Path]:
    """Per loaded variant, the folder of its checkpoint (its training's ``metrics.jsonl``, when
    the checkpoint was trained by robustlab)."""
    return {v.label: Path(v.make.path).parent for v in variants if isinstance(v.make, Load)}


def _same_config(saved: Any, cfg: StudyConfig) -> bool:
    """Whether a run folder's saved config is ``cfg``'s study; a setting added to the library after
    the run was written counts as equal when ``cfg`` holds that setting's default. The seeds may
    differ: records, models and evaluation state are kept per seed, so a run with more seeds
    extends the folder (``--seeds 1`` today, ``--seeds 3`` tomorrow computes seeds 1 and 2 only)."""
    now = {k: v for k, v in cfg.to_dict().items() if k != "seeds"}
    if not isinstance(saved, dict):
        return False
    saved = {k: v for k, v in saved.items() if k != "seeds"}
    defaults = {f.name: f.default for f in fields(cfg)}
    added = {k for k in now if k not in saved}
    return all(now[k] == defaults.get(k, object()) for k in added) and {k: now[k] for k in saved if k in now} == saved


Jobs = tuple[tuple[str, tuple[str, ...]], ...]


def select_jobs(plan: Plan, rows: Sequence[str] = (), columns: Sequence[str] = ()) -> Jobs:
    """The plan's jobs restricted to the variants ``rows`` and the columns ``columns`` (either
    empty: all of them), in the plan's order; a job left with no column is dropped.

    Raises:
        InputError: for a row or column the plan does not have (the error lists the plan's), or a
            selection that leaves nothing to run.
    """
    labels = list(dict.fromkeys(label for label, _ in plan.jobs))
    names = list(dict.fromkeys(c for _, cols in plan.jobs for c in cols))
    for wanted, known, what in ((rows, labels, "row"), (columns, names, "column")):
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise InputError(f"unknown {what} {', '.join(map(repr, unknown))}; this study's {what}s with these "
                             f"settings: {', '.join(map(repr, known))}")
    jobs = tuple((label, tuple(c for c in cols if not columns or c in columns))
                 for label, cols in plan.jobs if not rows or label in rows)
    jobs = tuple((label, cols) for label, cols in jobs if cols)
    if not jobs:
        raise InputError(f"no row among {', '.join(map(repr, rows))} has any of the columns "
                         f"{', '.join(map(repr, columns))}: nothing to run")
    return jobs


def run_study(
    study: Study | str,
    out_dir: str | os.PathLike[str],
    config: StudyConfig | str = "quick",
    *,
    device: str | torch.device = "cpu",
    baseline: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
    report_only: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
    executor: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    rows: Sequence[str] = (),
    columns: Sequence[str] = (),
) -> StudyResult:
    """Run a study (resuming from what ``out_dir`` holds) and write its report.

    The trainings and evaluations run one after another in this process (``executor="local"``),
    or fan out as tasks in dependency order (:mod:`.executor`) to a pool of local processes
    (``"processes"``) or a Ray cluster (``"ray"``, whose nodes must share the run folder's
    filesystem). Every executor writes the same files, so any of them resumes a run any other
    began, and the records are the same bit for bit at the same number of torch threads.

    Args:
        study: a :class:`Study` or a name in :data:`STUDIES`.
        out_dir: the run folder.
        config: a profile name or a config of the study's type.
        device: where models train and are attacked.
        baseline: a trained checkpoint for the study's baseline variant instead of training one.
        log: called with one line per step (the CLI prints them).
        callbacks: training callbacks (progress bars).
        report_only: compute nothing; write the report from the records ``out_dir`` holds (cells
            not computed yet show ``—``); ``config.json`` is left as the run wrote it.
        state_dir: the evaluations' state folder (default ``out_dir/eval-state``); runs sharing
            one reuse each other's identical evaluations (same weights, images, battery, seed).
        executor: ``local``, ``processes`` or ``ray`` (:mod:`.executor`).
        workers: tasks run at a time by ``processes`` or ``ray`` (default: this machine's cores
            over ``threads``; on a Ray cluster at ``address``, its CPUs over ``threads``).
        threads: torch threads per worker (default: the cores over ``workers``, at least 1;
            1 on a Ray cluster at ``address``).
        address: the Ray cluster to join (``"auto"``: the one this machine belongs to); default:
            a local one of ``workers * threads`` CPUs.
        rows, columns: compute only these variants' cells (by label) and only these columns
            (by name), and the models they read (:func:`select_jobs`; empty: all). The folder
            and its configuration are the whole study's, so a later run without them completes
            it; the report shows the cells not computed as ``—``.

    Raises:
        InputError: for an unknown study, profile, executor, row or column, a folder holding
            another configuration, or ``executor="ray"`` without Ray installed.
        RobustlabError: when a worker process dies; everything finished is kept, and running
            the same call again resumes.
    """
    check_executor(executor, workers, threads, address)
    study = STUDIES.get(study) if isinstance(study, str) else study
    cfg = study_config(study, config) if isinstance(config, str) else config
    plan = study.plan(cfg, None if baseline is None else str(baseline))
    jobs = select_jobs(plan, rows, columns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    config_dict = cfg.to_dict()
    resolved = {"study": study.name, "config": config_dict, "baseline": None if baseline is None else str(baseline)}
    say = log or (lambda s: logger.info("%s", s))
    earlier = json.loads(saved.read_text()).get("config") if saved.exists() else None
    if saved.exists() and not _same_config(earlier, cfg):
        raise InputError(f"{out} holds a study run with another configuration; pass a new --out or delete the "
                         "folder to start over")
    if not report_only:  # config.json names every seed the folder was run with, this run's and earlier ones
        held = earlier.get("seeds") if isinstance(earlier, dict) else None
        seeds = sorted({*held, *cfg.seeds}) if isinstance(held, list) else list(cfg.seeds)
        write_text_atomic(saved, json.dumps({**resolved, "config": {**config_dict, "seeds": seeds}}, indent=1))
    t_start = time.perf_counter()
    run = _Run(study, cfg, plan, out, torch.device(device), say, callbacks, None if state_dir is None else Path(state_dir))
    if not report_only and executor == "local":
        for seed in cfg.seeds:
            for label, cols in jobs:
                run.run_job(label, seed, cols)
    elif not report_only:
        fan_out(study, cfg, run, jobs, executor=executor, workers=workers, threads=threads, address=address,
                device=str(device), baseline=None if baseline is None else str(baseline),
                state_dir=None if state_dir is None else str(state_dir), log=say)
        run.reload()  # the workers' records and models, for the report
    return _write_report(study, cfg, plan, run, out, resolved, time.perf_counter() - t_start, str(device))


def _write_report(study: Study, cfg: StudyConfig, plan: Plan, run: _Run, out: Path, resolved: dict[str, Any],
                  seconds: float, device: str) -> StudyResult:
    records = list(run.store)
    specs = [v.make.train if isinstance(v.make, Train) else v.make.finetune if isinstance(v.make, Convert) else None
             for v in plan.variants]
    limits = {spec.limit for spec in specs if spec is not None}
    facts = {"seconds": round(seconds, 1), "compute_seconds": round(_compute_seconds(out, records), 1),
             "partial": run.missing(), "device": device, "torch": torch.__version__,
             "python": platform.python_version(), "threads": torch.get_num_threads(),
             "eval_images": len(run.ctx.eval_set), "clean_images": len(run.ctx.clean_set),
             "train_images": {str(k): len(run.workshop.train_set(k)) for k in sorted(limits, key=str)}}
    seeds = list(cfg.seeds)
    errors = [c.name for c in plan.columns if c.kind == "corruptions"]
    tables = {t.key: render_table(t, seeds, run.get, run.worst_of, errors) for t in plan.tables}
    in_plan = {c for _, cols in plan.jobs for c in cols} | {WORST}
    claims = [c for c in plan.claims if c.a.column in in_plan and c.b.column in in_plan]
    kinds = {c.name: COLUMN_KINDS.get(c.kind).record_kind for c in plan.columns}
    checked = check_claims(claims, seeds, run.get, run.worst_of, lambda name: name in in_plan, kinds.get)
    opening = verdict_opening(cfg, plan.columns, in_plan, claims, plan.paper, plan.verdict_note)
    verdict = opening + "\n" + render_verdict(checked)
    chance = chance_warnings(records, get_info(cfg.dataset).num_classes)
    if chance:
        verdict = ("**A model did not learn**: " + ", ".join(f"{v}" + (f" (seed {s})" if len(seeds) > 1 else "")
                                                            for v, s in chance)
                   + " scored no better than chance on clean images (see Sanity checks); the claims that "
                   "involve it are void, whatever their verdict below.\n\n" + verdict)
    fc = FigureContext(out, run.workshop.model, run.ctx, run.get, run.worst_of, tuple(seeds))
    answer = plan.answer(fc) if plan.answer is not None else ""
    parts = [f"# {study.title} ({cfg.profile} profile)\n\n", study.intro(cfg, facts),
             " Numbers are percentages, mean ± std over seeds; `(k/K)`: k of the K seeds done. Device "
             f"{facts['device']} ({facts['threads']} threads), torch {facts['torch']}; training and evaluation of "
             f"everything below took {facts['compute_seconds']:.0f} s (summed over resumed runs).\n\n"]
    if answer:
        parts.append(answer + "\n")
    if facts["partial"]:
        parts.append("**Partial report**, written from an incomplete run: `—` marks cells not computed yet, a "
                     "cell's `(k/K)` counts the seeds done of those planned, and a worst case appears once "
                     "every attack of its row is done.\n\n")
    for t in plan.tables:
        parts += [f"## {t.title}\n\n", t.intro + "\n\n" if t.intro else "", tables[t.key]]
        if plan.plot is not None and plan.plot.table == t.key:
            scatter_plot(out / plan.plot.file, plan.plot, t.rows, seeds, run.get, run.worst_of,
                         f"{plan.plot.x.header} (%)", f"accuracy (%), {cfg.norm} eps = {cfg.eps:.4g}")
            parts.append(f"\n![{plan.plot.title}]({plan.plot.file})\n")
        parts.append("\n")
    if plan.cost:
        parts.append(cost_section(out / "models", [(v.label, v.slug) for v in plan.variants], plan.passes,
                                  _eval_seconds(records), _trained_at(plan.variants)))
    if plan.figures is not None and not facts["partial"]:
        parts.append(plan.figures(fc))
    parts += [audit_section(records), warnings_section(records, plan.notes, len(seeds) > 1, chance),
              "\n## Verdict\n\n", verdict,
              ledger_section(records, "ledger.sqlite")]
    report = "".join(parts)
    write_text_atomic(out / "report.md", report)
    write_html(out / "report.html", report, title=first_heading(report))
    summary = (tables[plan.tables[0].key] if plan.tables else "") + "\n" + verdict
    result = StudyResult(study.name, resolved["config"], report, summary, checked, bool(facts["partial"]),
                         round(seconds, 1), facts, answer)
    claims_json = [{"claim": r.claim.claim, "verdict": r.verdict, "seeds": r.seeds,
                    **({} if r.comparison is None else {k: getattr(r.comparison, k) for k in
                                                        ("a", "b", "diff", "se", "low", "high", "n")})}
                   for r in checked]
    write_text_atomic(out / "results.json", json.dumps({**resolved, "facts": facts, "claims": claims_json}, indent=1))
    return result
