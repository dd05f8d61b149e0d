"""Safe checkpoint files: tensors in safetensors, everything else in a JSON header.

Nothing here unpickles. A checkpoint is one ``.safetensors`` file whose metadata holds a JSON
header (format version, model recipe, dataset, training config, metrics, versions) and a SHA-256
content hash over the tensors and the header, checked on every read.

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

import errno
import hashlib
import hmac
import json
import os
import platform
import secrets
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

FORMAT = "robustlab-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "robustlab"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar"}
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


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path} looks like a pickle-based torch checkpoint ({path.suffix}); robustlab never "
            "unpickles files because loading a pickle can run arbitrary code. In the process "
            "that made the model, save its weights with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors') instead"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= _MAX_HEADER and head[8:9] == b"{":
            return  # a safetensors file: an 8-byte header length, then a JSON header
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a pickle/zip torch file, not a safetensors checkpoint; robustlab never "
            "unpickles files (it can run arbitrary code). Re-save the weights with safetensors"
        )


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
    for field in _UNHASHED_FIELDS:
        full.pop(field, None)
    sha = hashlib.sha256()
    key = checkpoint_key()
    tag = hmac.new(key, digestmod=hashlib.sha256) if key else None
    _digest([sha] if tag is None else [sha, tag], tensors, full)
    full["content_hash"] = sha.hexdigest()
    if tag is not None:
        full[HMAC_FIELD] = tag.hexdigest()
    meta = {_META_KEY: json.dumps(full, sort_keys=True)}
    tmp, mode = _new_temp_file(path)
    try:
        save_file(tensors, tmp, metadata=meta)
        # safetensors may replace the file we created by its own (mode 0600); restore ours
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` by ``text`` atomically, as :func:`write_checkpoint` writes: a reader, or
    a crash, sees the old file or the new one whole, never a torn one.

    The text goes to a temporary file beside ``path`` created with the user's umask, is
    fsynced, renamed over ``path`` and the folder fsynced, so the rename survives a power cut.
    """
    path = Path(path)
    tmp, _ = _new_temp_file(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON header of a checkpoint (no tensors, no hash check)."""
    path = _check_path(path)
    raw = _raw_safetensors_header(path)
    return _parse_meta(path, raw.get("__metadata__", {}))


def read_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; return ``(tensors, header)``.

    The SHA-256 content hash is always checked: it catches accidental damage, not an edit by
    someone who recomputes it. When ``ROBUSTLAB_CHECKPOINT_KEY`` is set, the file must also carry
    a valid HMAC-SHA256 tag under that key, which only a holder of the key can produce.

    Raises:
        CheckpointError: for pickles, truncated or corrupted files, unknown formats, content
            hash mismatches and (with a key set) missing or wrong HMAC tags, each with a
            message that says what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _check_path(path)
    raw = _raw_safetensors_header(path)
    header = _parse_meta(path, raw.get("__metadata__", {}))
    key = checkpoint_key()
    if key is not None:
        require_hmac_tag(path, header)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path} is corrupted or truncated ({e}); restore it from a good copy or retrain"
        ) from None
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
    if tag is not None and not hmac.compare_digest(
        str(header[HMAC_FIELD]).encode(), tag.hexdigest().encode()
    ):
        raise CheckpointError(
            f"{path} failed its HMAC check under the key in {KEY_ENV}: it was modified after it "
            "was written, or written with another key; do not trust it. Restore it from a copy "
            "you trust, or set the key it was written with"
        )
    return tensors, header


def require_hmac_tag(path: str | os.PathLike[str], header: dict[str, Any]) -> None:
    """Refuse a header without an HMAC tag (call it when ``ROBUSTLAB_CHECKPOINT_KEY`` is set)."""
    if not isinstance(header.get(HMAC_FIELD), str):
        raise CheckpointError(
            f"{path} carries no HMAC tag, but {KEY_ENV} is set, so only checkpoints written "
            "with that key are accepted: it was written without the key (or the tag was "
            f"removed). If you trust the file, load it with {KEY_ENV} unset and save it again "
            "with the key set"
        )


_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of ``dtype`` (``torch.float32`` -> ``"F32"``), as
    :func:`read_tensor_specs` reports it; other dtypes get their torch name."""
    return _DTYPE_NAMES.get(dtype, str(dtype))


def read_tensor_specs(path: str | os.PathLike[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The dtype (safetensors name, e.g. ``"F32"``) and shape of every stored tensor, read from
    the file's header alone: no tensor data is read and nothing is verified.

    Raises:
        CheckpointError: for a file whose tensor table is malformed.
    """
    path = _check_path(path)
    raw = _raw_safetensors_header(path)
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in raw.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise CheckpointError(f"{path} has a corrupted tensor table (entry {name!r})")
        specs[name] = (dtype, tuple(shape))
    return specs


def _check_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the .safetensors file inside it")
    _refuse_pickle(path)
    return path


def _raw_safetensors_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes); restore it or retrain")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{path} is not a valid safetensors checkpoint (bad header length {n} for a "
                f"{size}-byte file): it is truncated, corrupted or of another format"
            )
        blob = f.read(n)
    try:
        raw = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupted header; restore it or retrain") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} has a corrupted header; restore it or retrain")
    return raw


def _parse_meta(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or _META_KEY not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not a robustlab checkpoint (no robustlab header); "
            "load bare weights with robustlab.checkpoints.load_weights(model, path)"
        )
    try:
        header = json.loads(meta[_META_KEY])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupted robustlab header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unknown header format")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, newer than this robustlab "
            f"understands ({FORMAT_VERSION}); upgrade robustlab"
        )
    return header
