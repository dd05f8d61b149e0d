"""Data-parallel training (issue #30): ``Trainer.fit`` and ``robustlab train`` on 2 ranks
(torchrun, gloo, CPU) against one process with the same global batch and seed.

One torchrun launch (tests/train/dist_train_worker.py) runs every multi-rank training and writes
each rank's final weights; the one-process references are trained here, in the test process,
with ``World()`` (never read back from the 2-rank run). Each rank builds its model with its own
seed, so the comparisons also check that training starts from rank 0's weights.

Tolerances: with no batch norm (or ``sync_bn``) and no augmentation the 2-rank weights equal one
process's up to float summation order. Seen on 2 CPU cores (torch 2.14.1): max |difference| 7.5e-9
(cross-entropy), 1.5e-8 (GradNorm, double backward), 3.6e-7 (resnet-mini with sync_bn, running
statistics included); the asserted bounds are 1e-6, 1e-6 and 1e-5. Without sync_bn the BN run
differs by about 0.13, which shows the comparison can fail.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_train_worker import CONFIG, bn_net, digits, gradnorm, held_out, plain_net
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from robustlab import load
from robustlab.core.distributed import World
from robustlab.data import make_loader
from robustlab.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

WORKER = Path(__file__).with_name("dist_train_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(mode: str, out: Path, timeout_env: str = "60") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", ROBUSTLAB_DIST_TIMEOUT=timeout_env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(WORKER), mode, str(out)]
    return subprocess.Popen(cmd, cwd=WORKER.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The folder the 2-rank launch wrote, and its standard output."""
    out = tmp_path_factory.mktemp("dist-train")
    proc = _torchrun("checks", out)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout[-4000:] + stderr[-4000:]
    return out, stdout


def _weights(out: Path, case: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{case}_rank{rank}.safetensors"))


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


REFERENCES = {
    "plain_standard": lambda: (plain_net(0), "standard", CONFIG),
    "plain_gradnorm": lambda: (plain_net(0), gradnorm(), CONFIG),
    "bn_sync": lambda: (bn_net(0), "standard", CONFIG),  # sync_bn is a no-op in one process
}


def _history(out: Path, case: str, rank: int = 0) -> list[dict]:
    with safe_open(str(out / f"{case}_rank{rank}.safetensors"), "pt") as f:
        return json.loads(f.metadata()["history"])


def _reference(case: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    model, objective, config = REFERENCES[case]()
    result = Trainer(model, objective, config, world=World()).fit(digits(), held_out())
    return result.model.state_dict(), result.history


@pytest.mark.parametrize(("case", "tolerance"),
                         [("plain_standard", 1e-6), ("plain_gradnorm", 1e-6), ("bn_sync", 1e-5)])
def test_two_ranks_train_the_weights_of_one_process(launched, case, tolerance):
    out, _ = launched
    rank0, rank1 = _weights(out, case, 0), _weights(out, case, 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks' weights differ"
    reference, history = _reference(case)
    assert _max_difference(reference, rank0) <= tolerance
    # the metrics are the global batch's: loss and accuracy summed over the ranks, validation
    # sharded (26 + 25 images) and summed
    got = _history(out, case)[0]
    assert got["train_loss"] == pytest.approx(history[0]["train_loss"], abs=1e-6)
    assert got["train_acc"] == history[0]["train_acc"] and got["val_acc"] == history[0]["val_acc"]
    # and training moved the weights far more than that
    start = (plain_net(0) if case.startswith("plain") else bn_net(0)).state_dict()
    assert _max_difference(reference, {k: v.float() for k, v in start.items()}) > 1e-3


def test_sync_bn_leaves_the_usual_batch_norm_and_local_bn_differs_from_one_process(launched):
    out, _ = launched
    for case in ("bn_sync", "bn_local"):
        with safe_open(str(out / f"{case}_rank0.safetensors"), "pt") as f:
            assert f.metadata()["norms"] == "BatchNorm2d,Normalized"
    # without sync_bn each rank normalizes its own half-batch: not the single-process run,
    # yet both ranks hold the same weights and rank 0's running statistics
    local0, local1 = _weights(out, "bn_local", 0), _weights(out, "bn_local", 1)
    assert all(torch.equal(local0[k], local1[k]) for k in local0)
    assert _max_difference(_reference("bn_sync")[0], local0) > 1e-3


def test_adversarial_training_on_two_ranks_writes_its_files_once(launched):
    out, _ = launched
    rank0, rank1 = _weights(out, "pgd_at", 0), _weights(out, "pgd_at", 1)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert math.isfinite(_history(out, "pgd_at")[0]["train_loss"])
    writes = [json.loads((out / f"writes_rank{r}.json").read_text()) for r in (0, 1)]
    assert writes[1] == []  # rank 1 wrote nothing, for every case
    assert writes[0] == [["write_checkpoint", "last.safetensors"], ["write_text_atomic", "metrics.jsonl"],
                         ["save", "model.safetensors"]]
    saved = load(out / "pgd_at" / "model.safetensors").state_dict()
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    lines = (out / "pgd_at" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and math.isfinite(json.loads(lines[0])["train_loss"])
    assert not list((out / "pgd_at").glob(".*.tmp"))


def test_a_run_resumed_on_as_many_ranks_ends_bit_identical(launched):
    """PGD-AT with flips and EMA, stopped after epoch 1 of 2 and resumed from a model built with
    another seed: every rank's attack and augmentation streams continue where they were."""
    out, _ = launched
    for rank in (0, 1):
        full, resumed = _weights(out, "uninterrupted", rank), _weights(out, "resumed", rank)
        assert full.keys() == resumed.keys()
        assert all(torch.equal(full[k], resumed[k]) for k in full)
    start = bn_net(9).state_dict()
    assert _max_difference(_weights(out, "resumed", 0), {k: v.float() for k, v in start.items()}) > 1e-3


def test_a_global_batch_that_does_not_split_is_refused(launched):
    out, _ = launched
    for rank in (0, 1):
        assert (out / f"refusal_rank{rank}.txt").read_text() == (
            "InputError: batch_size must be a multiple of the 2 processes of this run (it is the "
            "global batch, split evenly over them), got 33; use e.g. 32 or 34")


def test_cli_under_torchrun_prints_once_and_resumes_on_one_process(launched):
    from robustlab.cli import app

    out, stdout = launched
    run = out / "cli"
    assert stdout.count("saved ") == 1 and f"saved {run / 'model.safetensors'}" in stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    r = CliRunner().invoke(app, ["train", "--dataset", "digits", "--limit", "96", "--model", "resnet-mini",
                                 "--epochs", "2", "--batch-size", "32", "--schedule", "constant", "--lr", "0.05",
                                 "--device", "cpu", "--out", str(run)])
    assert r.exit_code == 0, r.output
    assert "written by 2 process(es) and resumes on 1" in " ".join(r.output.split())
    assert [json.loads(s)["epoch"] for s in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_dead_or_stuck_rank_stops_the_job_and_leaves_no_files(tmp_path):
    """Rank 1 raises (ROBUSTLAB_DIST_TIMEOUT=20) or sleeps 300 s (timeout 5 s) in the third step
    of the first epoch; the two launches run side by side."""
    started = time.monotonic()
    launches = {what: (_torchrun(what, tmp_path / what, timeout), tmp_path / what)
                for what, timeout in (("die", "20"), ("hang", "5"))}
    results = {}
    for what, (proc, folder) in launches.items():
        stdout, stderr = proc.communicate(timeout=150)
        seconds = time.monotonic() - started  # an upper bound: the launch may have ended earlier
        results[what] = stderr
        assert proc.returncode != 0, what
        assert seconds < 90, (what, seconds)  # the stuck rank sleeps 300 s
        assert "finished training" not in stdout
        run = folder / "run"
        assert not (run / "model.safetensors").exists() and not (run / "last.safetensors").exists()
        assert not list(run.glob(".*.tmp"))
    assert "RobustlabError: rank 0 of 2: all_reduce failed" in results["hang"]  # the timeout, named


def test_each_rank_loads_its_contiguous_share_of_the_unsharded_batches():
    data = digits(50)
    images = [(data.images[i], int(data.targets[i])) for i in range(len(data))]  # a plain map-style dataset
    for source in (data, images):
        whole = list(make_loader(source, 16, shuffle=True, generator=torch.Generator().manual_seed(3)))
        shards = [list(make_loader(source, 16, shuffle=True, generator=torch.Generator().manual_seed(3),
                                   shard=(rank, 3))) for rank in range(3)]
        assert len(whole) == 4 and all(len(s) == 4 for s in shards)
        for b, (x, y) in enumerate(whole):
            sizes = [int(s[b][1].numel()) for s in shards]
            assert sizes == ([6, 5, 5] if b < 3 else [1, 1, 0])  # the last batch has 2 items
            assert torch.equal(torch.cat([s[b][0] for s in shards]), x)
            assert torch.equal(torch.cat([s[b][1] for s in shards]), y)


def test_the_default_config_is_stored_as_before():
    stored = TrainConfig().to_dict()
    assert "sync_bn" not in stored and "cudnn_benchmark" not in stored
    assert TrainConfig(sync_bn=True, cudnn_benchmark=True).to_dict()["sync_bn"] is True
