"""The arena's pieces beside its recipe (:mod:`.arena_study`): training budgets matched in
forward-backward passes, the one-table answer, the comparisons' interval widths, and the
clean-vs-worst-case scatter and eps curves.

A budget is counted in forward-backward passes through the network per training image
(:data:`PASSES_PER_EPOCH`): one per epoch of plain training, one more per attack step of an
adversarial objective, two for the double backpropagation of an input-gradient penalty. Epochs
are what the budget buys: ``round(budget / passes per epoch)``, at least one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.markdown import markdown_table
from ..core.plots import write_figure
from .figures import FigureContext
from .records import slugify
from .report import Cell, training_seconds
from .stats import Paired, paired, seed_average

__all__ = ["PASSES_PER_EPOCH", "answer_table", "epochs_for", "passes_per_epoch", "plots", "versus"]


def _steps_plus(extra: int) -> Callable[[Mapping[str, Any]], int]:
    return lambda options: int(options.get("steps", 10)) + extra


PASSES_PER_EPOCH: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "standard": lambda o: 1, "decoder-regression": lambda o: 1, "frozen-decoder": lambda o: 1,
    "pgd-at": _steps_plus(1),  # k attack steps, then the update on the adversarial batch
    "gsat": _steps_plus(1),  # the same on one frozen path, then the update on another
    "trades": _steps_plus(2),  # k KL steps, then the clean and the adversarial branch
    "fast-at": lambda o: 2,  # one FGSM step from a random start, then the update
    "gradnorm": lambda o: 2, "edge-align": lambda o: 2,  # forward, backward, backward of the input gradient
}
"""Per objective, forward-backward passes per training image per epoch (from its options)."""


def passes_per_epoch(objective: str, options: Mapping[str, Any]) -> int:
    """Forward-backward passes per training image in one epoch of ``objective``."""
    if objective not in PASSES_PER_EPOCH:
        raise InputError(f"the arena has no pass count for objective {objective!r}; known: {', '.join(PASSES_PER_EPOCH)}")
    return PASSES_PER_EPOCH[objective](options)


def epochs_for(budget: float, objective: str, options: Mapping[str, Any]) -> int:
    """The epochs ``budget`` passes per training image buy for ``objective`` (at least one)."""
    return max(1, round(budget / passes_per_epoch(objective, options)))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def versus(fc: FigureContext, row: str, reference: str) -> Paired | None:
    """``row``'s per-image worst case against ``reference``'s on the seeds both have (each image
    averaged over those seeds first); ``None`` before both are complete."""
    assert fc.worst_of is not None
    pairs = [(a, b) for a, b in ((fc.worst_of(row, s), fc.worst_of(reference, s)) for s in fc.seeds)
             if a is not None and b is not None and len(a) == len(b)]
    if not pairs:
        return None
    return paired(seed_average([a for a, _ in pairs]), seed_average([b for _, b in pairs]))


def _audit_verdict(fc: FigureContext, row: str, column: str) -> str:
    assert fc.get is not None
    found = []
    for s in fc.seeds:
        rec = fc.get(row, s, column)
        audit = rec.settings.get("audit") if rec is not None and rec.applies and isinstance(rec.settings, Mapping) else None
        if isinstance(audit, Mapping):
            found.append(str(audit.get("summary", "?")))
    return " / ".join(dict.fromkeys(found)) or "—"


def _verdict(row: str, reference: str, against: Paired | None, paper: float | None, worst: float | None,
             gap: float) -> str:
    """Five words or so: the row's worst case against the reference's, and whether its paper's
    protocol overstates it by ``gap`` or more."""
    if row == reference:
        return "the reference (adversarial training)"
    if against is None:
        return "not evaluated yet"
    words = {"higher": f"beats {reference}", "lower": f"below {reference}"}.get(against.outcome, f"level with {reference}")
    if paper is None or worst is None:
        return words
    return words + ("; paper's protocol overstates it" if paper - worst >= gap else "; paper's protocol agrees")


def answer_table(fc: FigureContext, rows: Sequence[str], paper: Cell, reference: str, audit_column: str,
                 gap: float = 0.05) -> str:
    """One row per defense: clean accuracy, its paper's protocol, the per-sample worst case over
    every attack (means over seeds), the audit's verdict, and a short verdict: the worst case
    against ``reference``'s (paired, 95% interval) and whether the paper's protocol reports at
    least ``gap`` more than the worst case. With several seeds planned, a ``seeds`` column says
    how many of them each row's worst case is the mean of (a partial run mixes counts); a row's
    three numbers are means over those same seeds (until its first worst case is complete, over
    the seeds each has), so its verdict never sets one seed's protocol against another's worst case."""
    assert fc.get is not None and fc.worst_of is not None
    table = []
    for row in rows:
        cases = {s: fc.worst_of(row, s) for s in fc.seeds}  # each read once
        done = [s for s, case in cases.items() if case]
        seeds = done or list(fc.seeds)
        clean = [r.value for r in (fc.get(row, s, "clean") for s in seeds) if r is not None and r.value is not None]
        column = paper.column_for(row)
        reported = [r.value for r in (fc.get(row, s, column) for s in seeds)
                    if column and r is not None and r.applies and r.value is not None]
        worst = [sum(w) / len(w) for w in (cases[s] for s in done) if w]
        p, w = _mean(reported), _mean(worst)
        line = {"defense": row, "clean (%)": _pct(_mean(clean)),
                "paper's protocol (%)": _pct(p) if column else "n/a", "worst case (%)": _pct(w),
                "audit": _audit_verdict(fc, row, audit_column),
                "verdict": _verdict(row, reference, versus(fc, row, reference), p, w, gap)}
        if len(fc.seeds) > 1:
            line["seeds"] = f"{len(worst)}/{len(fc.seeds)}"
        table.append(line)
    return markdown_table(table)


def _curves(out: Path, rows: Sequence[str], audit_column: str) -> dict[str, list[list[float]]]:
    """Per row, its audit's eps curve (seed 0): ``[eps / eps_attack, accuracy]`` points."""
    curves = {}
    for row in rows:
        path = out / "audits" / slugify(row) / "seed0" / slugify(audit_column) / "audit.json"
        if path.exists():
            curve = json.loads(path.read_text()).get("curves", {}).get("eps")
            if curve:
                curves[row] = curve
    return curves


def plots(fc: FigureContext, rows: Sequence[str], reference: str, audit_column: str, eps_text: str) -> str:
    """The scatter (clean against worst case, marker area by training seconds), the eps curves of
    the audits, and the 95% interval widths the run reaches against ``reference``, in markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert fc.get is not None and fc.worst_of is not None
    fc.folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        clean = _mean([r.value for r in (fc.get(row, s, "clean") for s in fc.seeds) if r is not None and r.value is not None])
        worst = _mean([sum(w) / len(w) for w in (fc.worst_of(row, s) for s in fc.seeds) if w])
        if clean is None or worst is None:
            continue
        seconds = training_seconds(fc.out / "models" / slugify(row)) or 0.0
        ax.scatter(100 * clean, 100 * worst, s=20 + seconds / 2, alpha=0.6)
        ax.annotate(row, (100 * clean, 100 * worst), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"worst case over every attack (%), {eps_text}")
    ax.set_title("The arena: clean against worst-case accuracy (marker area: training seconds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure(fig, fc.folder / "arena-scatter.png", dpi=110)
    curves = _curves(fc.out, rows, audit_column)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 5))
        for row, points in curves.items():
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=row)
        ax.set_xlabel("eps / the arena's eps")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title("Eps curves of the audits (seed 0)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        write_figure(fig, fc.folder / "arena-eps-curves.png", dpi=110)
    plt.close("all")
    widths = [(row, p) for row, p in ((r, versus(fc, r, reference)) for r in rows if r != reference) if p is not None]
    text = ("\n## Figures and resolution\n\n![clean against worst case](figures/arena-scatter.png)\n\n"
            + ("![eps curves](figures/arena-eps-curves.png)\n\nEach curve is the audit's sweep of the adaptive "
               "attack over eps (its points depend on the audit profile).\n\n" if curves else ""))
    if widths:
        half = sorted(p.z * p.se for _, p in widths)
        text += (f"**Resolution.** A row's worst case against {reference}'s, image by image over {widths[0][1].n} "
                 f"images ({len(fc.seeds)} seed{'s' if len(fc.seeds) != 1 else ''}): the 95% intervals' half-widths "
                 f"run from {100 * half[0]:.1f} to {100 * half[-1]:.1f} points (median {100 * half[len(half) // 2]:.1f}); "
                 "a 5-point difference is resolved where the half-width is below 5.\n\n")
    return text

