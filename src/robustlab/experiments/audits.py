"""The ``audit`` column kind: a study states whether its defense's evaluation can be trusted.

An ``audit`` column audits another column of the study (:func:`robustlab.audit.audit`): the
evaluation that column runs is the evaluation under audit (its result comes from the run's
saved evaluation state when the column already ran with the same seed), the passive checklist
and the binarization test run on the same attacked images, and the record's per-image outcome
is the audit's worst case over every attack it ran (so it counts toward the row's worst case
and can only lower it on a deterministic model). The audit's files go to
``audits/<variant>/seed<k>/<column>/`` (``audit.md``, ``audit.json``, plots) and its verdict,
flags and binarization numbers into the record's settings, from which :func:`audit_section`
writes the report's "Audits" section.

Settings: ``column`` (the audited column's name), ``profile`` (``quick`` or ``full``, see
:data:`robustlab.audit.AUDIT_PROFILES`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.bpda import BPDAMode
from ..core.errors import InputError
from ..core.markdown import format_pct, markdown_table
from ..core.types import ThreatModel
from ..evaluate import Battery, EvalResult, Ledger, run_battery
from ..evaluate.samples import Samples
from .columns import COLUMN_KINDS, Column, ColumnKind, EvalContext, battery_of
from .records import Record, slugify

if TYPE_CHECKING:
    from ..audit import AuditResult
    from .study import StudyConfig

__all__ = ["AUDIT_INTRO", "audit_columns", "split_audits", "audit_evaluation", "audit_row", "audit_rows", "audit_section", "audit_summary"]


def audit_evaluation(model: nn.Module, data: Any, result: EvalResult, evaluation: Battery | str, *,
                     threat: ThreatModel, profile: str, seed: int, folder: Path, name: str,
                     device: torch.device | str = "cpu", bpda: BPDAMode | None = None) -> AuditResult:
    """Audit ``result``, the evaluation ``run_battery(model, data, evaluation, n=result.n,
    seed=seed)`` gave, on the same images, and write the audit's files into ``folder``."""
    from ..audit import audit, audit_settings, write_audit

    x, y = Samples(data, result.n, seed).batch(0, result.n)
    res = audit(model, x.to(device), y.to(device), threat=threat, evaluation=evaluation,
                settings=audit_settings(profile), seed=seed, bpda=bpda, evaluation_result=result, name=name)
    info = getattr(data, "info", None)  # a dataset knows its classes; the chance line needs them
    write_audit(res, folder, num_classes=getattr(info, "num_classes", None))
    return res


def audit_summary(res: AuditResult | Mapping[str, Any], audited: str, report: str) -> dict[str, Any]:
    """What a report shows of an audit (stored in an audit record's settings), from the result
    or from its ``audit.json``."""
    d = res if isinstance(res, Mapping) else res.to_dict()
    b = d.get("binarization")
    return {"summary": d["summary"], "audited_header": audited, "reported": d["reported"], "worst": d["worst"],
            "flags": list(d["flags"]), "report": report,
            "binarization": None if b is None else {k: b.get(k) for k in ("verdict", "test_asr", "interval", "random_asr",
                                                                         "testable", "not_testable", "threshold",
                                                                         "boundary_asr")}}


def _audit(ctx: EvalContext, model: nn.Module, column: Column, variant: str, seed: int) -> Record:
    target = ctx.columns[str(column.settings["column"])]
    battery = battery_of(ctx, model, target)
    # the audited column's own evaluation: read back from the run's state when it already ran
    evaluated = run_battery(model, ctx.eval_set, battery, threat=ctx.threat, n=len(ctx.eval_set),
                            batch_size=ctx.eval_batch_size, seed=seed, device=ctx.device,
                            state_dir=ctx.states(target), name=f"{variant} s{seed} {target.name}")
    folder = ctx.out / "audits" / slugify(variant) / f"seed{seed}" / slugify(column.name)
    res = audit_evaluation(model, ctx.eval_set, evaluated, battery, threat=ctx.threat,
                           profile=str(column.settings.get("profile", "quick")), seed=seed, folder=folder,
                           name=f"{variant} s{seed}", device=ctx.device, bpda=target.settings.get("bpda"))
    Ledger(ctx.out / "ledger.sqlite").add(res.worst_result(), extra={**ctx.ledger_extra, "run": f"{variant} s{seed}",
                                                                      "column": column.name, "audit": res.summary})
    probs = evaluated.probabilities()
    select = tuple(res.worst_select) if evaluated.config.get("stochastic") else ()
    return Record.of_outcomes(
        variant, seed, column.name, "attack", res.worst_per_sample, clean_per_image=tuple(probs["clean"][0].tolist()),
        per_image_select=select, indices_sha256=evaluated.indices_sha256, randomness=evaluated.randomness,
        settings={"audit": audit_summary(res, target.header, str(folder.relative_to(ctx.out) / "audit.md"))},
        warnings=tuple(w.to_dict() for w in evaluated.warnings))


COLUMN_KINDS.register("audit", ColumnKind(_audit, "attack"),
                      about="audit of another column's evaluation: checklist, binarization test, worst case")


def audit_columns(cfg: StudyConfig, offered: Mapping[str, Column]) -> tuple[Column, ...]:
    """One ``audit`` column (``audit-<name>``) per column ``offered`` for audit (by role:
    ``paper``, the paper's protocol; ``adaptive``, the library's adaptive evaluation) whose role
    ``cfg.audited`` names (all when ``None``), at the audit profile ``cfg.audit``; none without one."""
    if cfg.audit is None:
        return ()
    unknown = set(cfg.audited or ()) - set(offered)
    if unknown:
        raise InputError(f"audited {sorted(unknown)}: this study offers {', '.join(offered) or 'nothing'} for audit; "
                         "set audited to those roles (or None for all)")
    return tuple(Column(f"audit-{c.name}", "audit", f"Audit: {c.header}", {"column": c.name, "profile": cfg.audit})
                 for role, c in offered.items() if cfg.audited is None or role in cfg.audited)


def split_audits(cols: Sequence[Column]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of ``cols``: the evaluations, then the audits (a recipe's jobs run the audits last,
    on the rows it audits)."""
    return tuple(c.name for c in cols if c.kind != "audit"), tuple(c.name for c in cols if c.kind == "audit")


def audit_rows(records: Sequence[Record], folder: str = "") -> list[dict[str, str]]:
    """One table row per audit record: what was audited, the verdict and its evidence; report links
    are relative to the run folder, or prefixed by ``folder``."""
    return [audit_row(r.variant + (f" (seed {r.seed})" if r.seed else ""), r.settings["audit"], folder)
            for r in sorted(records, key=lambda r: (r.variant, r.seed, r.column))
            if r.applies and isinstance(r.settings, Mapping) and isinstance(r.settings.get("audit"), Mapping)]


def audit_row(model: str, a: Mapping[str, Any], folder: str = "") -> dict[str, str]:
    """A table row of an audit's summary (:func:`audit_summary`)."""
    b = a.get("binarization") or {}
    interval = b.get("interval")
    asr = "-" if b.get("test_asr") is None else format_pct(b["test_asr"]) + (
        "" if not interval else f" [{format_pct(interval[0], digits=0)}, {format_pct(interval[1], digits=0)}]")
    return {
        "model": model,
        "evaluation audited": str(a.get("audited_header", "?")),
        "verdict": str(a.get("summary", "?")),
        "reported (%)": format_pct(a.get("reported")),
        "audit worst case (%)": format_pct(a.get("worst")),
        "binarization test ASR (%)": asr,
        "ASR needed (%)": "-" if b.get("boundary_asr") is None else format_pct(b["threshold"] * b["boundary_asr"]),
        "random ASR (%)": format_pct(b.get("random_asr")),
        "flags": ", ".join(f"`{f}`" for f in a.get("flags", [])) or "none",
        "report": f"[audit.md]({folder}{a.get('report', '')})",
    }


def audit_section(records: Sequence[Record]) -> str:
    """The report's "Audits" section ("" when the study ran no audit column)."""
    rows = audit_rows(records)
    if not rows:
        return ""
    return "\n## Audits\n\n" + AUDIT_INTRO + "\n\n" + markdown_table(rows)


AUDIT_INTRO = (
    "Can the evaluation be trusted? Each audit (`robustlab.audit`) runs the passive checklist (Carlini et al. 2019; "
    "Athalye et al. 2018) and the binarization test (Zimmermann et al. 2022: the audited attack must find an "
    "adversarial example that provably exists; the random ASR is the control, the share of images a random point "
    "already breaks) on the attacked images, and reports the per-image worst case over every attack it ran. "
    "TRUSTWORTHY: no flag and the binarization test passes; SUSPECT: k checks flagged; BROKEN EVALUATION: the "
    "binarization test failed.")
