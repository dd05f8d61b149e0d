"""Safe checkpoint files: tensors in safetensors, everything else in a JSON header.

Nothing here unpickles. A checkpoint is one ``.safetensors`` file whose metadata holds a JSON
header (format version, model recipe, dataset, training config, metrics, versions) and a SHA-256
content hash over the tensors and the header, checked on every read.

One reader serves every file: :func:`open_checkpoint` refuses pickles (:func:`refuse_pickle`,
the one guard), parses the safetensors header once into a :class:`CheckpointFile` (robustlab
header, tensor table, checked against the file's size) and reads the tensors only when asked
(:meth:`CheckpointFile.read_tensors`, which verifies the hash), so a caller can check the table
before anything is allocated. :func:`read_checkpoint`, :func:`read_header` and
:func:`load_weights` (bare ``state_dict`` files) are short uses of it.

What the hash guarantees: it detects accidental damage (a truncated copy, a flipped bit, a file
edited by a tool that does not know about the hash). It does not detect deliberate tampering:
anyone who can edit the file can recompute a plain SHA-256. For authenticity, set the
environment variable ``ROBUSTLAB_CHECKPOINT_KEY``: every write then also stores an HMAC-SHA256
of the same content under that key, and every read requires a valid tag (RFC 2104; the tag
can only be made by someone who holds the key).

Writes go to a temporary file in the same folder, created with the user's umask, which is
fsynced, renamed into place and followed by an fsync of the folder, so a write that dies
halfway (even by ``kill -9`` or a power cut after the rename) leaves the previous checkpoint
intact under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import math
import os
import platform
import secrets
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import torch
from torch import nn

from .checks import is_int
from .errors import CheckpointError

FORMAT = "robustlab-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "robustlab"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar", ".bin"})
"""File suffixes of pickle-based torch files, refused by name before a byte is read."""
_MAX_HEADER = 100 * 1024 * 1024
KEY_ENV = "ROBUSTLAB_CHECKPOINT_KEY"
"""Environment variable holding the HMAC key; unset or empty means no authenticity check."""
HMAC_FIELD = "hmac_sha256"
_UNHASHED_FIELDS = ("content_hash", HMAC_FIELD)


def _versions() -> dict[str, str]:
    try:
        from importlib.metadata import PackageNotFoundError, version

        ours = version("robustlab")
    except PackageNotFoundError:  # running from a source tree without installing
        ours = "unknown"
    return {"robustlab": ours, "torch": torch.__version__, "python": platform.python_version()}


def checkpoint_key() -> bytes | None:
    """The HMAC key from ``ROBUSTLAB_CHECKPOINT_KEY`` (UTF-8), or None when unset or empty."""
    value = os.environ.get(KEY_ENV, "")
    return value.encode() if value else None


def update_tensor_hash(h: Any, t: torch.Tensor) -> None:
    """Feed ``t``'s dtype, shape and raw bytes to the hash object ``h`` (``hashlib`` style)."""
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _digest(hashes: list[Any], tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Feed every tensor (name, dtype, shape, bytes) and the canonical JSON header, without its
    hash and HMAC fields, to each hash object in ``hashes``."""
    body = {k: v for k, v in header.items() if k not in _UNHASHED_FIELDS}
    for h in hashes:
        for key in sorted(tensors):
            h.update(key.encode())
            update_tensor_hash(h, tensors[key])
        h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def content_hash(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and the canonical JSON header.

    A checksum against accidental damage, not a signature: see :func:`content_hmac`.
    """
    h = hashlib.sha256()
    _digest([h], tensors, header)
    return h.hexdigest()


def content_hmac(tensors: dict[str, torch.Tensor], header: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 under ``key`` over the same content as :func:`content_hash`."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    _digest([h], tensors, header)
    return h.hexdigest()


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state (optimizer, scheduler, RNG) into ``tensors``.

    Returns a JSON-ready tree where each tensor is replaced by ``{"__tensor__": key}``; dict
    keys are kept with their type so ``unflatten_state`` rebuilds the exact structure.
    """
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"cannot store state key {k!r} of type {type(k).__name__}")
            items.append([k, flatten_state(v, f"{prefix}.{k}", tensors)])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        seq = [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": seq} if isinstance(obj, tuple) else seq
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and obj != obj:
            return {"__float__": "nan"}
        if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
            return {"__float__": "inf" if obj > 0 else "-inf"}
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint at {prefix!r}")


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            key = tree["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {key!r}")
            return tensors[key]
        if "__dict__" in tree:
            return {k: unflatten_state(v, tensors) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
        if "__float__" in tree:
            return float(tree["__float__"])
        raise CheckpointError(f"unexpected entry in checkpoint state: {sorted(tree)}")
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


# ------------------------------------------------------------------------------------ writing


def write_checkpoint(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``header`` atomically to ``path`` (a ``.safetensors`` file).

    The header gains ``format``, ``format_version``, ``versions`` and ``content_hash``, and
    ``hmac_sha256`` when ``ROBUSTLAB_CHECKPOINT_KEY`` is set. The file gets the permissions of
    any new file of the user (``0o666`` less the umask).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint paths end in .safetensors, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(), **header}
    for name in _UNHASHED_FIELDS:
        full.pop(name, None)
    sha = hashlib.sha256()
    key = checkpoint_key()
    tag = hmac.new(key, digestmod=hashlib.sha256) if key else None
    _digest([sha] if tag is None else [sha, tag], tensors, full)
    full["content_hash"] = sha.hexdigest()
    if tag is not None:
        full[HMAC_FIELD] = tag.hexdigest()
    meta = {_META_KEY: json.dumps(full, sort_keys=True)}
    with _replacing(path) as (tmp, mode):
        save_file(tensors, tmp, metadata=meta)
        # safetensors may replace the file we created by its own (mode 0600); restore ours
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` by ``text`` atomically, as :func:`write_checkpoint` writes: a reader, or
    a crash, sees the old file or the new one whole, never a torn one.

    The text goes to a temporary file beside ``path`` created with the user's umask, is
    fsynced, renamed over ``path`` and the folder fsynced, so the rename survives a power cut.
    """
    path = Path(path)
    with _replacing(path) as (tmp, _), open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[tuple[Path, int]]:
    """Yield a new temporary file beside ``path`` and its permission bits; when the block ends,
    rename it over ``path`` and fsync the folder. If the block fails, the temporary file is
    removed and ``path`` is untouched."""
    tmp, mode = _new_temp_file(path)
    try:
        yield tmp, mode
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temp_file(path: Path) -> tuple[Path, int]:
    """Create an empty, uniquely named file beside ``path``; return it and its permission bits.

    The file is created with mode ``0o666`` so the kernel applies the user's umask (and any
    default ACL of the folder), as for any file the user creates; ``tempfile.mkstemp`` would
    force ``0o600``.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            mode = os.fstat(fd).st_mode & 0o7777
        finally:
            os.close(fd)
        return tmp, mode
    raise CheckpointError(f"could not create a temporary file beside {path}")  # pragma: no cover


def _fsync_folder(folder: Path) -> None:
    """Flush the folder entry of a rename to disk, so the new name survives a power cut."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals the rename
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync folders
            raise
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ reading

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors dtype names and the torch dtypes they hold."""
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of ``dtype`` (``torch.float32`` -> ``"F32"``), as
    :attr:`TensorSpec.dtype` gives it; other dtypes get their torch name."""
    return _DTYPE_NAMES.get(dtype, str(dtype))


class TensorSpec(NamedTuple):
    """A stored tensor as the file's tensor table describes it."""

    dtype: str
    """safetensors dtype name, e.g. ``"F32"``."""
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of data the tensor takes in the file."""
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class CheckpointFile:
    """A safetensors file opened by :func:`open_checkpoint`: its parsed, checked header.

    Attributes:
        path: the file.
        header: the robustlab header (recipe, metrics, content hash, ...), or ``None`` for a
            bare safetensors file (a plain ``state_dict``).
        specs: every stored tensor's dtype and shape, in file order; the table is checked
            against the file's size, so :meth:`read_tensors` reads exactly these.
        size: the file's size in bytes.
    """

    path: Path
    header: dict[str, Any] | None
    specs: Mapping[str, TensorSpec]
    size: int
    _head: bytes = field(repr=False)
    """The length prefix and JSON header exactly as read, to notice a file replaced since."""

    def require_header(self) -> dict[str, Any]:
        """The robustlab header.

        Raises:
            CheckpointError: for a bare safetensors file.
        """
        if self.header is None:
            raise CheckpointError(
                f"{self.path} is a safetensors file but not a robustlab checkpoint (no robustlab "
                "header); load bare weights with robustlab.checkpoints.load_weights(model, path)"
            )
        return self.header

    def stored_values(self) -> int:
        """The number of values the file stores, over all tensors."""
        return sum(math.prod(spec.shape) for spec in self.specs.values())

    def read_tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Read every tensor (in file order) and, for a robustlab checkpoint, verify them.

        The SHA-256 content hash is always checked: it catches accidental damage, not an edit
        by someone who recomputes it. When ``ROBUSTLAB_CHECKPOINT_KEY`` is set, the HMAC-SHA256
        tag under that key is checked too, which only a holder of the key can produce.

        Raises:
            CheckpointError: when the file changed since it was opened, or fails its hash or
                HMAC check.
        """
        tensors: dict[str, torch.Tensor] = {}
        with open(self.path, "rb") as f:
            if f.read(len(self._head)) != self._head or os.fstat(f.fileno()).st_size != self.size:
                raise CheckpointError(f"{self.path} changed while it was being read; load it again")
            for name, spec in self.specs.items():
                raw = torch.empty(spec.nbytes, dtype=torch.uint8)
                read = f.readinto(raw.numpy()) if spec.nbytes else 0  # type: ignore[arg-type]
                if read != spec.nbytes:
                    raise CheckpointError(f"{self.path} changed while it was being read; load it again")
                tensors[name] = raw.view(_DTYPES[spec.dtype]).reshape(spec.shape)
        if self.header is not None:
            _verify(self.path, tensors, self.header)
        if torch.device(device).type != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return tensors


def open_checkpoint(path: str | os.PathLike[str]) -> CheckpointFile:
    """Open a safetensors file (a robustlab checkpoint or a bare ``state_dict``) without reading
    its tensors: refuse pickles, parse and check the header once.

    With ``ROBUSTLAB_CHECKPOINT_KEY`` set, a robustlab checkpoint without an HMAC tag is refused
    here, before any work on an unauthenticated file.

    Raises:
        CheckpointError: for a missing path or a folder, pickle-based torch files (by suffix or
            content; nothing is unpickled), truncated or corrupted files, unknown formats, and
            (with the key set) a missing HMAC tag, each with a message that says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the .safetensors file inside it")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = f.read(9)
        _refuse_pickle(path, start)
        if len(start) < 9:
            raise _unreadable(path, f"{size} bytes")
        (n,) = struct.unpack("<Q", start[:8])
        if not 0 < n <= _MAX_HEADER or 8 + n > size:
            raise _unreadable(path, f"header length {n} for a {size}-byte file")
        blob = start[8:] + f.read(n - 1)
    try:
        raw = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raw = None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} has a corrupted header; restore it or retrain")
    header = _robustlab_header(path, raw.pop("__metadata__", {}))
    if header is not None and checkpoint_key() is not None:
        _require_hmac_tag(path, header)
    specs = _tensor_table(path, raw, size - 8 - n)
    return CheckpointFile(path, header, specs, size, start[:8] + blob)


def read_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a robustlab checkpoint; return ``(tensors, header)``.

    See :meth:`CheckpointFile.read_tensors` for the checks.

    Raises:
        CheckpointError: as :func:`open_checkpoint`, for a bare safetensors file, and for
            content hash or HMAC mismatches.
    """
    checkpoint = open_checkpoint(path)
    header = checkpoint.require_header()
    return checkpoint.read_tensors(device), header


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the robustlab header of a checkpoint (no tensors, no hash check)."""
    return open_checkpoint(path).require_header()


def load_weights(net: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load a safetensors ``state_dict`` file (bare weights, no recipe) into ``net``; return it.

    Names and shapes are compared with the file's tensor table before any tensor is read.

    Args:
        net: the network the weights belong to.
        path: a local ``.safetensors`` file; pickle files (``.pt``, ``.pth``, ...) are refused.
        strict: every key of ``net`` and of the file must match (as ``load_state_dict``).

    Raises:
        CheckpointError: for pickle files, missing or unreadable files, and key or shape
            mismatches (naming the first offending keys).
    """
    checkpoint = open_checkpoint(path)
    specs = checkpoint.specs
    expected = net.state_dict()
    missing = sorted(set(expected) - set(specs))
    unexpected = sorted(set(specs) - set(expected))
    if strict and (missing or unexpected):
        hint = ""
        if any(k.startswith("model.") for k in unexpected) and {"mean", "std"} & set(unexpected):
            hint = (
                "; the file holds a Normalized wrapper's state_dict: save "
                "model.model.state_dict() (the inner network) instead"
            )
        raise CheckpointError(
            f"{path} does not match the network: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}{hint}; full robustlab checkpoints load "
            "with robustlab.load"
        )
    bad = [
        f"{k}: file {specs[k].shape} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in specs and specs[k].shape != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(
            f"{path} has tensors of the wrong shape for this architecture: {'; '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}; check num_classes, in_channels and the options"
        )
    net.load_state_dict(checkpoint.read_tensors(), strict=strict)
    return net


def _refuse_pickle(path: Path, start: bytes) -> None:
    """The one pickle guard: refuse ``path`` by its suffix, or by its first bytes ``start``
    (a pickle's protocol byte or a zip's ``PK``, what ``torch.save`` writes) unless they open a
    safetensors header. Never unpickles."""
    why = f"{path.suffix} suffix" if path.suffix.lower() in PICKLE_SUFFIXES else None
    if why is None and start:
        (n,) = struct.unpack("<Q", start[:8].ljust(8, b"\0"))
        safetensors = len(start) >= 9 and 0 < n <= _MAX_HEADER and start[8:9] == b"{"
        if not safetensors and (start[:2] == b"PK" or start[:1] == b"\x80"):
            why = "pickle/zip torch file content"
    if why is not None:
        raise CheckpointError(
            f"{path} is a pickle-based torch file ({why}), and robustlab never unpickles files "
            "(loading a pickle can run arbitrary code). In a process you trust, re-save the "
            "weights once with safetensors: "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        )


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file ({detail}): it is truncated, corrupted or "
        "of another format; restore it from a good copy or retrain"
    )


def _robustlab_header(path: Path, meta: Any) -> dict[str, Any] | None:
    """The robustlab header in the safetensors metadata ``meta``; ``None`` when it has none."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has a corrupted header; restore it or retrain")
    if _META_KEY not in meta:
        return None
    try:
        header = json.loads(meta[_META_KEY])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupted robustlab header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unknown header format")
    version = header.get("format_version")
    if not is_int(version, high=FORMAT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, newer than this robustlab "
            f"understands ({FORMAT_VERSION}); upgrade robustlab"
        )
    return header


def _is_sizes(value: Any, n: int | None = None) -> TypeGuard[list[int]]:
    return (
        isinstance(value, list)
        and (n is None or len(value) == n)
        and all(is_int(d, 0) for d in value)
    )


def _tensor_table(path: Path, raw: dict[str, Any], data_size: int) -> dict[str, TensorSpec]:
    """Every tensor's spec, in file order, after checking that the entries are well formed and
    their data tiles the ``data_size`` bytes after the header exactly (no gap, no overlap)."""
    entries: list[tuple[int, int, str, TensorSpec]] = []
    for name, entry in raw.items():
        get = entry.get if isinstance(entry, dict) else {}.get
        dtype, shape, offsets = get("dtype"), get("shape"), get("data_offsets")
        if not (isinstance(dtype, str) and dtype in _DTYPES and _is_sizes(shape) and _is_sizes(offsets, 2)):
            raise CheckpointError(f"{path} has a corrupted tensor table (entry {name!r})")
        spec = TensorSpec(dtype, tuple(shape))
        if offsets[1] - offsets[0] != spec.nbytes:
            raise CheckpointError(f"{path} has a corrupted tensor table (entry {name!r})")
        entries.append((offsets[0], offsets[1], name, spec))
    entries.sort(key=lambda e: (e[0], e[1]))
    end = 0
    for begin, stop, name, _ in entries:
        if begin != end:
            raise CheckpointError(f"{path} has a corrupted tensor table (entry {name!r})")
        end = stop
    if end != data_size:
        raise _unreadable(path, f"its tensors take {end} bytes, the file holds {data_size}")
    return {name: spec for _, _, name, spec in entries}


def _require_hmac_tag(path: Path, header: dict[str, Any]) -> None:
    """Refuse a header without an HMAC tag (when ``ROBUSTLAB_CHECKPOINT_KEY`` is set)."""
    if not isinstance(header.get(HMAC_FIELD), str):
        raise CheckpointError(
            f"{path} carries no HMAC tag, but {KEY_ENV} is set, so only checkpoints written "
            "with that key are accepted: it was written without the key (or the tag was "
            f"removed). If you trust the file, load it with {KEY_ENV} unset and save it again "
            "with the key set"
        )


def _verify(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Check the content hash and, with ``ROBUSTLAB_CHECKPOINT_KEY`` set, the HMAC tag."""
    key = checkpoint_key()
    if key is not None:
        _require_hmac_tag(path, header)
    sha = hashlib.sha256()
    tag = hmac.new(key, digestmod=hashlib.sha256) if key else None
    _digest([sha] if tag is None else [sha, tag], tensors, header)
    expected = header.get("content_hash")
    actual = sha.hexdigest()
    if expected != actual:
        raise CheckpointError(
            f"{path} failed its content-hash check (stored {str(expected)[:12]}..., computed "
            f"{actual[:12]}...): the file was damaged or modified after it was written; restore "
            "it from a good copy or retrain"
        )
    if tag is not None and not hmac.compare_digest(str(header[HMAC_FIELD]).encode(), tag.hexdigest().encode()):
        raise CheckpointError(
            f"{path} failed its HMAC check under the key in {KEY_ENV}: it was modified after it "
            "was written, or written with another key; do not trust it. Restore it from a copy "
            "you trust, or set the key it was written with"
        )
