import os
import pickle

import pytest
import torch

from robustlab.core import CheckpointError
from robustlab.core import checkpoint as ck


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.arange(5), "empty": torch.zeros(0)}


def test_round_trip_keeps_tensors_and_header(tmp_path):
    p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model", "x": [1, 2]})
    tensors, header = ck.read_checkpoint(p)
    for k, v in _tensors().items():
        assert torch.equal(tensors[k], v)
    assert header["x"] == [1, 2] and header["format_version"] == ck.FORMAT_VERSION
    assert set(header["versions"]) == {"robustlab", "torch", "python"}
    assert header["content_hash"] == ck.content_hash(tensors, header)
    assert ck.read_header(p)["kind"] == "model"


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="never unpickles"):
        ck.read_checkpoint(bad)
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="never unpickles"):
        ck.read_checkpoint(disguised)
    zipped = tmp_path / "zip.safetensors"
    torch.save({"w": torch.zeros(1)}, zipped)
    with pytest.raises(CheckpointError, match="pickle/zip torch file"):
        ck.read_checkpoint(zipped)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_gives_a_clear_error(tmp_path):
    p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model"})
    data = p.read_bytes()
    for cut in (4, 20, len(data) - 7):
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|corrupted"):
            ck.read_checkpoint(p)


def test_tampered_tensor_fails_the_hash_check(tmp_path):
    p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model"})
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="failed its content-hash check"):
        ck.read_checkpoint(p)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.read_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="not a robustlab checkpoint"):
        ck.read_checkpoint(tmp_path / "bare.safetensors")


def test_write_that_dies_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model", "v": 1})
    before = p.read_bytes()

    import safetensors.torch as st

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", dying_save)
    with pytest.raises(OSError, match="disk full"):
        ck.write_checkpoint(p, {"w": torch.ones(3)}, {"kind": "model", "v": 2})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]
    assert ck.read_checkpoint(p)[1]["v"] == 1


def test_state_flattening_round_trips():
    state = {"state": {0: {"momentum_buffer": torch.ones(2), "step": torch.tensor(3.0)}},
             "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1], "x": None}],
             "inf": float("inf")}
    tensors: dict[str, torch.Tensor] = {}
    tree = ck.flatten_state(state, "opt", tensors)
    import json

    back = ck.unflatten_state(json.loads(json.dumps(tree)), tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["state"][0]["momentum_buffer"], torch.ones(2))
    assert back["inf"] == float("inf") and list(back["state"]) == [0]
