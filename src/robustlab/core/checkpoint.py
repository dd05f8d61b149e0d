"""Safe checkpoint files: tensors in safetensors, everything else in a JSON header.

Nothing here unpickles. A checkpoint is one ``.safetensors`` file whose metadata holds a JSON
header (format version, model recipe, dataset, training config, metrics, versions) and a SHA-256
content hash over the tensors and the header, checked on every read. Writes go to a temporary
file in the same folder and are renamed into place, so a write that dies halfway leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

FORMAT = "robustlab-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "robustlab"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar"}
_MAX_HEADER = 100 * 1024 * 1024


def _versions() -> dict[str, str]:
    try:
        from importlib.metadata import PackageNotFoundError, version

        ours = version("robustlab")
    except PackageNotFoundError:  # running from a source tree without installing
        ours = "unknown"
    return {"robustlab": ours, "torch": torch.__version__, "python": platform.python_version()}


def content_hash(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and the canonical JSON header."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    body = {k: v for k, v in header.items() if k != "content_hash"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
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

    The header gains ``format``, ``format_version``, ``versions`` and ``content_hash``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint paths end in .safetensors, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(), **header}
    full.pop("content_hash", None)
    full["content_hash"] = content_hash(tensors, full)
    meta = {_META_KEY: json.dumps(full, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON header of a checkpoint (no tensors, no hash check)."""
    path = _check_path(path)
    raw = _raw_safetensors_header(path)
    return _parse_meta(path, raw.get("__metadata__", {}))


def read_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; return ``(tensors, header)``.

    Raises:
        CheckpointError: for pickles, truncated or corrupted files, unknown formats and content
            hash mismatches, each with a message that says what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _check_path(path)
    raw = _raw_safetensors_header(path)
    header = _parse_meta(path, raw.get("__metadata__", {}))
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path} is corrupted or truncated ({e}); restore it from a good copy or retrain"
        ) from None
    expected = header.get("content_hash")
    actual = content_hash(tensors, header)
    if expected != actual:
        raise CheckpointError(
            f"{path} failed its content-hash check (stored {str(expected)[:12]}..., computed "
            f"{actual[:12]}...): the file was modified or damaged after it was written; restore "
            "it from a good copy or retrain"
        )
    return tensors, header


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
