"""A study's report from its records alone: tables with seed counts, the plot, sanity checks and
the ledger rows. Nothing here evaluates a model, so ``--report-only`` works on a partial run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.markdown import markdown_table
from ..core.plots import write_figure
from .columns import Column
from .records import Lookup, Record, WorstOf
from .stats import mean_std

__all__ = ["Cell", "Plot", "Table", "at_chance", "cells", "chance_warnings", "cost_section", "epoch_seconds",
           "ledger_section", "render_table", "scatter_plot", "training_seconds", "warnings_section"]


@dataclass(frozen=True)
class Cell:
    """A table column: a study column's headline number, or one attack of its battery (``part``:
    the robust accuracy once that attack and every one before it ran, as AutoAttack reports).

    ``per_row``: ``(row label, column)`` pairs where a row's number comes from another column
    (each defense's own protocol in one "paper's protocol" cell, say); ``""`` leaves the row
    without one (``n/a``)."""

    column: str
    header: str
    part: str | None = None
    per_row: tuple[tuple[str, str], ...] = ()

    def column_for(self, row: str) -> str:
        """The column that row ``row``'s number comes from (``""``: none)."""
        return dict(self.per_row).get(row, self.column)


def cells(columns: Iterable[Column], names: Iterable[str]) -> tuple[Cell, ...]:
    """A table's cells: the columns ``names`` under their own headers."""
    header = {c.name: c.header for c in columns}
    return tuple(Cell(name, header[name]) for name in names)


@dataclass(frozen=True)
class Table:
    """A table of the report: a row per variant, a cell per :class:`Cell`, and optionally the
    per-sample worst case over every attack each row's model met."""

    key: str
    title: str
    intro: str
    rows: tuple[str, ...]
    cells: tuple[Cell, ...]
    worst: bool = False


@dataclass(frozen=True)
class Plot:
    """A scatter of one table's rows: ``x`` column against ``y`` column and the worst case."""

    file: str
    table: str
    x: Cell
    y: Cell
    title: str




def _cell_values(get: Lookup, variant: str, seeds: Sequence[int], cell: Cell) -> tuple[list[float], bool]:
    """Per seed with a record, the cell's number in percent; and whether it is not applicable."""
    vals, not_applicable = [], False
    column = cell.column_for(variant)
    if not column:
        return [], True
    for s in seeds:
        rec = get(variant, s, column)
        if rec is None:
            continue
        if not rec.applies:
            not_applicable = True
            continue
        v = rec.per_attack.get(cell.part) if cell.part is not None else rec.value
        if v is not None:
            vals.append(100 * v)
    return vals, not_applicable


def fmt(vals: Sequence[float], expect: int) -> str:
    """``mean ± std (k/K)``: over the ``k`` seeds done of ``K``; ``—`` when none."""
    if not vals:
        return "—"
    m, s = mean_std(list(vals))
    return (f"{m:.2f} ± {s:.2f}" if len(vals) > 1 else f"{m:.2f}") + f" ({len(vals)}/{expect})"


def render_table(table: Table, seeds: Sequence[int], get: Lookup, worst_of: WorstOf,
                 error_columns: Sequence[str] = ()) -> str:
    """The table in Markdown: percentages, mean ± std over seeds with ``(seeds done/planned)``;
    ``n/a`` where a column does not apply to the model (EOT on a deterministic one), ``—`` where
    it is not computed yet."""
    rows = []
    for label in table.rows:
        row = {"method": label}
        for cell in table.cells:
            vals, na = _cell_values(get, label, seeds, cell)
            arrow = " ↓" if cell.column in error_columns and cell.part is None else ""
            row[f"{cell.header}{arrow} (%)"] = "n/a" if na and not vals else fmt(vals, len(seeds))
        if table.worst:
            worst = [w for w in (worst_of(label, s) for s in seeds) if w is not None]
            row["worst case, all attacks (%)"] = fmt([100 * sum(w) / len(w) for w in worst], len(seeds))
        rows.append(row)
    return markdown_table(rows)


def scatter_plot(path: Path, plot: Plot, rows: Sequence[str], seeds: Sequence[int], get: Lookup, worst_of: WorstOf,
                 xlabel: str, ylabel: str) -> None:
    """Each row as a point (x, y) and a cross at (x, worst case), joined by a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for label in rows:
        xs, _ = _cell_values(get, label, seeds, plot.x)
        ys, _ = _cell_values(get, label, seeds, plot.y)
        if not xs or not ys:
            continue
        x, y = sum(xs) / len(xs), sum(ys) / len(ys)
        ax.scatter(x, y, marker="o", color="tab:blue")
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        worst = [100 * sum(w) / len(w) for w in (worst_of(label, s) for s in seeds) if w is not None]
        if worst:
            w = sum(worst) / len(worst)
            ax.scatter(x, w, marker="x", color="tab:red")
            ax.plot([x, x], [y, w], color="grey", lw=0.6, ls=":")
    ax.scatter([], [], marker="o", color="tab:blue", label=plot.y.header)
    ax.scatter([], [], marker="x", color="tab:red", label="worst case over every attack")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(plot.title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def at_chance(records: Sequence[Record], num_classes: int) -> list[Record]:
    """The clean records whose accuracy is not above chance: at most ``1 / num_classes`` plus
    two binomial standard errors of a chance-level classifier on that many images. Such a model
    did not learn, and its robust accuracies say nothing about its defense (an attack cannot
    lower what is already chance)."""
    out = []
    for rec in records:
        if rec.kind != "clean" or rec.accuracy is None or not rec.per_image:
            continue
        p = 1.0 / num_classes
        if rec.accuracy <= p + 2.0 * (p * (1.0 - p) / len(rec.per_image)) ** 0.5:
            out.append(rec)
    return sorted(out, key=lambda r: (r.variant, r.seed))


def chance_warnings(records: Sequence[Record], num_classes: int) -> dict[tuple[str, int], dict[str, str]]:
    """:func:`at_chance` as sanity-check findings (code ``clean-at-chance``), keyed by (variant, seed)."""
    return {(r.variant, r.seed): {
        "code": "clean-at-chance",
        "message": f"clean accuracy {100 * (r.accuracy or 0):.1f}% on {len(r.per_image)} images is not above chance "
                   f"({100 / num_classes:.1f}% for {num_classes} classes): the model did not learn, so its robust "
                   "accuracies say nothing about the defense; retrain it (more epochs or images, another seed) "
                   "before reading its row"} for r in at_chance(records, num_classes)}


def warnings_section(records: Sequence[Record], notes: Mapping[str, str], many_seeds: bool,
                     extra: Mapping[tuple[str, int], Mapping[str, str]] | None = None) -> str:
    """The evaluations' sanity-check warnings grouped by finding: which variant's column (and
    seed) raised each, one example message, and the study's note on the finding if it has one.
    ``extra`` adds findings about a whole (variant, seed), such as :func:`chance_warnings`."""
    by_code: dict[str, tuple[str, dict[str, None]]] = {}
    for (variant, seed), w in sorted((extra or {}).items()):
        example, where = by_code.setdefault(str(w["code"]), (str(w["message"]), {}))
        where[variant + (f" (seed {seed})" if many_seeds else "")] = None
    for rec in sorted(records, key=lambda r: (r.variant, r.seed, r.column)):
        if rec.same_as is not None:
            continue
        for w in rec.warnings:
            example, where = by_code.setdefault(str(w["code"]), (str(w["message"]), {}))
            where[f"{rec.variant} `{rec.column}`" + (f" (seed {rec.seed})" if many_seeds else "")] = None
    if not by_code:
        return ""
    lines = ["\n## Sanity checks\n\n"]
    for code, (example, where) in sorted(by_code.items()):
        note = f" {notes[code]}" if code in notes else ""
        lines.append(f"- `{code}` in {', '.join(where)}. For example: {example}.{note}\n")
    return "".join(lines)


def ledger_section(records: Sequence[Record], ledger: str) -> str:
    """One line per attack evaluation (the rows ``ledger.sqlite`` holds), from the records."""
    rows = [{"variant": r.variant, "seed": r.seed, "column": r.column, "robust (%)": f"{100 * (r.accuracy or 0):.2f}",
             "clean, same images (%)": f"{100 * sum(r.clean_per_image) / max(1, len(r.clean_per_image)):.2f}",
             "images": r.images, "randomness": r.randomness, "seconds": f"{r.seconds:.1f}"}
            for r in sorted(records, key=lambda r: (r.variant, r.seed, r.column))
            if r.kind == "attack" and r.applies and r.same_as is None]
    if not rows:
        return ""
    return (f"\n## Ledger rows\n\nEvery attack evaluation of this run, as stored in `{ledger}` "
            f"(`robustlab leaderboard --ledger {ledger}` ranks them):\n\n" + markdown_table(rows))


def epoch_seconds(folder: Path) -> float | None:
    """Mean seconds per training epoch of the model ``folder`` (``models/<variant>``), over the
    epochs of every seed's ``metrics.jsonl``; ``None`` before any epoch."""
    files = sorted(folder.glob("*/metrics.jsonl")) or sorted(folder.glob("metrics.jsonl"))  # or one checkpoint's
    epochs = [json.loads(line).get("seconds", 0.0) for p in files
              for line in p.read_text().splitlines() if line.strip()]
    return sum(epochs) / len(epochs) if epochs else None


def training_seconds(folder: Path) -> float | None:
    """Seconds of one training of the model ``folder`` (a ``models/<variant>`` folder: mean over
    its seeds' ``metrics.jsonl``; or the folder of one checkpoint); ``None`` when none is there."""
    files = sorted(folder.glob("*/metrics.jsonl")) or sorted(folder.glob("metrics.jsonl"))
    runs = [sum(json.loads(line).get("seconds", 0.0) for line in p.read_text().splitlines() if line.strip())
            for p in files]
    return sum(runs) / len(runs) if runs else None


def cost_section(models: Path, rows: Sequence[tuple[str, str]], passes: Mapping[str, float] | None = None,
                 eval_seconds: Mapping[str, float] | None = None, trained_at: Mapping[str, Path] | None = None) -> str:
    """The cost of each variant from the files beside its model: seconds per training epoch (its
    ``metrics.jsonl``, mean over epochs and seeds), FLOPs and activation memory of one forward on
    one image and parameters (``cost.json``). ``rows`` pairs each label with its folder name.

    With ``passes`` (label -> forward-backward passes per training image), ``eval_seconds``
    (label -> seconds of its evaluations) and ``trained_at`` (label -> the folder a loaded
    checkpoint was trained in), the table states each row's whole training (passes and seconds)
    and evaluation time too."""
    out = []
    for label, slug in rows:
        costs = [json.loads(p.read_text()) for p in sorted((models / slug).glob("*/cost.json"))]
        trained = (trained_at or {}).get(label, models / slug)
        seconds = epoch_seconds(trained)
        if not costs:
            continue
        c = costs[0]
        row = {"variant": label, "s / epoch": "—" if seconds is None else f"{seconds:.1f}"}
        if passes is not None:
            total = training_seconds(trained)
            row.update({"training passes / image": f"{passes[label]:g}" if label in passes else "—",
                        "training (s)": "—" if total is None else f"{total:.0f}",
                        "evaluation (s)": f"{(eval_seconds or {}).get(label, 0.0):.0f}"})
        out.append({**row, "MFLOPs / image": f"{c['flops'] / 1e6:.2f}",
                    "activations (MB)": f"{c['activation_bytes'] / 2**20:.2f}", "parameters": f"{c['params']:,}"})
    if not out:
        return ""
    return ("\n## Cost\n\nSeconds per training epoch on this run's device (mean over epochs and seeds), and one "
            "forward on one image: FLOPs (a multiply-add counts 2) and the memory of every layer's output."
            + (" Training passes: forward-backward passes through the network per training image over the whole "
               "training (an attack step counts one; a finetuned row adds its source's); training and evaluation "
               "seconds are per seed." if passes is not None else "") + "\n\n"
            + markdown_table(out))
