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


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_checkpoints_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model"})
        assert os.stat(p).st_mode & 0o777 == mode
        ck.write_checkpoint(p, _tensors(), {"kind": "model", "v": 2})  # overwriting keeps it
        assert os.stat(p).st_mode & 0o777 == mode
    finally:
        os.umask(old)
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="folders are fsynced on POSIX only")
def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model"})
    assert events == ["fsync file", "rename", "fsync folder"]


def _size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed away between listing and stat
        return 0


_WRITER = """
import sys
import robustlab

model = robustlab.create_model("resnet18", num_classes=10, seed=0)  # 11M parameters, 45 MB
robustlab.save(model, sys.argv[1], metrics={"i": 0})
print("ready", flush=True)
i = 0
while True:
    i += 1
    robustlab.save(model, sys.argv[1], metrics={"i": i})
"""


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_9_in_the_middle_of_a_write_leaves_the_previous_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import robustlab

    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    folder = tmp_path / "run"
    folder.mkdir()
    final = folder / "model.safetensors"
    killed_mid_write = False
    for _ in range(3):  # the kill must land while a temporary file exists; retry if it missed
        child = subprocess.Popen([sys.executable, str(script), str(final)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if any(_size(f) > 0 for f in folder.iterdir() if f.name != final.name):
                    break  # bytes of the next checkpoint are being written
                time.sleep(0.001)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        leftovers = [f for f in folder.iterdir() if f.name != final.name]
        # the final name holds a whole checkpoint, never a half-written one
        opened = ck.open_checkpoint(final)  # refuses tensors that do not fill the file exactly
        with open(final, "rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
        data_end = sum(spec.nbytes for spec in opened.specs.values())
        assert final.stat().st_size == opened.size == 8 + header_length + data_end
        model = robustlab.load(final)
        assert model.robustlab_header["metrics"]["i"] >= 0
        if any(_size(f) > 0 for f in leftovers):
            print("killed mid-write; left behind:", [(f.name, f.stat().st_size) for f in leftovers])
            killed_mid_write = True
            assert all(f.name.startswith(".") for f in leftovers), leftovers
            break
    assert killed_mid_write, "the kill never landed in the middle of a write"


# ------------------------------------------------------------- one reader (issue 27)


def test_open_checkpoint_parses_the_header_once_and_reads_tensors_on_demand(tmp_path):
    p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model", "x": 1})
    opened = ck.open_checkpoint(p)
    assert opened.header["x"] == 1 and opened.size == p.stat().st_size
    assert dict(opened.specs) == {"b": ("I64", (5,)), "w": ("F32", (4, 3)), "empty": ("F32", (0,))}
    assert opened.stored_values() == 17
    tensors = opened.read_tensors()
    from safetensors.torch import load_file

    expected = load_file(str(p))
    assert list(tensors) == list(expected)  # file order, as safetensors reads it
    for k, v in expected.items():
        assert torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype


def test_robustlab_load_parses_its_file_once(tmp_path, monkeypatch):
    import json

    import robustlab

    path = robustlab.save(robustlab.create_model("resnet-mini", in_channels=1, seed=0), tmp_path / "m.safetensors")
    calls = []
    real = json.loads
    monkeypatch.setattr(ck.json, "loads", lambda s, *a, **k: calls.append(len(s)) or real(s, *a, **k))
    robustlab.load(path)
    assert len(calls) == 2  # the safetensors header, then the robustlab header inside it


def test_a_bare_safetensors_file_has_no_header_and_loads_as_weights(tmp_path):
    from safetensors.torch import save_file

    net = torch.nn.Linear(3, 2)
    save_file(dict(net.state_dict()), tmp_path / "w.safetensors")
    assert ck.open_checkpoint(tmp_path / "w.safetensors").header is None
    other = torch.nn.Linear(3, 2)
    assert ck.load_weights(other, tmp_path / "w.safetensors") is other
    assert torch.equal(other.weight, net.weight)
    from robustlab.checkpoints import load_weights as via_checkpoints
    from robustlab.models import load_weights as via_models

    assert via_checkpoints is via_models is ck.load_weights


@pytest.mark.parametrize("suffix", sorted(ck.PICKLE_SUFFIXES))
def test_one_pickle_guard_for_checkpoints_and_weights(tmp_path, suffix):
    from robustlab.models import create_model

    path = tmp_path / f"w{suffix}"
    torch.save({"w": torch.zeros(1)}, path)
    for read in (ck.read_checkpoint, lambda p: create_model("resnet-mini", in_channels=1, weights=p)):
        with pytest.raises(CheckpointError, match=rf"is a pickle-based torch file \({suffix} suffix\), and robustlab never unpickles"):
            read(path)


def _raw_file(path, table, data=b"", n=None):
    import json
    import struct

    blob = json.dumps(table).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if n is None else n) + blob + data)
    return path


@pytest.mark.parametrize(
    ("table", "data", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "corrupted tensor table"),  # overlap
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "corrupted tensor table"),  # gap
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "corrupted tensor table"),  # size
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "corrupted tensor table"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "corrupted tensor table"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "not a readable safetensors file"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "not a readable safetensors file"),
        ({"__metadata__": ["x"]}, b"", "corrupted header"),
    ],
)
def test_a_malformed_tensor_table_is_refused_before_any_tensor_is_read(tmp_path, table, data, message):
    path = _raw_file(tmp_path / "m.safetensors", table, data)
    with pytest.raises(CheckpointError, match=message):
        ck.open_checkpoint(path)


def test_a_zero_header_length_is_refused(tmp_path):
    path = _raw_file(tmp_path / "m.safetensors", {}, b"\0" * 64, n=0)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ck.open_checkpoint(path)


def test_a_file_replaced_between_open_and_read_is_refused(tmp_path):
    p = ck.write_checkpoint(tmp_path / "m.safetensors", _tensors(), {"kind": "model", "v": 1})
    opened = ck.open_checkpoint(p)
    ck.write_checkpoint(p, _tensors(), {"kind": "model", "v": 2})
    with pytest.raises(CheckpointError, match="changed while it was being read"):
        opened.read_tensors()
