"""A pickle reader that can only rebuild plain containers and numpy arrays.

The house rule is that nothing loads pickles from disk, because unpickling runs whatever callable
the file names. CIFAR's official "python version" is a pickle, though, so CIFAR is read with
:func:`load_restricted`, whose ``find_class`` refuses every global except the few numpy needs to
rebuild an array:

- ``numpy.core.multiarray._reconstruct`` (and ``numpy._core...`` since numpy 2) creates an empty
  ``ndarray`` of a given subtype, shape and dtype; ``numpy.ndarray`` and ``numpy.dtype`` are the
  only classes it can be handed; the array's ``__setstate__`` then fills in raw bytes.
- ``numpy.core.numeric._frombuffer`` rebuilds an array from a byte buffer (protocol 5 pickles).
- ``_codecs.encode``, restricted here to latin-1, turns a str into bytes; Python 3 writes bytes
  this way in protocol 2 pickles (CIFAR files re-saved with Python 3).

None of these runs code named by the file, touches the file system or imports a module: the
worst a hostile file can do is allocate memory or fail. Everything else a pickle can name
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, any class with ``__reduce__``) is refused
before it is resolved. Opcodes that need no global (dicts, lists, tuples, str, bytes, ints,
floats) work as usual; persistent ids and the copyreg extension registry go through
``find_class`` too, or are refused by the base class.
"""

from __future__ import annotations

import codecs
import functools
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import DataFormatError


class _Refused(pickle.UnpicklingError):
    """The pickle named a global outside the allow-list."""


_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if encoding.lower().replace("_", "-") not in _LATIN1:
        raise _Refused(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin-1", errors)


@functools.lru_cache(maxsize=1)
def _allowed() -> dict[tuple[str, str], Callable[..., Any] | type]:
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` resolves only numpy's array-rebuilding globals."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global, refuse everything else."""
        obj = _allowed().get((module, name))
        if obj is None:
            raise _Refused(
                f"refused to load global {module}.{name}: only plain data and numpy arrays "
                "are allowed"
            )
        return obj


def load_restricted(path: Path) -> Any:
    """Unpickle ``path`` allowing only plain containers and numpy arrays.

    Strings written by Python 2 are decoded as latin-1 (as torchvision does for CIFAR).

    Raises:
        DataFormatError: the file names a forbidden global (it may be malicious: it is never
            executed) or is not a valid pickle.
    """
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as e:
        raise DataFormatError(
            f"{path} is not a plain CIFAR data file and was not loaded ({e}); robustlab reads "
            "CIFAR pickles with an allow-list that refuses anything but data, because a pickle "
            "can run arbitrary code. Replace the file with the official one"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as e:
        raise DataFormatError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}); replace it with the "
            "official file"
        ) from None
