"""core.distributed: shards and the single-process world (the multi-rank paths are tested
under torchrun in tests/train/test_distributed_train.py and tests/evaluate/test_sharded.py)."""

from __future__ import annotations

import pytest
import torch

from robustlab.core.distributed import World, current_world, shard_range
from robustlab.core.errors import InputError


@pytest.mark.parametrize(
    ("n", "size", "expected"),
    [
        (10, 2, [(0, 5), (5, 10)]),
        (10, 3, [(0, 4), (4, 7), (7, 10)]),  # 10 = 4 + 3 + 3: the first 10 % 3 ranks take one more
        (2, 4, [(0, 1), (1, 2), (2, 2), (2, 2)]),  # fewer items than ranks: empty shards at the end
        (0, 2, [(0, 0), (0, 0)]),
    ],
)
def test_shard_range_hand_worked(n: int, size: int, expected: list[tuple[int, int]]) -> None:
    assert [shard_range(n, r, size) for r in range(size)] == expected


def test_shard_range_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(InputError, match="rank 2 is not in a world of size 2"):
        shard_range(5, 2, 2)


def test_single_process_world_gathers_and_reduces_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    world = current_world()
    assert (world.rank, world.size, world.main, world.distributed) == (0, 1, True, False)
    assert world.all_gather({"a": 1}) == [{"a": 1}]
    t = torch.tensor([3.0])
    assert world.all_reduce_(t, average=True).item() == 3.0


def test_a_world_of_two_without_a_process_group_says_how_to_launch() -> None:
    with pytest.raises(InputError, match="torchrun"):
        World(0, 2)


def test_a_bad_timeout_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustlab.core import distributed

    monkeypatch.setenv("ROBUSTLAB_DIST_TIMEOUT", "soon")
    with pytest.raises(InputError, match="ROBUSTLAB_DIST_TIMEOUT"):
        distributed._timeout()
