"""The outcome of a battery evaluation: accuracies, per-attack results and per-sample masks."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..attacks.checks import EvalWarning
from ..core.errors import InputError

__all__ = [
    "AttackSummary",
    "EvalResult",
    "battery_threat",
    "decode_mask",
    "encode_mask",
    "format_eps",
    "indices_hash",
    "mean_std",
    "robust_measure",
    "worst_case",
]


def indices_hash(indices: Sequence[int]) -> str:
    """SHA-256 of the evaluated samples' indices (their canonical JSON list), so two results
    labelled with the same ``n`` but computed on other samples are told apart."""
    blob = json.dumps([int(i) for i in indices], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _battery_attacks(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The attack configurations a result's config records for its battery."""
    battery = config.get("battery", {})
    attacks = battery.get("attacks", []) if isinstance(battery, Mapping) else []
    return [a for a in attacks if isinstance(a, Mapping)]


def battery_threat(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The threat model every attack of a result's battery used (``{"norm", "eps"}``), or
    ``None`` when its attacks differ or none is recorded."""
    threats = {json.dumps(a.get("threat"), sort_keys=True) for a in _battery_attacks(config)}
    if len(threats) != 1:
        return None
    threat = json.loads(threats.pop())
    return threat if isinstance(threat, dict) else None


def format_eps(eps: float) -> str:
    """An eps as people write it: ``8/255 (0.03137)`` when it is a whole number of 255ths,
    else its shortest exact-looking decimal (``0.1``, ``0.5``)."""
    k = eps * 255
    if 0 < eps <= 1 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255 ({eps:.4g})"
    return f"{eps:.6g}"


def robust_measure(config: Mapping[str, Any]) -> str:
    """What a result's robust accuracy is: ``worst case over 4 attacks`` for a battery of
    several attacks, ``robust under pgd`` for a single attack (never a "worst case")."""
    labels = [str(a.get("label", a.get("name", "?"))) for a in _battery_attacks(config)]
    if len(labels) == 1:
        return f"robust under {labels[0]}"
    return f"worst case over {len(labels)} attacks"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value) of ``values``."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def worst_case(masks: Sequence[Sequence[float]], selects: Sequence[Sequence[float]] | None = None) -> list[float]:
    """Per image, the outcome under the attack that is worst for it.

    ``masks`` holds one list per attack of per-image outcomes (1/0, or for a randomized model
    the probability that a draw classifies the image's point correctly). Each image takes the
    attack with the lowest ``selects`` value (the estimate that chose its point; default the
    outcomes themselves; ties: the first) and reports that attack's outcome. With 0/1 outcomes
    this is the AND over attacks; with probabilities it is never a product of them, and with
    separate selection estimates the choice does not bias the reported value (the minimum of
    noisy estimates would).
    """
    if not masks or len({len(m) for m in masks}) != 1:
        raise InputError(f"the worst case needs one equal-length mask per attack, got lengths "
                         f"{[len(m) for m in masks]}")
    selects = masks if selects is None else selects
    if len(selects) != len(masks) or any(len(s) != len(masks[0]) for s in selects):
        raise InputError("the worst case needs one selection list per attack, as long as its outcomes")
    out = []
    for i in range(len(masks[0])):
        j = min(range(len(masks)), key=lambda a: selects[a][i])
        out.append(float(masks[j][i]))
    return out


def encode_mask(mask: torch.Tensor) -> list[str]:
    """A ``(R, N)`` bool mask as ``R`` strings of ``'0'``/``'1'`` (JSON-ready and diffable)."""
    m = mask.detach().to("cpu", torch.bool)
    if m.dim() == 1:
        m = m.unsqueeze(0)
    return ["".join("1" if v else "0" for v in row.tolist()) for row in m]


def decode_mask(rows: Sequence[str]) -> torch.Tensor:
    """Inverse of :func:`encode_mask`: a ``(R, N)`` bool tensor."""
    if not rows:
        return torch.zeros(0, 0, dtype=torch.bool)
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.bool)


@dataclass(frozen=True)
class AttackSummary:
    """What one attack of a battery did, summed or averaged over repeats.

    Per-attack numbers follow AutoAttack's report (Croce & Hein, 2020, Sec. 5): attacks run in
    order and each sees only the samples still robust, so an attack's accuracy "alone" is not
    measured. Instead:

    Attributes:
        label: the attack's unique label in the battery.
        config: the attack's configuration (:func:`~robustlab.evaluate.describe_attack`).
        robust_acc: mean over repeats of the cumulative worst-case robust accuracy after this
            attack (and every earlier one).
        robust_std: its sample standard deviation over repeats (0 for one repeat).
        success_rate: the attack's own success rate on the samples it saw (broken / seen, summed
            over repeats; ``nan`` when it saw none).
        seen: samples the attack was run on, summed over repeats.
        broken: samples it broke (by the evaluator's final prediction), summed over repeats.
        forward_passes: image forward evaluations the attack spent (not counting the
            evaluator's final predictions).
        backward_passes: image backward evaluations the attack spent.
        seconds: wall time spent in the attack.
    """

    label: str
    config: dict[str, Any]
    robust_acc: float
    robust_std: float
    success_rate: float
    seen: int
    broken: int
    forward_passes: int
    backward_passes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "label": self.label,
            "config": self.config,
            "robust_acc": self.robust_acc,
            "robust_std": self.robust_std,
            "success_rate": None if math.isnan(self.success_rate) else self.success_rate,
            "seen": self.seen,
            "broken": self.broken,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttackSummary:
        """Inverse of :meth:`to_dict`."""
        rate = d.get("success_rate")
        return cls(
            label=str(d["label"]),
            config=dict(d.get("config", {})),
            robust_acc=float(d["robust_acc"]),
            robust_std=float(d["robust_std"]),
            success_rate=float("nan") if rate is None else float(rate),
            seen=int(d["seen"]),
            broken=int(d["broken"]),
            forward_passes=int(d["forward_passes"]),
            backward_passes=int(d["backward_passes"]),
            seconds=float(d["seconds"]),
        )


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`~robustlab.evaluate.run_battery`.

    Accuracies are fractions in [0, 1]; ``*_std`` are sample standard deviations over repeats
    (0 for one repeat). Masks are CPU bool tensors of shape ``(repeats, n)``, one row per repeat,
    one column per evaluated sample (in the order of ``indices``).

    Attributes:
        clean_acc: mean clean accuracy.
        clean_std: its standard deviation over repeats.
        robust_acc: mean worst-case robust accuracy over the whole battery.
        robust_std: its standard deviation over repeats.
        per_attack: label -> :class:`AttackSummary`, in battery order.
        n: number of evaluated samples.
        indices: each sample's index in the dataset's full underlying split (or its position in
            the given tensors).
        seconds: wall time of the evaluation (summed over resumed sessions).
        config: everything the numbers depend on: battery config, seed, repeats, ensemble,
            batch size, dataset, model hash, whether the model was stochastic.
        clean_correct: ``(R, n)``: the clean prediction was right.
        robust: ``(R, n)``: the sample survived every attack (implies ``clean_correct``).
        success: label -> ``(R, n)``: that attack broke the sample (``False`` where not seen).
        seen: label -> ``(R, n)``: that attack was run on the sample.
        clean_accs: clean accuracy of each repeat.
        robust_accs: worst-case robust accuracy of each repeat.
        model_hash: SHA-256 over the model's state-dict tensors.
        model_name: a short name for tables (architecture and conversions, or the class name).
        recipe: the model's robustlab recipe when it has one, else ``{}``.
        dataset: the dataset's name (``"tensors"`` for raw tensors).
        versions: robustlab, torch and python versions that computed the result.
        p_clean: ``(R, n)`` float: the probability that a draw of the verdict classifies the
            clean image correctly (0/1 on a deterministic model; :mod:`robustlab.attacks.verdict`).
        p_robust: ``(R, n)`` float: the probability that a draw classifies the sample's final
            incumbent (the worst point any attack found) correctly, estimated on fresh draws
            after it was chosen: ``robust_acc`` is its mean. ``robust`` is ``p_robust >= 0.5``.
        p_select: ``(R, n)`` float: the same probability as estimated by the comparison that
            chose the incumbent (what a worst case over several results selects on, so that the
            reported ``p_robust`` of the chosen one is not biased by the choice).
    """

    clean_acc: float
    clean_std: float
    robust_acc: float
    robust_std: float
    per_attack: dict[str, AttackSummary]
    n: int
    indices: list[int]
    seconds: float
    config: dict[str, Any]
    clean_correct: torch.Tensor
    robust: torch.Tensor
    success: dict[str, torch.Tensor]
    seen: dict[str, torch.Tensor]
    clean_accs: list[float] = field(default_factory=list)
    robust_accs: list[float] = field(default_factory=list)
    model_hash: str = ""
    model_name: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    p_clean: torch.Tensor | None = None
    p_robust: torch.Tensor | None = None
    p_select: torch.Tensor | None = None

    def probabilities(self) -> dict[str, torch.Tensor]:
        """``clean``, ``robust`` and ``select`` per-sample probabilities ``(R, n)`` (from the
        masks when the result predates them: a deterministic model's 0/1 outcomes)."""
        clean = self.p_clean if self.p_clean is not None else self.clean_correct.double()
        robust = self.p_robust if self.p_robust is not None else self.robust.double()
        select = self.p_select if self.p_select is not None else robust
        return {"clean": clean, "robust": robust, "select": select}

    @property
    def battery(self) -> str:
        """The battery's name."""
        return str(self.config.get("battery", {}).get("name", ""))

    @property
    def indices_sha256(self) -> str:
        """SHA-256 of ``indices`` (:func:`indices_hash`): which samples were evaluated."""
        return str(self.config.get("indices_sha256") or indices_hash(self.indices))

    @property
    def warnings(self) -> tuple[EvalWarning, ...]:
        """The sanity checks' findings (:mod:`robustlab.attacks.checks`), kept in ``config``."""
        return tuple(EvalWarning.from_dict(w) for w in self.config.get("warnings", []))

    @property
    def randomness(self) -> str:
        """``"protocol"``, ``"detected"`` or ``"none"``: how the model's randomness was known."""
        return str(self.config.get("randomness", "protocol" if self.config.get("stochastic") else "none"))

    @property
    def repeats(self) -> int:
        """Number of repeats of the battery."""
        return int(self.config.get("repeats", 1))

    @property
    def ensemble(self) -> int:
        """Draws per prediction (mean softmax)."""
        return int(self.config.get("ensemble", 1))

    @property
    def seed(self) -> int:
        """The seed every generator was derived from."""
        return int(self.config.get("seed", 0))

    def head(self, k: int) -> EvalResult:
        """The result restricted to its first ``k`` samples: every per-sample tensor sliced, the
        accuracies recomputed from them; warnings, config and per-attack summaries (which
        describe the whole run) kept."""
        if not 0 < k <= self.n:
            raise InputError(f"head(k) needs 0 < k <= {self.n} samples, got {k}")
        if k == self.n:
            return self
        probs = {name: p[:, :k] for name, p in self.probabilities().items()}
        clean_accs = [float(v) for v in probs["clean"].mean(dim=1)]
        robust_accs = [float(v) for v in probs["robust"].mean(dim=1)]
        clean, clean_std = mean_std(clean_accs)
        robust, robust_std = mean_std(robust_accs)
        return replace(self, clean_acc=clean, clean_std=clean_std, robust_acc=robust, robust_std=robust_std, n=k,
                       indices=list(self.indices[:k]), clean_correct=self.clean_correct[:, :k],
                       robust=self.robust[:, :k], success={a: m[:, :k] for a, m in self.success.items()},
                       seen={a: m[:, :k] for a, m in self.seen.items()}, clean_accs=clean_accs,
                       robust_accs=robust_accs, p_clean=probs["clean"], p_robust=probs["robust"],
                       p_select=probs["select"])

    def masks(self) -> dict[str, torch.Tensor]:
        """Every per-sample mask by name: ``clean``, ``robust``, ``success/<label>``,
        ``seen/<label>``."""
        out = {"clean": self.clean_correct, "robust": self.robust}
        out.update({f"success/{k}": v for k, v in self.success.items()})
        out.update({f"seen/{k}": v for k, v in self.seen.items()})
        return out

    def to_dict(self, masks: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; masks (when asked) as strings of ``'0'``/``'1'``, one per repeat."""
        d: dict[str, Any] = {
            "clean_acc": self.clean_acc,
            "clean_std": self.clean_std,
            "robust_acc": self.robust_acc,
            "robust_std": self.robust_std,
            "clean_accs": list(self.clean_accs),
            "robust_accs": list(self.robust_accs),
            "per_attack": {k: v.to_dict() for k, v in self.per_attack.items()},
            "n": self.n,
            "indices": list(self.indices),
            "seconds": self.seconds,
            "config": self.config,
            "model_hash": self.model_hash,
            "model_name": self.model_name,
            "recipe": self.recipe,
            "dataset": self.dataset,
            "versions": dict(self.versions),
        }
        if masks:
            d["masks"] = {k: encode_mask(v) for k, v in self.masks().items()}
            d["probabilities"] = {k: [[round(float(p), 6) for p in row] for row in v.tolist()]
                                  for k, v in self.probabilities().items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict` (masks are empty when the dict has none)."""
        per_attack = {k: AttackSummary.from_dict(v) for k, v in d["per_attack"].items()}
        raw = {k: decode_mask(v) for k, v in d.get("masks", {}).items()}
        probs = {k: torch.tensor(v, dtype=torch.float64) for k, v in d.get("probabilities", {}).items()}
        empty = torch.zeros(0, 0, dtype=torch.bool)
        return cls(
            clean_acc=float(d["clean_acc"]),
            clean_std=float(d["clean_std"]),
            robust_acc=float(d["robust_acc"]),
            robust_std=float(d["robust_std"]),
            per_attack=per_attack,
            n=int(d["n"]),
            indices=[int(i) for i in d["indices"]],
            seconds=float(d["seconds"]),
            config=dict(d["config"]),
            clean_correct=raw.get("clean", empty),
            robust=raw.get("robust", empty),
            success={k: raw.get(f"success/{k}", empty) for k in per_attack},
            seen={k: raw.get(f"seen/{k}", empty) for k in per_attack},
            clean_accs=[float(v) for v in d.get("clean_accs", [])],
            robust_accs=[float(v) for v in d.get("robust_accs", [])],
            model_hash=str(d.get("model_hash", "")),
            model_name=str(d.get("model_name", "")),
            recipe=dict(d.get("recipe", {})),
            dataset=str(d.get("dataset", "")),
            versions=dict(d.get("versions", {})),
            p_clean=probs.get("clean"),
            p_robust=probs.get("robust"),
            p_select=probs.get("select"),
        )

    def table_rows(self, digits: int = 2) -> list[dict[str, str]]:
        """Rows for a report table: clean, each attack (cumulative), worst case.

        Columns: ``stage``, ``accuracy (%)`` (``± std`` with more than one repeat), ``attack
        success on seen (%)``, ``seen``.
        """
        from ..core.markdown import format_pct

        def pct(mean: float, std: float) -> str:
            return format_pct(mean, std if self.repeats > 1 else None, digits)

        rows = [
            {"stage": "clean", "accuracy (%)": pct(self.clean_acc, self.clean_std),
             "attack success on seen (%)": "-", "seen": "-"}
        ]
        for label, s in self.per_attack.items():
            rate = "-" if math.isnan(s.success_rate) else format_pct(s.success_rate, None, digits)
            rows.append({"stage": f"after {label}", "accuracy (%)": pct(s.robust_acc, s.robust_std),
                         "attack success on seen (%)": rate, "seen": str(s.seen)})
        rows.append({"stage": "worst case", "accuracy (%)": pct(self.robust_acc, self.robust_std),
                     "attack success on seen (%)": "-", "seen": "-"})
        return rows

    def markdown(self, digits: int = 2) -> str:
        """A Markdown report block: a one-line header and the :meth:`table_rows` table."""
        from ..core.markdown import markdown_table

        head = (
            f"**{self.model_name or 'model'}** on {self.dataset} (n={self.n}), battery "
            f"`{self.battery}`, seed {self.seed}, repeats {self.repeats}, ensemble "
            f"{self.ensemble}, {self.seconds:.1f} s\n\n"
        )
        if self.config.get("stochastic"):
            head += (f"The model is randomized ({self.randomness}): per image, the figure is the "
                     f"probability that a draw (mean softmax over "
                     f"{self.config.get('prediction_draws', 1)} forward(s)) classifies the worst "
                     f"point found correctly, estimated on {self.config.get('verdict_draws', 1)} "
                     f"fresh draws after the point was chosen.\n\n")
        elif self.randomness == "frozen":
            head += "The model was frozen: it was evaluated as one fixed inference path.\n\n"
        rows = self.table_rows(digits)
        text = head + markdown_table(rows, list(rows[0].keys()))
        if self.warnings:
            text += "\n**Warnings**\n\n" + "".join(f"- {w}\n" for w in self.warnings)
        return text
