"""The sentences of a study's report that state what the run did, written from its config,
columns and claims, so that a report never states a setting the run did not use: a ``--eps`` or
``--dataset`` given on the command line reads as given, and the attack budget is the one that ran.

A recipe writes only what is its own (the paper's setting, its notes); the verdict's opening
(:func:`verdict_opening`) is the same for every study.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .claims import Claim
from .columns import Column
from .stats import Z95

__all__ = ["DATASET_NAMES", "attack_budget", "dataset_name", "eps_text", "images_text", "norm_text", "ordinal",
           "threat_text", "train_images", "verdict_opening"]

DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
"""How prose names a registered dataset (other names are written as registered)."""


def dataset_name(dataset: str) -> str:
    """The dataset as prose names it (``fashion-mnist`` -> ``Fashion-MNIST``)."""
    return DATASET_NAMES.get(dataset, dataset)


def eps_text(eps: float) -> str:
    """A radius as a user writes it: a short decimal when it is one (``0.05``, ``0.1``), else a
    multiple of 1/255 when it is one (``4/255``: ``--eps 4/255`` arrives as 0.01568...)."""
    short = f"{eps:.4g}"
    if float(short) == eps:
        return short
    k = round(eps * 255)
    return f"{k}/255" if k > 0 and k / 255 == eps else short


def norm_text(norm: str) -> str:
    """``linf`` -> ``L-inf``, ``l2`` -> ``L2``."""
    return {"linf": "L-inf", "l2": "L2"}.get(norm, norm)


def threat_text(cfg: Any) -> str:
    """``L-inf eps = 0.1``: the run's threat model (``cfg`` a :class:`~.study.StudyConfig`)."""
    return f"{norm_text(cfg.norm)} eps = {eps_text(cfg.eps)}"


def ordinal(i: int) -> str:
    """``2`` -> ``second`` (``11th`` and on in digits)."""
    words = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
    return words[i - 1] if 1 <= i <= len(words) else f"{i}th"


def train_images(facts: Mapping[str, Any], limit: int | None) -> Any:
    """How many training images a ``limit`` gave (from the report's facts; ``?`` when unknown)."""
    return facts["train_images"].get(str(limit), "?")


def images_text(facts: Mapping[str, Any]) -> str:
    """The closing sentence of a report's opening: how many images were evaluated."""
    return f"Clean accuracy on {facts['clean_images']} test images; attacks on {facts['eval_images']}."


def _step(s: Mapping[str, Any]) -> str:
    extra = [f"step {s['step_size']:.3g}", *(["random start"] if s.get("random_start") else []),
             *([f"{s['restarts']} restarts"] if int(s.get("restarts", 1)) > 1 else []),
             *([f"BPDA {s['bpda']}"] if s.get("bpda") else [])]
    eot = int(s.get("eot") or 0)
    with_eot = f" with {'normalized ' if s.get('eot_normalize') else ''}EOT-{eot}" if eot else ""
    return f"PGD-{s['steps']}{with_eot} ({', '.join(extra)})"


def _budget(column: Column) -> str:
    s = column.settings
    if column.kind == "pgd":
        return _step(s)
    if column.kind == "unchanged":
        return f"{_step(s)} at eps {eps_text(float(s['eps']))}, predictions left unchanged"
    if column.kind == "square":
        eot = int(s.get("eot", 1))
        return f"Square, {s['queries']} queries" + (f", EOT-{eot} (expected margin)" if eot > 1 else "")
    if column.kind == "autoattack":
        eot = int(s.get("eot", 1))
        return (f"AutoAttack {s['version']}" + (f" with EOT-{eot}" if eot > 1 else "")
                + (f", BPDA {s['bpda']}" if s.get("bpda") else ""))
    if column.kind == "deepfool":
        return f"DeepFool, {s['steps']} steps, overshoot {s['overshoot']:g}"
    if column.kind == "battery":
        options = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in dict(s.get("options", {})).items())
        return f"battery `{s['battery']}`" + (f" ({options})" if options else "")
    if column.kind == "transfer":
        carried = [s["attack"]] if isinstance(s["attack"], str) else list(s["attack"])
        source = "the deterministic twin" if s["source"] == "twin" else s["source"]
        return f"{' and '.join(f'`{c}`' for c in carried)} crafted on {source}"
    return column.kind.upper() if column.kind == "fgsm" else column.kind


def attack_budget(columns: Iterable[Column]) -> str:
    """Every attack (and anti-perturbation) column with its budget: ``\\`pgd\\` PGD-10 (step 0.01,
    random start); \\`square\\` Square, 200 queries``."""
    return "; ".join(f"`{c.name}` {_budget(c)}" for c in columns if c.attack or c.kind == "unchanged")


def verdict_opening(cfg: Any, columns: Sequence[Column], ran: Iterable[str], claims: Sequence[Claim],
                    paper: str = "", note: str = "") -> str:
    """The paragraph above the claims table: how a claim is judged (from the claims' rules), the
    paper's setting against the run's (dataset, model, threat model from ``cfg``), the attacks run
    (the ``columns`` named in ``ran``), then the study's own ``note``."""
    parts = ["Each claim compares two sides on the same test images, each image's outcome averaged over the seeds "
             f"both sides finished; a difference counts when its 95% interval ({Z95:.2f} standard errors over images) "
             "excludes 0."]
    if any(c.rule == "no-worse-than" for c in claims):
        parts.append("A \"drop at most\" row is judged on the point estimate against its threshold, whose source "
                     "its rule names.")
    headers = {c.name: c.header for c in columns}
    for needs in dict.fromkeys(c.needs for c in claims if c.needs):
        names = [f"\"{c.claim}\"" for c in claims if c.needs == needs]
        parts.append(f"{', '.join(names)} conclude{'s' if len(names) == 1 else ''} only when the profile runs "
                     f"{' and '.join(headers.get(n, n) for n in needs)}.")
    here = f"{cfg.model} on {dataset_name(cfg.dataset)} at {norm_text(cfg.norm)} eps {eps_text(cfg.eps)}"
    parts.append(f"The paper's figures are {paper}; here {here}, so the comparison is of direction and size, not of "
                 "level." if paper else f"Here {here}.")
    run = set(ran)
    budget = attack_budget(c for c in columns if c.name in run)
    if budget:
        parts.append(f"Attacks run: {budget}.")
    if note:
        parts.append(note)
    return " ".join(parts) + "\n"
