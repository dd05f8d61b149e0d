"""Where dataset files are looked for, and the message that says how to provide them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

ENV_VAR = "ROBUSTLAB_DATA"


def candidate_dirs(
    root: str | os.PathLike[str] | None,
    subdirs: Sequence[str],
    system_dirs: Iterable[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Folders to search, in order.

    An explicit ``root`` is searched alone (``root`` itself, then ``root/<subdir>``): naming a
    folder and silently reading another would make runs irreproducible. Without ``root``:
    ``$ROBUSTLAB_DATA`` (itself, then its subfolders), then ``system_dirs``.
    """
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    else:
        env = os.environ.get(ENV_VAR)
        if env:
            bases.append(Path(env).expanduser())
    out: list[Path] = []
    for base in bases:
        out.append(base)
        out.extend(base / s for s in subdirs)
    if root is None:
        out.extend(Path(d) for d in system_dirs)
    seen: set[Path] = set()
    unique = []
    for d in out:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def file_key(path: Path) -> tuple[str, int, int]:
    """A cache key that changes when the file is replaced: (resolved path, mtime, size)."""
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def looked_in(dirs: Sequence[Path]) -> str:
    """The list of searched folders, for error messages."""
    return (
        ", ".join(str(d) for d in dirs)
        if dirs
        else "(nowhere: no root given and $ROBUSTLAB_DATA unset)"
    )
