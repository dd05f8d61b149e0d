"""An audit as files a person reads: ``audit.md``, ``audit.json`` and the two plots.

:func:`write_audit` writes them into a folder; every file is written atomically (a reader or a
crash sees the old file or the new one whole), the plots first and ``audit.json`` last, so a
folder with an ``audit.json`` holds a complete audit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..core.checkpoint import write_text_atomic
from ..core.markdown import format_pct, markdown_table
from ..core.plots import write_figure
from ..evaluate.result import format_eps
from .verdict import AuditResult

__all__ = ["audit_markdown", "plot_curve", "write_audit"]

_STATUS = {"pass": "pass", "flag": "**FLAG**", "n/a": "n/a"}


def plot_curve(points: Sequence[Sequence[float]], path: Path, xlabel: str, title: str,
               chance: float | None = None, log_x: bool = False) -> None:
    """Robust accuracy (%) against ``xlabel`` as a PNG and its SVG twin, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o")
    if chance is not None:
        ax.axhline(100 * chance, linestyle="--", color="grey", label="chance")
        ax.legend(fontsize=7)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    plt.close(fig)


def audit_markdown(result: AuditResult, plots: dict[str, str] | None = None) -> str:
    """The audit report: the verdict, the numbers, the checklist, the binarization test."""
    t = result.threat
    lines = [
        f"# Audit of {result.evaluation} on {result.model_name}",
        "",
        f"**{result.summary}**",
        "",
        f"{result.n} images, {t['norm']} eps {format_eps(float(t['eps']))}, randomness: "
        f"{result.evaluation_result.randomness}; {result.seconds:.0f} s; settings: {result.settings['profile']}.",
        "",
        markdown_table([
            {"": "clean accuracy", "%": format_pct(result.clean_acc)},
            {"": f"robust accuracy reported by {result.evaluation}", "%": format_pct(result.reported)},
            {"": "robust accuracy, the audit's per-image worst case", "%": format_pct(result.worst)},
        ]),
    ]
    if result.worst < result.reported:
        lines += [f"The audit's attacks lower the reported number by {100 * (result.reported - result.worst):.2f} "
                  "points: trust the worst case, not the reported figure.", ""]
    lines += ["## The passive checklist", "",
              "Carlini et al. 2019 (On Evaluating Adversarial Robustness) and Athalye et al. 2018: each check "
              "compares attacks on the same images.", ""]
    lines.append(markdown_table([{"check": c.title, "result": _STATUS.get(c.status, c.status), "evidence": c.evidence,
                                  "source": c.source} for c in result.checklist.checks]))
    b = result.binarization
    lines += ["## The binarization test", ""]
    if b is None:
        lines += ["Not run.", ""]
    else:
        interval = "-" if b.interval is None else f"{format_pct(b.interval[0])} to {format_pct(b.interval[1])}"
        lines += [
            "Zimmermann, Brendel, Tramèr and Carlini (NeurIPS 2022): per image, the model's head is replaced by a "
            "linear readout that separates points inside the ball from a point on its boundary, so an adversarial "
            f"example provably exists inside the threat model; a working attack finds it. {b.attack} is the attack "
            f"under audit. The test fails when the whole {int(100 * b.level)}% interval of the test ASR lies below "
            f"the ASR needed: {format_pct(b.threshold, digits=0)}% (robustlab's threshold; the reference reports the "
            "ASR without one) of the share of fresh draws that put the construction's own boundary point in class 1 "
            "(all of them on a deterministic model).",
            "",
            markdown_table([{"attack": b.attack, "verdict": b.verdict, "test ASR (%)": format_pct(b.test_asr),
                             "interval (%)": interval, "ASR needed (%)": format_pct(b.required_asr),
                             "random ASR (%)": format_pct(b.random_asr),
                             "testable": b.testable, "not testable": b.not_testable}]),
        ]
        reasons = sorted({s.reason for s in b.samples if not s.testable})
        if reasons:
            lines += ["Not testable: " + "; ".join(reasons) + ".", ""]
    lines += ["## Every evaluation the audit ran", "",
              markdown_table([{"evaluation": label, "eps": _eps_of(r.config), "robust (%)": format_pct(r.robust_acc),
                               "worst for": sum(1 for s in result.worst_source if s == label),
                               "time (s)": f"{r.seconds:.1f}"}
                              for label, r in result.evaluations().items()])]
    for key, caption in (("eps", "Robust accuracy as eps grows"), ("eot", "Robust accuracy against EOT draws")):
        if plots and key in plots:
            lines += [f"![{caption}]({plots[key]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _eps_of(config: dict[str, object]) -> str:
    from ..evaluate.result import battery_threat

    t = battery_threat(config)
    return "-" if t is None else format_eps(float(t["eps"]))


def write_audit(result: AuditResult, out: str | os.PathLike[str], num_classes: int | None = None) -> dict[str, Path]:
    """Write ``audit.md``, ``audit.json``, ``eps-curve.png`` and (randomized models)
    ``eot-convergence.png`` into ``out``; returns their paths by kind."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    plots: dict[str, str] = {}
    curves = result.checklist.curves
    chance = None if num_classes is None else 1.0 / num_classes
    if curves.get("eps"):
        paths["eps"] = folder / "eps-curve.png"
        plot_curve(curves["eps"], paths["eps"], f"{result.threat['norm']} eps", "accuracy falls to chance as eps grows",
                   chance=chance)
        plots["eps"] = paths["eps"].name
    if curves.get("eot"):
        paths["eot"] = folder / "eot-convergence.png"
        plot_curve(curves["eot"], paths["eot"], "EOT draws per gradient", "EOT convergence", log_x=True)
        plots["eot"] = paths["eot"].name
    paths["md"] = write_text_atomic(folder / "audit.md", audit_markdown(result, plots))
    paths["json"] = write_text_atomic(folder / "audit.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return paths
