"""A paper's claims as data, checked against a study's records by one function.

Each :class:`Claim` row says what the paper claims (its words), the paper's own figure and where
it comes from, the comparison that tests it here (two :class:`Side` s: a variant's column, or its
per-sample worst case, compared image by image), the rule with its threshold and the threshold's
source. :func:`check_claims` computes every row from the records and :func:`render_verdict`
writes them as one table: a study's verdict is that table, never bespoke code.

Rules:

- ``higher``: the first side is higher with a 95% interval above 0 (held), below 0 (did not
  hold), or the interval holds 0 (not shown at this sample size); with a ``threshold``, higher
  by more than it (a material gain): the interval above the threshold holds, below it fails, so
  a significant but negligible gain is not taken for the paper's claim;
- ``no-worse-than``: the first side is at most ``threshold`` below the second (for a
  corruption column: its error at most ``threshold`` above), judged on the point estimate,
  the paper's own difference being the yardstick;
- ``describe``: no verdict; the measured difference and its significance, for the numbers
  the paper lacks (EOT against plain PGD, say).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .records import Lookup, WorstOf
from .stats import Paired, multiple_claims_note, paired, seed_average

__all__ = ["WORST", "Claim", "ClaimResult", "Side", "check_claims", "render_verdict"]

WORST = "worst case"  # a Side column naming the per-sample worst case over every attack column

Rule = Literal["higher", "no-worse-than", "describe"]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: ``variant``'s ``column`` (or :data:`WORST`).

    Attributes:
        outcome: ``"value"``: the record's per-image outcome; ``"clean"``: an attack record's
            clean outcome on the same attacked images.
        name: how the verdict names it (default: the variant's label).
    """

    variant: str
    column: str
    outcome: Literal["value", "clean"] = "value"
    name: str = ""

    @property
    def label(self) -> str:
        """The name the verdict uses."""
        return self.name or self.variant


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as a row of data.

    Attributes:
        claim: the paper's words.
        paper: the paper's figure and where it comes from (table, dataset).
        a: the side the claim favours.
        b: the side it is compared with.
        rule: ``higher``, ``no-worse-than`` or ``describe``.
        threshold: the allowed shortfall of ``no-worse-than``, or the least gain ``higher``
            counts (a fraction; 0: any significant gain).
        source: where the threshold comes from.
        needs: columns a conclusion needs; when the study's profile runs none of some, the
            row says ``inconclusive`` instead of a verdict.
        inconclusive: what the row says then.
        words: the verdict's words for held / not shown / did not hold.
    """

    claim: str
    paper: str
    a: Side
    b: Side
    rule: Rule = "higher"
    threshold: float = 0.0
    source: str = ""
    needs: tuple[str, ...] = ()
    inconclusive: str = ""
    words: tuple[str, str, str] = ("held", "not shown at this sample size", "did not hold")


@dataclass(frozen=True)
class ClaimResult:
    """A claim checked: its comparison (``None`` without the records), seeds and verdict."""

    claim: Claim
    comparison: Paired | None
    seeds: int
    error_scale: bool
    verdict: str
    tested: bool




def _outcomes(side: Side, seed: int, get: Lookup, worst_of: WorstOf) -> list[float] | None:
    if side.column == WORST:
        return worst_of(side.variant, seed)
    rec = get(side.variant, seed, side.column)
    if rec is None or not rec.applies:
        return None
    return list(rec.clean_per_image if side.outcome == "clean" else rec.per_image) or None


def check_claims(claims: Sequence[Claim], seeds: Sequence[int], get: Lookup, worst_of: WorstOf,
                 planned: Callable[[str], bool], kind_of: Callable[[str], str | None] | None = None,
                 ) -> list[ClaimResult]:
    """Check every claim on the seeds where both sides have records (each image's outcome averaged
    over those seeds, then compared image by image).

    Args:
        get: ``(variant, seed, column) -> Record | None``.
        worst_of: ``(variant, seed) -> per-image worst case | None`` (``None`` until complete).
        planned: whether the study's profile runs a column (for :attr:`Claim.needs`).
        kind_of: the record kind a column writes (``corruption`` rows are stated as errors even
            before their records exist); by default read from the records.
    """
    results = []
    for c in claims:
        pairs = [(a, b) for a, b in ((_outcomes(c.a, s, get, worst_of), _outcomes(c.b, s, get, worst_of))
                                     for s in seeds) if a is not None and b is not None and len(a) == len(b)]
        kinds: set[str] = {r.kind for r in (get(c.a.variant, s, c.a.column) for s in seeds) if r is not None}
        if kind_of is not None:
            kinds.add(kind_of(c.a.column) or "")
        error_scale = "corruption" in kinds and c.a.outcome == "value"
        if not pairs:
            results.append(ClaimResult(c, None, 0, error_scale, "no records yet", False))
            continue
        p = paired(seed_average([a for a, _ in pairs]), seed_average([b for _, b in pairs]))
        held, unclear, failed = c.words
        if c.rule == "describe":
            verdict = p.outcome if p.outcome.startswith("no ") else f"significantly {p.outcome}"
        elif c.rule == "no-worse-than":
            verdict = held if p.diff >= -c.threshold else failed
        else:  # higher, by more than the threshold
            verdict = held if p.low > c.threshold else failed if p.high < c.threshold else unclear
        missing = [n for n in c.needs if not planned(n)]
        if missing and c.rule != "describe":
            verdict = f"{c.inconclusive}; this profile runs no {' or '.join(missing)}"
        tested = c.rule in ("higher", "describe") and not (missing and c.rule != "describe")
        results.append(ClaimResult(c, p, len(pairs), error_scale, verdict, tested))
    return results


def _measured(r: ClaimResult) -> str:
    p = r.comparison
    if p is None:
        return "—"
    c = r.claim
    if r.error_scale:  # a corruption column: state errors and the rise in error
        nums = f"{c.a.label} {100 * (1 - p.a):.2f}% vs {c.b.label} {100 * (1 - p.b):.2f}% error"
        diff = p.text(sign=-1.0)
    else:
        nums = f"{c.a.label} {100 * p.a:.2f}% vs {c.b.label} {100 * p.b:.2f}%"
        diff = p.text()
    return f"{nums} ({diff}; {r.seeds} seed{'s' if r.seeds != 1 else ''}, {p.n} images)"


def _rule(c: Claim, error_scale: bool) -> str:
    if c.rule == "higher" and c.threshold:
        what = "error lower by more than" if error_scale else "higher by more than"
        return f"{what} {100 * c.threshold:.1f} pp, 95% CI beyond it" + (f" ({c.source})" if c.source else "")
    if c.rule == "higher":
        return "lower error, 95% CI below 0" if error_scale else "higher, 95% CI above 0"
    if c.rule == "describe":
        return "reported, no claim"
    what = "error rise at most" if error_scale else "drop at most"
    return f"{what} {100 * c.threshold:.1f} pp ({c.source})" if c.source else f"{what} {100 * c.threshold:.1f} pp"


def render_verdict(results: Sequence[ClaimResult]) -> str:
    """The verdict: one Markdown table row per claim, then the note on testing many at once."""
    from ..core.markdown import markdown_table

    rows = [{"claim": r.claim.claim, "paper": r.claim.paper,
             "comparison": f"{_side_text(r.claim.a)} vs {_side_text(r.claim.b)}",
             "rule": _rule(r.claim, r.error_scale), "measured here": _measured(r),
             "verdict": f"**{r.verdict}**" if r.claim.rule != "describe" else r.verdict} for r in results]
    if not rows:
        return "No claims to check.\n"
    tested = [(r.claim.claim, r.comparison) for r in results if r.tested and r.comparison is not None]
    note = multiple_claims_note([(name, p) for name, p in tested if p is not None])
    return markdown_table(rows) + ("\n" + note + "\n" if note else "")


def _side_text(side: Side) -> str:
    col = "per-sample worst case" if side.column == WORST else side.column
    return f"{side.label} `{col}`" + (" (clean, same images)" if side.outcome == "clean" else "")
