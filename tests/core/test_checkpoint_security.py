"""Crafted checkpoints: a header is untrusted input (issue 13, items 1-3).

Each test builds a hostile file the way an attacker would (a valid safetensors file whose JSON
header is edited and, where needed, re-hashed) and checks that ``robustlab.load`` refuses it
with a ``CheckpointError`` that names the problem, without calling ``torch.load`` and without
allocating the network the header asks for.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import robustlab
from robustlab.core import CheckpointError, InputError
from robustlab.core import checkpoint as ck

KEY = "correct horse battery staple"
MINI = {"num_classes": 10, "in_channels": 1}


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ck.KEY_ENV, raising=False)


@pytest.fixture
def torch_load_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every call of ``torch.load``; a test asserts the list stays empty."""
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


def _craft(path: Path, recipe: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A correctly hashed model checkpoint with an arbitrary recipe (what an attacker writes)."""
    header = {"kind": "model", "recipe": recipe, "dataset": None, "train_config": {}, "metrics": {}}
    return ck.write_checkpoint(path, tensors or {"w": torch.zeros(4)}, header)


def _recipe(arch: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "arch": arch,
        "kwargs": {"num_classes": 10, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, **kwargs},
        "conversions": [],
    }


def _evil_pickle(tmp_path: Path) -> Path:
    class Boom:
        def __reduce__(self) -> Any:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps(Boom()))
    return bad


# ---------------------------------------------------------------- 1. the option allowlist


def test_timm_checkpoint_path_in_a_header_is_refused_before_any_file_is_read(
    tmp_path: Path, torch_load_calls: list[Any]
) -> None:
    pytest.importorskip("timm")
    evil = _evil_pickle(tmp_path)
    path = _craft(tmp_path / "m.safetensors", _recipe("timm:resnet10t", checkpoint_path=str(evil)))
    with pytest.raises(
        CheckpointError,
        match=r"sets 'checkpoint_path', which robustlab does not accept from a checkpoint header.*"
        r"allowed: num_classes, in_channels, mean, std, drop_rate, drop_path_rate, global_pool",
    ):
        robustlab.load(path)
    assert torch_load_calls == []
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("arch", "option"),
    [
        ("timm:resnet10t", {"pretrained": True}),
        ("timm:resnet10t", {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}),
        ("timm:resnet10t", {"pretrained_cfg": {"file": "/etc/passwd"}}),
        ("timm:resnet10t", {"cache_dir": "/tmp"}),
        ("torchvision:resnet18", {"weights": "DEFAULT"}),
        ("torchvision:resnet18", {"weights_backbone": "DEFAULT"}),
        ("resnet-mini", {"weights": "/tmp/other.safetensors"}),  # create_model(weights=) reads
        ("resnet-mini", {"seed": 3}),
    ],
)
def test_options_outside_the_allowlist_are_refused_by_name(
    tmp_path: Path, torch_load_calls: list[Any], arch: str, option: dict[str, Any]
) -> None:
    (key,) = option
    path = _craft(tmp_path / "m.safetensors", _recipe(arch, **option))
    with pytest.raises(CheckpointError, match=rf"sets '{key}', which robustlab does not accept.*allowed: "):
        robustlab.load(path)
    assert torch_load_calls == []


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("timm:hf-hub:someone/model", "never a path or a source"),
        ("timm:local-dir:/tmp/somewhere", "never a path or a source"),
        ("torchvision:../resnet18", "never a path or a source"),
        ("no-such-net", "unknown architecture"),
    ],
)
def test_model_names_that_are_sources_or_paths_are_refused(tmp_path: Path, arch: str, message: str) -> None:
    path = _craft(tmp_path / "m.safetensors", _recipe(arch))
    with pytest.raises(CheckpointError, match=message):
        robustlab.load(path)


@pytest.mark.parametrize(
    ("arch", "option", "what"),
    [
        ("timm:resnet10t", {"drop_rate": 2.0}, "a probability in"),
        ("timm:resnet10t", {"global_pool": "../../x"}, "a pooling name"),
        ("torchvision:resnet18", {"dropout": "0.1"}, "a probability in"),
        ("resnet-mini", {"num_classes": -3}, "a positive int"),
        ("resnet-mini", {"mean": ["a"]}, "a list of finite numbers"),
    ],
)
def test_allowed_options_with_bad_values_are_refused(
    tmp_path: Path, arch: str, option: dict[str, Any], what: str
) -> None:
    path = _craft(tmp_path / "m.safetensors", _recipe(arch, **option))
    with pytest.raises(CheckpointError, match=f"must be {what}"):
        robustlab.load(path)


def test_allowed_adapter_options_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    model = robustlab.create_model("timm:resnet10t", num_classes=3, drop_path_rate=0.1, seed=0)
    back = robustlab.load(robustlab.save(model, tmp_path / "t.safetensors"))
    assert back.robustlab_recipe["kwargs"]["drop_path_rate"] == 0.1
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(back(x), model.eval()(x))


def test_save_refuses_a_recipe_load_would_refuse(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    model = robustlab.create_model("timm:resnet10t", num_classes=3, drop_block_rate=0.1)
    with pytest.raises(CheckpointError, match="could not be loaded back.*'drop_block_rate'"):
        robustlab.save(model, tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()


def test_create_model_refuses_timm_checkpoint_path(tmp_path: Path, torch_load_calls: list[Any]) -> None:
    pytest.importorskip("timm")
    with pytest.raises(InputError, match="checkpoint_path.*never downloads weights nor reads pickled"):
        robustlab.create_model("timm:resnet10t", checkpoint_path=str(_evil_pickle(tmp_path)))
    assert torch_load_calls == []


# ------------------------------------------- 2. shapes checked on the meta device first

_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    import robustlab, robustlab.defenses
    from robustlab.core import CheckpointError

    def refuse(*args, **kwargs):
        raise SystemExit("torch.load was called")

    torch.load = refuse
    robustlab.load(sys.argv[1])  # warm up: lazy imports and first-call caches of a real load
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        robustlab.load(sys.argv[2])
        outcome = "loaded"
    except CheckpointError as e:
        outcome = str(e)
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    print(json.dumps({"outcome": outcome, "grown_kib": grown, "seconds": seconds}))
    """
)


def _mini_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    model = robustlab.create_model("resnet-mini", **MINI, seed=0)
    path = robustlab.save(model, tmp_path / "mini.safetensors")
    tensors, header = ck.read_checkpoint(path)
    return path, tensors, header


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_small_file_claiming_a_huge_network_is_refused_with_small_memory(tmp_path: Path) -> None:
    good, tensors, header = _mini_checkpoint(tmp_path)
    header["recipe"] = {
        "arch": "wrn-34-10",
        "kwargs": {**MINI, "mean": [0.5], "std": [0.5], "depth": 34, "widen_factor": 300,
                   "dropout": 0.0, "strides": [1, 2, 2]},
        "conversions": [],
    }
    evil = ck.write_checkpoint(tmp_path / "evil.safetensors", tensors, header)
    assert evil.stat().st_size < 400_000  # the 320 KB file
    probe = tmp_path / "probe.py"
    probe.write_text(_MEMORY_PROBE)
    done = subprocess.run(
        [sys.executable, str(probe), str(good), str(evil)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "refused, its recipe ('wrn-34-10'" in result["outcome"]
    assert "describes 41,497,344,251 values (166.0 GB)" in result["outcome"]
    assert "the file stores 78,437" in result["outcome"]
    # 166 GB claimed; the refusal may cost a few MB of Python objects, never the network
    assert result["grown_kib"] < 64 * 1024, result


def test_a_recipe_far_deeper_than_its_file_stops_early(tmp_path: Path) -> None:
    _, tensors, header = _mini_checkpoint(tmp_path)
    header["recipe"] = _recipe("wrn-34-10", depth=6 * 10**8 + 4, widen_factor=1)
    evil = ck.write_checkpoint(tmp_path / "deep.safetensors", tensors, header)
    with pytest.raises(CheckpointError, match=r"builds more than 488 tensors, while the file stores 58"):
        robustlab.load(evil)


def test_a_recipe_whose_parameter_count_disagrees_is_refused(tmp_path: Path) -> None:
    _, tensors, header = _mini_checkpoint(tmp_path)
    header["recipe"]["kwargs"]["num_classes"] = 11  # one more logit than the stored head
    evil = ck.write_checkpoint(tmp_path / "m.safetensors", tensors, header)
    with pytest.raises(
        CheckpointError,
        match=r"describes 78,502 values .* but the file stores 78,437 .*"
        r"model\.linear\.weight: file F32 \[10, 64\], recipe F32 \[11, 64\]",
    ):
        robustlab.load(evil)


def test_stored_dtypes_must_match_the_recipe(tmp_path: Path) -> None:
    _, tensors, header = _mini_checkpoint(tmp_path)
    tensors = {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}
    evil = ck.write_checkpoint(tmp_path / "m.safetensors", tensors, header)
    with pytest.raises(CheckpointError, match=r"wrong shape or dtype: .*: file F64 \[.*\], recipe F32"):
        robustlab.load(evil)


def test_missing_and_extra_tensors_are_named(tmp_path: Path) -> None:
    _, tensors, header = _mini_checkpoint(tmp_path)
    tensors["model.extra"] = tensors.pop("model.linear.bias")
    evil = ck.write_checkpoint(tmp_path / "m.safetensors", tensors, header)
    with pytest.raises(
        CheckpointError, match=r"missing tensors \['model.linear.bias'\], unexpected tensors \['model.extra'\]"
    ):
        robustlab.load(evil)


def test_a_recipe_that_cannot_be_built_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = _craft(tmp_path / "m.safetensors", _recipe("wrn-34-10", depth=35))
    with pytest.raises(CheckpointError, match=r"cannot be built: InputError: wide-resnet depth must be 6n \+ 4"):
        robustlab.load(path)


# ------------------------------------------------ 3. what the hash and the HMAC guarantee


def _rehashed_edit(path: Path, edit: Any) -> None:
    """Edit the header and recompute the plain SHA-256, as anyone without the key can."""
    from safetensors.torch import save_file

    tensors, header = ck.read_checkpoint(path)
    edit(header)
    header["content_hash"] = ck.content_hash(tensors, header)
    save_file(tensors, str(path), metadata={"robustlab": json.dumps(header, sort_keys=True)})


def _saved_model(tmp_path: Path) -> Path:
    model = robustlab.create_model("resnet-mini", **MINI, seed=0)
    return robustlab.save(model, tmp_path / "m.safetensors", metrics={"robust_accuracy": 0.5})


def _set_metric(header: dict[str, Any]) -> None:
    header["metrics"]["robust_accuracy"] = 0.99


def test_the_plain_hash_does_not_detect_a_rehashed_edit(tmp_path: Path) -> None:
    path = _saved_model(tmp_path)
    _rehashed_edit(path, _set_metric)
    assert robustlab.load(path).robustlab_header["metrics"]["robust_accuracy"] == 0.99


def test_with_the_key_a_rehashed_edit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ck.KEY_ENV, KEY)
    path = _saved_model(tmp_path)
    assert robustlab.load(path).robustlab_header["metrics"]["robust_accuracy"] == 0.5
    _rehashed_edit(path, _set_metric)
    with pytest.raises(CheckpointError, match="failed its HMAC check under the key in ROBUSTLAB_CHECKPOINT_KEY"):
        robustlab.load(path)
    monkeypatch.delenv(ck.KEY_ENV)
    assert robustlab.load(path).robustlab_header["metrics"]["robust_accuracy"] == 0.99


def test_with_the_key_a_stripped_tag_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ck.KEY_ENV, KEY)
    path = _saved_model(tmp_path)

    def strip(header: dict[str, Any]) -> None:
        del header[ck.HMAC_FIELD]
        _set_metric(header)

    _rehashed_edit(path, strip)
    with pytest.raises(CheckpointError, match="carries no HMAC tag, but ROBUSTLAB_CHECKPOINT_KEY is set"):
        robustlab.load(path)
    with pytest.raises(CheckpointError, match="carries no HMAC tag"):
        ck.read_checkpoint(path)


def test_a_file_written_without_the_key_is_refused_when_the_key_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved_model(tmp_path)
    assert ck.HMAC_FIELD not in ck.read_header(path)
    monkeypatch.setenv(ck.KEY_ENV, KEY)
    with pytest.raises(CheckpointError, match="it was written without the key"):
        robustlab.load(path)


def test_a_wrong_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ck.KEY_ENV, KEY)
    path = _saved_model(tmp_path)
    monkeypatch.setenv(ck.KEY_ENV, KEY + "!")
    with pytest.raises(CheckpointError, match="failed its HMAC check.*or written with another key"):
        robustlab.load(path)


def test_the_tag_is_an_hmac_of_the_hashed_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import hmac

    monkeypatch.setenv(ck.KEY_ENV, KEY)
    path = ck.write_checkpoint(tmp_path / "s.safetensors", {"w": torch.arange(6.0)}, {"kind": "state"})
    tensors, header = ck.read_checkpoint(path)
    body = {k: v for k, v in header.items() if k not in ("content_hash", ck.HMAC_FIELD)}
    message = (
        b"w" + b"torch.float32" + b"(6,)" + torch.arange(6.0).numpy().tobytes()
        + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    )
    assert header[ck.HMAC_FIELD] == hmac.new(KEY.encode(), message, hashlib.sha256).hexdigest()
    assert header["content_hash"] == hashlib.sha256(message).hexdigest()
