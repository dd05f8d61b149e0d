#!/usr/bin/env python3
"""Diff two run folders (``robustlab demo --out A`` vs ``--out B``, or two study folders).

Made for refactors that must not change a number: run the demo (or a study's quick profile) on
the commit before and after, with the same thread count, then::

    python scripts/compare-runs.py runs/demo-before runs/demo-after

What is compared, file by file (a file in only one folder is a difference too):

- every ``records/**/*.json`` (the per-image outcomes of every study column) and every
  ``config.json`` / ``results.json``, as JSON, with timing keys (``seconds``, ``*_seconds``,
  ``elapsed``) dropped and times inside text masked as in reports;
- every ``report.md``, line by line, with wall-clock times masked (``235 s``, the ``seconds`` and
  ``s / epoch`` table columns, ``8.5 vs 8.0 s (107%)``);
- every ``*.safetensors`` under ``models/`` (trained weights): the tensor table and bytes, and
  the metadata with its timing keys (and the content hash over them) dropped.

Evaluation state (``eval-state/``, keyed by behaviour fingerprints) and ledgers are not
compared: their keys may change with the code's structure, their numbers are in the records.

Exit status 0 when nothing differs, 1 otherwise; ``--allow REGEX`` (repeatable) accepts changed
report lines (each removed and each added one) that match it, e.g. verdict prose changed on
purpose, and lists them apart.
The standard library only; no torch needed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

TIME_KEYS = re.compile(r"(^|_)(seconds|elapsed|wall|started|finished|timestamp)($|_)")
TIME_TEXT = re.compile(r"\d+(?:\.\d+)?(?: vs \d+(?:\.\d+)?)? s\b(?: \(\d+%\))?")
TIME_COLUMNS = ("seconds", "s / epoch")


def strip_times(value: Any) -> Any:
    """``value`` with every timing key removed, recursively."""
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items() if not TIME_KEYS.search(str(k))}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    if isinstance(value, str):
        return "\n".join(mask_report(value)) if "\n" in value else TIME_TEXT.sub("<time>", value)
    return value


def mask_report(text: str) -> list[str]:
    """The report's lines with wall-clock times replaced by ``<time>``."""
    lines, timed_columns = [], set()
    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.split("|")
            if set(line.replace("|", "").strip()) <= set("-: "):
                pass  # a table's separator row
            elif any(c.strip() in TIME_COLUMNS for c in cells):
                timed_columns = {i for i, c in enumerate(cells) if c.strip() in TIME_COLUMNS}
            else:
                cells = ["<time>" if i in timed_columns else c for i, c in enumerate(cells)]
                line = "|".join(cells)
        else:
            timed_columns = set()
        lines.append(TIME_TEXT.sub("<time>", line))
    return lines


def unroot(text: str, root: Path) -> str:
    """``text`` with the run folder's own path (as written into configs) replaced by ``<run>``."""
    for form in {str(root), str(root.resolve())}:
        text = text.replace(json.dumps(form)[1:-1], "<run>").replace(form, "<run>")
    return text


def weights(path: Path) -> tuple[Any, bytes]:
    """A safetensors file as ``(header without wall-clock fields, tensor bytes)``."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    meta = {k: json.loads(v) if v[:1] in "{[" else v for k, v in header.pop("__metadata__", {}).items()}
    for value in meta.values():
        if isinstance(value, dict):
            value.pop("content_hash", None)
    return (header, strip_times(meta)), raw[8 + size:]


def files(root: Path) -> dict[str, Path]:
    """Every compared file under ``root``, by its path relative to ``root``."""
    found: dict[str, Path] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or "eval-state/" in rel:
            continue
        if (path.suffix == ".json" and (("records/" in rel) or path.name in ("config.json", "results.json"))) \
                or path.name == "report.md" or (path.suffix == ".safetensors" and "models/" in rel):
            found[rel] = path
    return found


def compare(a: Path, b: Path, allow: list[re.Pattern[str]]) -> tuple[list[str], list[str], int]:
    """``(differences, allowed report lines, files compared)`` between run folders ``a`` and ``b``."""
    left, right = files(a), files(b)
    diffs: list[str] = [f"only in {a}: {rel}" for rel in sorted(left.keys() - right.keys())]
    diffs += [f"only in {b}: {rel}" for rel in sorted(right.keys() - left.keys())]
    allowed: list[str] = []
    for rel in sorted(left.keys() & right.keys()):
        pa, pb = left[rel], right[rel]
        if pa.suffix == ".safetensors":
            if weights(pa) != weights(pb):
                diffs.append(f"weights differ: {rel}")
        elif pa.suffix == ".json":
            ja, jb = (strip_times(json.loads(unroot(p.read_text(), root))) for p, root in ((pa, a), (pb, b)))
            if ja != jb:
                sa, sb = (json.dumps(j, indent=1, sort_keys=True).splitlines() for j in (ja, jb))
                body = [d for d in difflib.unified_diff(sa, sb, lineterm="", n=0) if d[:1] in "+-"][2:12]
                diffs.append(f"records differ: {rel}\n  " + "\n  ".join(body))
        else:
            la, lb = (mask_report(unroot(p.read_text(), root)) for p, root in ((pa, a), (pb, b)))
            changed = [d for d in difflib.unified_diff(la, lb, lineterm="", n=0)
                       if d[:1] in "+-" and not d.startswith(("+++", "---"))]
            kept = [d for d in changed if not any(p.search(d) for p in allow)]
            allowed += [f"{rel}: {d}" for d in changed if d not in kept]
            if kept:
                diffs.append(f"report differs: {rel}\n  " + "\n  ".join(kept[:20]))
    return diffs, allowed, len(left.keys() | right.keys())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--allow", action="append", default=[], metavar="REGEX",
                    help="report lines matching this may differ (listed apart); repeatable")
    args = ap.parse_args(argv)
    for folder in (args.before, args.after):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder; give two run folders (robustlab demo --out DIR)", file=sys.stderr)
            return 2
    diffs, allowed, n = compare(args.before, args.after, [re.compile(p) for p in args.allow])
    for line in allowed:
        print(f"allowed: {line}")
    for d in diffs:
        print(d)
    print(f"{n} files compared: " + ("identical (times masked)" if not diffs else f"{len(diffs)} differ"))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
