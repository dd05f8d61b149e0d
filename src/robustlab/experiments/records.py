"""Typed per-image records: what every study column writes, and everything a report reads.

A study never re-runs an evaluation to draw a table: each (variant, seed, column) evaluation is
stored once as a :class:`Record` with its per-image outcomes, and every table cell, worst case,
paired comparison and claim is computed from those records (:mod:`.stats`, :mod:`.claims`).
Accuracies and errors never share a field: a corruption record carries ``error`` (the mean
corruption error) and leaves ``accuracy`` empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError

__all__ = ["KINDS", "Lookup", "Record", "RecordStore", "WorstOf", "slugify"]

RecordKind = Literal["clean", "attack", "corruption", "agreement"]
KINDS: tuple[str, ...] = ("clean", "attack", "corruption", "agreement")


def slugify(label: str) -> str:
    """A folder name for a label: lower case, runs of other characters as one ``-``."""
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")


@dataclass(frozen=True)
class Record:
    """One column evaluated on one (variant, seed).

    Attributes:
        variant: the variant's label.
        seed: the seed of the variant (and of the evaluation's draws).
        column: the column's name in the study.
        kind: ``clean`` (accuracy on clean images), ``attack`` (robust accuracy; counts toward
            the per-sample worst case), ``corruption`` (mean corruption error) or ``agreement``
            (the fraction of images whose prediction an attack left unchanged, right or wrong:
            the anti-perturbation ratio of feature-map-strides Table II).
        per_image: per test image, the outcome on the good side: 1 correct (clean) or robust
            (attack) or unchanged (agreement), 0 not (for a randomized model, the probability
            that a draw is on the good side, estimated on fresh draws); for a corruption record the fraction of the
            image's corrupted versions classified right. Empty when the column does not apply.
        accuracy: the mean of ``per_image`` (clean and attack records).
        error: the mean corruption error (corruption records only).
        agreement: the mean of ``per_image`` (agreement records only).
        clean_per_image: attack records: per attacked image, the probability that a draw
            classifies the clean image correctly (1/0 on a deterministic model).
        per_image_select: attack records of a randomized model: per image, the estimate that
            chose the image's point (:mod:`robustlab.attacks.verdict`); a worst case over
            columns picks each image's column by it and reports that column's ``per_image``,
            estimated on other draws, so the choice does not bias the figure. Empty: the same
            as ``per_image``.
        per_attack: attack records: robust accuracy after each attack of the battery (cumulative).
        not_applicable: why the column was not run on this model (``per_image`` is then empty).
        same_as: the column whose record this one repeats (e.g. EOT on a deterministic model).
        images: how many test images ``per_image`` covers.
        indices_sha256: which test images (the battery's hash of their indices), when known.
        stochastic: whether the model was randomized.
        randomness: how the evaluation established that (attack records).
        warnings: the evaluation's sanity-check warnings (``{"code", "message"}``).
        settings: the column's settings, as run.
        seconds: wall time of the evaluation.
    """

    variant: str
    seed: int
    column: str
    kind: RecordKind
    per_image: tuple[float, ...] = ()
    accuracy: float | None = None
    error: float | None = None
    agreement: float | None = None
    clean_per_image: tuple[float, ...] = ()
    per_image_select: tuple[float, ...] = ()
    per_attack: Mapping[str, float] = field(default_factory=dict)
    not_applicable: str | None = None
    same_as: str | None = None
    images: int = 0
    indices_sha256: str = ""
    stochastic: bool = False
    randomness: str = ""
    warnings: tuple[Mapping[str, str], ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"record kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        headline = {"corruption": "error", "agreement": "agreement"}.get(self.kind, "accuracy")
        for name in ("accuracy", "error", "agreement"):
            if name != headline and getattr(self, name) is not None:
                raise InputError(f"a {self.kind} record states its {headline}, not an {name}")
        for name in ("clean_per_image", "per_image_select"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.per_image):
                raise InputError(f"{name} and per_image must cover the same images")

    @property
    def applies(self) -> bool:
        """Whether the column ran on this model (it holds per-image outcomes)."""
        return self.not_applicable is None and bool(self.per_image)

    @property
    def value(self) -> float | None:
        """The record's headline number: accuracy, error (corruption) or agreement."""
        return {"corruption": self.error, "agreement": self.agreement}.get(self.kind, self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["per_attack"] = dict(self.per_attack)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        """Read a record written by :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        extra = set(d) - names
        if extra:
            raise InputError(f"record has unknown fields {sorted(extra)}; was it written by another version?")
        kw = dict(d)
        for key in ("per_image", "clean_per_image", "per_image_select"):
            kw[key] = tuple(float(v) for v in kw.get(key, ()))
        kw["warnings"] = tuple(dict(w) for w in kw.get("warnings", ()))
        return cls(**kw)

    @classmethod
    def of_outcomes(cls, variant: str, seed: int, column: str, kind: RecordKind,
                    per_image: Sequence[float], **kw: Any) -> Record:
        """A record whose headline number is the mean of ``per_image``."""
        values = tuple(float(v) for v in per_image)
        mean = sum(values) / len(values) if values else None
        if kind == "corruption":
            return cls(variant, seed, column, kind, per_image=values, images=len(values),
                       error=None if mean is None else 1.0 - mean, **kw)
        if kind == "agreement":
            return cls(variant, seed, column, kind, per_image=values, images=len(values), agreement=mean, **kw)
        return cls(variant, seed, column, kind, per_image=values, images=len(values), accuracy=mean, **kw)


Lookup = Callable[[str, int, str], "Record | None"]
"""``(variant, seed, column) -> Record | None``: how tables and claims read records."""
WorstOf = Callable[[str, int], "list[float] | None"]
"""``(variant, seed) -> per-image worst case | None`` (``None`` until every attack is done)."""


class RecordStore:
    """The records of one run folder: ``records/<variant>/seed<k>/<column>.json``, one file each,
    written atomically so a killed run leaves whole records only."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache: dict[tuple[str, int, str], Record] = {}
        self._loaded = False

    def _path(self, variant: str, seed: int, column: str) -> Path:
        return self.root / slugify(variant) / f"seed{seed}" / f"{slugify(column)}.json"

    def _load_all(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for path in sorted(self.root.glob("*/seed*/*.json")):
            try:
                rec = Record.from_dict(json.loads(path.read_text()))
            except (ValueError, TypeError, InputError) as e:
                raise InputError(f"unreadable study record {path}: {e}; delete it to recompute it") from e
            self._cache[(rec.variant, rec.seed, rec.column)] = rec

    def put(self, record: Record) -> None:
        """Store ``record`` (replacing an earlier one of the same variant, seed and column)."""
        self._load_all()
        path = self._path(record.variant, record.seed, record.column)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record.to_dict(), separators=(",", ":")))
        self._cache[(record.variant, record.seed, record.column)] = record

    def get(self, variant: str, seed: int, column: str) -> Record | None:
        """The record, or ``None`` when it is not computed yet."""
        self._load_all()
        return self._cache.get((variant, seed, column))

    def has(self, variant: str, seed: int, column: str) -> bool:
        """Whether the record exists."""
        return self.get(variant, seed, column) is not None

    def of(self, variant: str, seed: int) -> list[Record]:
        """Every record of (variant, seed)."""
        self._load_all()
        return [r for (v, s, _), r in self._cache.items() if v == variant and s == seed]

    def __iter__(self) -> Iterator[Record]:
        self._load_all()
        return iter(list(self._cache.values()))
