"""The results ledger: every evaluation is one row of an SQLite file (standard library only).

A run directory keeps one ledger (``runs/<name>/ledger.sqlite``; the CLI's default is
``runs/ledger.sqlite``) and may also write to a global one (:func:`record` adds a result to
several). A row holds everything needed to read, compare and reproduce a number: the model's
weight hash and recipe, the dataset and the exact sample indices, the seed, the battery and the
configuration of every attack, clean, per-attack and worst-case robust accuracy (mean and std
over repeats), repeats, ensemble size, wall time, library and torch versions, a timestamp, and
the per-sample masks (a zlib-compressed safetensors blob; nothing is pickled).

Writes run in ``BEGIN IMMEDIATE`` transactions on a fresh connection with a busy timeout, so
several processes can append to one ledger.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sqlite3
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

from ..core.errors import InputError, RobustlabError
from .result import (
    AttackSummary,
    EvalResult,
    battery_threat,
    encode_mask,
    format_eps,
    indices_hash,
    robust_measure,
)

__all__ = ["CSV_COLUMNS", "LeaderboardGroup", "Ledger", "LedgerRow", "leaderboard_groups", "record"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    model_name TEXT NOT NULL,
    recipe TEXT NOT NULL,
    dataset TEXT NOT NULL,
    n INTEGER NOT NULL,
    indices TEXT NOT NULL,
    seed INTEGER NOT NULL,
    battery TEXT NOT NULL,
    attacks TEXT NOT NULL,
    clean_acc REAL NOT NULL,
    clean_std REAL NOT NULL,
    robust_acc REAL NOT NULL,
    robust_std REAL NOT NULL,
    per_attack TEXT NOT NULL,
    repeats INTEGER NOT NULL,
    ensemble INTEGER NOT NULL,
    seconds REAL NOT NULL,
    robustlab_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    config TEXT NOT NULL,
    extra TEXT NOT NULL,
    masks BLOB
);
CREATE INDEX IF NOT EXISTS evaluations_model ON evaluations (model_hash);
CREATE INDEX IF NOT EXISTS evaluations_dataset ON evaluations (dataset, battery);
"""

_JSON_FIELDS = ("recipe", "indices", "attacks", "per_attack", "config", "extra")

CSV_COLUMNS = (
    "id", "created_at", "model_name", "model_hash", "dataset", "n", "seed", "battery",
    "clean_acc", "clean_std", "robust_acc", "robust_std", "repeats", "ensemble", "seconds",
    "robustlab_version", "torch_version", "per_attack", "attacks", "recipe", "indices",
    "config", "extra",
)
"""Columns of :meth:`Ledger.to_csv`, in order (JSON fields are JSON strings; no masks)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _pack_masks(masks: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu", torch.bool).contiguous() for k, v in masks.items()}
    return zlib.compress(save(tensors), level=6)


def _unpack_masks(blob: bytes | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not blob:
        return {}
    try:
        return dict(load(zlib.decompress(blob)))
    except Exception as e:  # zlib.error or a safetensors error: the row is damaged
        raise RobustlabError(f"a ledger row's masks are damaged ({e})") from None


@dataclass(frozen=True)
class LedgerRow:
    """One evaluation as stored in a :class:`Ledger` (JSON fields decoded).

    Attributes mirror :class:`~robustlab.evaluate.EvalResult` plus ``id``, ``created_at``
    (UTC, ISO 8601), ``battery`` (its name), ``attacks`` (every attack's configuration, in
    order), ``robustlab_version``, ``torch_version`` and ``extra`` (what the caller added).
    ``masks`` is filled only when asked for (``Ledger.rows(masks=True)``): ``clean``,
    ``robust``, ``success/<label>``, ``seen/<label>``, each ``(repeats, n)`` bool.
    """

    id: int
    created_at: str
    model_hash: str
    model_name: str
    recipe: dict[str, Any]
    dataset: str
    n: int
    indices: list[int]
    seed: int
    battery: str
    attacks: list[dict[str, Any]]
    clean_acc: float
    clean_std: float
    robust_acc: float
    robust_std: float
    per_attack: dict[str, dict[str, Any]]
    repeats: int
    ensemble: int
    seconds: float
    robustlab_version: str
    torch_version: str
    config: dict[str, Any]
    extra: dict[str, Any]
    masks: dict[str, torch.Tensor] | None = field(default=None, compare=False)

    def to_dict(self, masks: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; with ``masks`` (and masks loaded) as ``'0'``/``'1'`` strings."""
        d = {c: getattr(self, c) for c in CSV_COLUMNS}
        if masks and self.masks is not None:
            d["masks"] = {k: encode_mask(v) for k, v in self.masks.items()}
        return d

    @property
    def indices_sha256(self) -> str:
        """SHA-256 of the evaluated samples' indices (recorded in ``config``; recomputed from
        ``indices`` for rows written before it was)."""
        return str(self.config.get("indices_sha256") or indices_hash(self.indices))

    def summary(self) -> dict[str, Any]:
        """The leaderboard columns of this row.

        ``id``, ``model``, ``hash`` (12 characters of the weight hash), ``dataset``,
        ``battery`` (its name, in full), ``attacks`` (every attack label, in order),
        ``measure`` (what ``robust`` is: ``worst case over k attacks`` for a battery of
        several, ``robust under <attack>`` for a single attack), ``norm`` and ``eps`` of the
        threat model (``None`` when the battery's attacks differ), ``eps_text``
        (:func:`format_eps`), ``n``, ``samples`` (12 characters of the indices' SHA-256, which
        tells apart two rows of the same ``n`` on other images), ``seed``, ``clean``,
        ``clean_std``, ``robust``, ``robust_std``, ``repeats``, ``ensemble``, ``randomness``
        (``protocol``, ``detected``, ``none``), ``warnings`` (the sanity checks' codes),
        ``seconds``, ``created_at``.
        """
        threat = battery_threat(self.config)
        return {
            "id": self.id,
            "model": self.model_name,
            "hash": self.model_hash[:12],
            "dataset": self.dataset,
            "battery": self.battery,
            "attacks": ", ".join(str(a.get("label", a.get("name", "?"))) for a in self.attacks),
            "measure": robust_measure(self.config),
            "norm": threat.get("norm") if threat else None,
            "eps": threat.get("eps") if threat else None,
            "eps_text": format_eps(float(threat["eps"])) if threat and "eps" in threat else "mixed",
            "n": self.n,
            "samples": self.indices_sha256[:12],
            "seed": self.seed,
            "clean": self.clean_acc,
            "clean_std": self.clean_std,
            "robust": self.robust_acc,
            "robust_std": self.robust_std,
            "repeats": self.repeats,
            "ensemble": self.ensemble,
            "randomness": str(self.config.get("randomness", "protocol" if self.config.get("stochastic") else "none")),
            "warnings": ",".join(sorted({str(w.get("code")) for w in self.config.get("warnings", [])})),
            "seconds": self.seconds,
            "created_at": self.created_at,
        }

    def to_result(self) -> EvalResult:
        """Rebuild the :class:`~robustlab.evaluate.EvalResult` this row was made from."""
        per_attack = {k: AttackSummary.from_dict(v) for k, v in self.per_attack.items()}
        m = self.masks or {}
        empty = torch.zeros(0, 0, dtype=torch.bool)
        return EvalResult(
            clean_acc=self.clean_acc,
            clean_std=self.clean_std,
            robust_acc=self.robust_acc,
            robust_std=self.robust_std,
            per_attack=per_attack,
            n=self.n,
            indices=list(self.indices),
            seconds=self.seconds,
            config=dict(self.config),
            clean_correct=m.get("clean", empty),
            robust=m.get("robust", empty),
            success={k: m.get(f"success/{k}", empty) for k in per_attack},
            seen={k: m.get(f"seen/{k}", empty) for k in per_attack},
            clean_accs=list(self.extra.get("_clean_accs", [])),
            robust_accs=list(self.extra.get("_robust_accs", [])),
            model_hash=self.model_hash,
            model_name=self.model_name,
            recipe=dict(self.recipe),
            dataset=self.dataset,
            versions={
                "robustlab": self.robustlab_version,
                "torch": self.torch_version,
                **({"python": self.extra["_python"]} if "_python" in self.extra else {}),
            },
        )


class Ledger:
    """An SQLite file of evaluation rows.

    Args:
        path: the ``.sqlite`` file; created (with its folder) on first use.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise InputError(f"ledger path {self.path} is a folder; pass a file such as ledger.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                raise RobustlabError(
                    f"ledger {self.path} has schema version {row[0]}, newer than this robustlab "
                    f"understands ({SCHEMA_VERSION}); upgrade robustlab"
                )
            con.execute("COMMIT")

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        except sqlite3.Error as e:
            raise RobustlabError(f"cannot open ledger {self.path}: {e}") from None
        try:
            yield con
        except sqlite3.DatabaseError as e:
            raise RobustlabError(f"ledger {self.path} is not a usable SQLite file: {e}") from None
        finally:
            con.close()

    def add(self, result: EvalResult, *, extra: Mapping[str, Any] | None = None) -> int:
        """Append ``result`` as a new row (one transaction) and return its id.

        Args:
            result: the evaluation.
            extra: JSON-ready fields of the caller's (run name, checkpoint path, ...).
        """
        if not isinstance(result, EvalResult):
            raise InputError(f"Ledger.add takes an EvalResult, got {type(result).__name__}")
        extra_d = dict(extra or {})
        extra_d["_clean_accs"] = list(result.clean_accs)
        extra_d["_robust_accs"] = list(result.robust_accs)
        if "python" in result.versions:
            extra_d["_python"] = result.versions["python"]
        battery = result.config.get("battery", {})
        attacks = list(battery.get("attacks", [])) if isinstance(battery, Mapping) else []
        masks = result.masks()
        blob = _pack_masks(masks) if all(v.numel() for v in masks.values()) else None
        values = {
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model_hash": result.model_hash,
            "model_name": result.model_name,
            "recipe": _dumps(result.recipe),
            "dataset": result.dataset,
            "n": result.n,
            "indices": _dumps(list(result.indices)),
            "seed": result.seed,
            "battery": result.battery,
            "attacks": _dumps(attacks),
            "clean_acc": result.clean_acc,
            "clean_std": result.clean_std,
            "robust_acc": result.robust_acc,
            "robust_std": result.robust_std,
            "per_attack": _dumps({k: v.to_dict() for k, v in result.per_attack.items()}),
            "repeats": result.repeats,
            "ensemble": result.ensemble,
            "seconds": result.seconds,
            "robustlab_version": result.versions.get("robustlab", ""),
            "torch_version": result.versions.get("torch", ""),
            "config": _dumps(result.config),
            "extra": _dumps(extra_d),
            "masks": blob,
        }
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                cur = con.execute(
                    f"INSERT INTO evaluations ({cols}) VALUES ({marks})", tuple(values.values())
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def rows(
        self,
        *,
        ids: Sequence[int] | None = None,
        model_hash: str | None = None,
        dataset: str | None = None,
        battery: str | None = None,
        masks: bool = False,
    ) -> list[LedgerRow]:
        """Rows matching every given filter, oldest first.

        Args:
            ids: only these row ids.
            model_hash: only this model (a full hash or a prefix).
            dataset: only this dataset.
            battery: only this battery.
            masks: also decode the per-sample masks.
        """
        where: list[str] = []
        args: list[Any] = []
        if ids is not None:
            ids = [int(i) for i in ids]
            if not ids:
                return []
            where.append(f"id IN ({', '.join('?' for _ in ids)})")
            args.extend(ids)
        if model_hash is not None:
            where.append("model_hash LIKE ?")
            args.append(model_hash.replace("%", "").replace("_", "") + "%")
        if dataset is not None:
            where.append("dataset = ?")
            args.append(dataset)
        if battery is not None:
            where.append("battery = ?")
            args.append(battery)
        cols = [c for c in CSV_COLUMNS] + (["masks"] if masks else [])
        sql = f"SELECT {', '.join(cols)} FROM evaluations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        with self._connect() as con:
            fetched = con.execute(sql, args).fetchall()
        out = []
        for raw in fetched:
            rec = dict(zip(cols, raw, strict=True))
            for k in _JSON_FIELDS:
                rec[k] = json.loads(rec[k])
            rec["masks"] = _unpack_masks(rec["masks"]) if masks else None
            out.append(LedgerRow(**rec))
        return out

    def get(self, row_id: int, masks: bool = True) -> LedgerRow:
        """The row with id ``row_id`` (masks decoded by default).

        Raises:
            InputError: if there is no such row.
        """
        found = self.rows(ids=[row_id], masks=masks)
        if not found:
            raise InputError(f"ledger {self.path} has no row {row_id}")
        return found[0]

    def __len__(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    def to_csv(self, dest: str | os.PathLike[str] | IO[str], rows: Sequence[LedgerRow] | None = None) -> None:
        """Write rows (default: all) as CSV with :data:`CSV_COLUMNS` (no masks)."""
        rows = self.rows() if rows is None else rows

        def write(f: IO[str]) -> None:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in rows:
                d = r.to_dict()
                w.writerow([_dumps(d[c]) if c in _JSON_FIELDS else d[c] for c in CSV_COLUMNS])

        if isinstance(dest, (str, os.PathLike)):
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "w", newline="", encoding="utf-8") as f:
                write(f)
        else:
            write(dest)

    def to_json(
        self,
        dest: str | os.PathLike[str] | IO[str] | None = None,
        *,
        rows: Sequence[LedgerRow] | None = None,
        masks: bool = False,
    ) -> str:
        """Rows (default: all) as a JSON list of dicts; also written to ``dest`` when given.

        With ``masks`` each row gets its per-sample masks as ``'0'``/``'1'`` strings.
        """
        if rows is None:
            rows = self.rows(masks=masks)
        elif masks and any(r.masks is None for r in rows):
            rows = self.rows(ids=[r.id for r in rows], masks=True)
        text = json.dumps([r.to_dict(masks=masks) for r in rows], indent=2, sort_keys=True)
        if isinstance(dest, (str, os.PathLike)):
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            Path(dest).write_text(text + "\n", encoding="utf-8")
        elif dest is not None:
            dest.write(text + "\n")
        return text

    def markdown(self, rows: Sequence[LedgerRow] | None = None, digits: int = 2) -> str:
        """A Markdown leaderboard of rows (default: all): one table per :func:`leaderboard_groups`
        group (dataset, threat model, battery), best robust accuracy first within each.

        A single attack is never ranked with batteries under one "worst case" heading: each
        group's robust column says what it measures (``worst case over 4 attacks (%)``,
        ``robust under pgd (%)``). Every row shows n, the samples' hash and the seed.
        """
        from ..core.markdown import format_pct, markdown_table

        rows = self.rows() if rows is None else rows
        blocks = []
        for group in leaderboard_groups(rows):
            table = []
            for r in group.rows:
                s = r.summary()
                multi = r.repeats > 1
                table.append({
                    "id": s["id"], "model": f"{s['model']} ({s['hash']})", "n": s["n"],
                    "samples": s["samples"], "seed": s["seed"], "repeats": s["repeats"],
                    "clean (%)": format_pct(r.clean_acc, r.clean_std if multi else None, digits),
                    f"{group.measure} (%)": format_pct(r.robust_acc, r.robust_std if multi else None, digits),
                    "randomness": s["randomness"], "warnings": s["warnings"] or "-",
                    "time (s)": f"{r.seconds:.1f}",
                })
            blocks.append(f"**{group.title}**\n\n" + markdown_table(table))
        return "\n".join(blocks)


@dataclass(frozen=True)
class LeaderboardGroup:
    """Rows that may be ranked together: same dataset, threat model and battery (attacks).

    Attributes:
        dataset: the dataset's name.
        norm: the threat model's norm (``None`` when the battery's attacks differ).
        eps: its radius (``None`` likewise).
        battery: the battery's name, in full.
        attacks: the battery's attack labels, in order.
        measure: what the robust accuracy is (:func:`~robustlab.evaluate.result.robust_measure`).
        rows: the rows, best robust accuracy first (then oldest first).
    """

    dataset: str
    norm: str | None
    eps: float | None
    battery: str
    attacks: tuple[str, ...]
    measure: str
    rows: tuple[LedgerRow, ...]

    @property
    def title(self) -> str:
        """A one-line heading: ``fashion-mnist, linf eps 0.1, battery `standard` (apgd-ce, ...)``."""
        threat = (f"{self.norm} eps {format_eps(self.eps)}" if self.norm is not None and self.eps is not None
                  else "mixed threat models")
        return (f"{self.dataset}, {threat}, battery `{self.battery}` ({', '.join(self.attacks)}): "
                f"{self.measure}")


def leaderboard_groups(rows: Sequence[LedgerRow]) -> list[LeaderboardGroup]:
    """Split rows into groups that may be ranked together (:class:`LeaderboardGroup`): a
    leaderboard ranks within a group only, so a single attack's robust accuracy never sits in
    one ranking with a battery's worst case, nor L2 with Linf, nor one eps with another.

    Groups come sorted by dataset, battery, norm and eps; rows within a group by robust
    accuracy, best first.
    """
    grouped: dict[tuple[Any, ...], list[LedgerRow]] = {}
    for r in rows:
        threat = battery_threat(r.config) or {}
        attacks = tuple(str(a.get("label", a.get("name", "?"))) for a in r.attacks)
        eps = threat.get("eps")
        key = (r.dataset, r.battery, attacks, threat.get("norm"), None if eps is None else float(eps))
        grouped.setdefault(key, []).append(r)
    out = []
    for key in sorted(grouped, key=lambda k: (k[0], k[1], k[2], str(k[3]), -1.0 if k[4] is None else k[4])):
        dataset, battery, attacks, norm, eps = key
        members = sorted(grouped[key], key=lambda r: (-r.robust_acc, r.id))
        out.append(LeaderboardGroup(dataset, norm, eps, battery, attacks,
                                    robust_measure(members[0].config), tuple(members)))
    return out


def record(result: EvalResult, *ledgers: Ledger | str | os.PathLike[str], **kw: Any) -> list[int]:
    """Add ``result`` to every ledger given (a run's own and, say, a global one); return ids."""
    out = []
    for led in ledgers:
        ledger = led if isinstance(led, Ledger) else Ledger(led)
        out.append(ledger.add(result, **kw))
    return out
