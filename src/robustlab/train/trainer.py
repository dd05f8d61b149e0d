"""The training loop: any model, any objective, resumable bit for bit.

``Trainer(model, objective, config).fit(train, val)`` trains with SGD or AdamW, a per-step
learning-rate schedule, optional EMA of the weights, gradient clipping and (on CUDA) bfloat16
autocast. After every epoch it writes ``last.safetensors`` (weights, optimizer, scheduler, EMA
and RNG states; no pickle) and a line of ``metrics.jsonl``; ``fit(resume=True)`` continues from
that state, and on CPU with the same seed ends with bit-identical weights to an uninterrupted run.

Randomness: ``fit`` runs inside a fork of the global torch RNG (CPU and every CUDA device)
seeded with ``config.seed``, exactly as the ``robustlab train`` command seeds it, so the library
and the CLI train the same weights, and the caller's global RNG is untouched afterwards. The
checkpoint stores that forked CPU state, every CUDA device's state and the objective's generator;
batch order and augmentation come from per-epoch generators derived from the seed.

A resume is refused, naming each setting that differs (old and new value), unless only
``epochs`` changed and the schedule does not depend on the total (``constant``, ``multistep``):
then a finished run is extended (or a running one shortened, not below the epochs done).

Data-parallel training (``torchrun --nproc_per_node N``; the design is in
:mod:`robustlab.train.distributed`): the trainer joins torchrun's process group
(:func:`~robustlab.core.distributed.current_world`) and

- ``batch_size`` is the GLOBAL batch: each of the N ranks takes ``batch_size / N`` images
  (refused unless divisible), and ``lr`` is the global batch's (no scaling). Every rank draws
  the single-process run's order from the same per-epoch generator and takes its contiguous
  share of each batch, so a step's global batch is the single-process step's batch; each rank's
  loss is scaled by its share and the gradients are summed over the ranks before clipping and
  the step. With no batch norm (or ``sync_bn``) and no random augmentation the weights equal a
  single process's up to float summation order.
- Randomness is per rank: the attack's generator, the augmentation's and the global RNG are
  derived from ``(seed, rank)`` (:func:`~robustlab.train.distributed.rank_seed`); rank 0's are
  the single-process run's. Each rank crafts its adversarial examples on its own shard.
- Batch norm normalizes with each rank's shard and keeps rank 0's running statistics
  (broadcast after every step), unless ``sync_bn`` asks for the global batch's statistics.
- Train loss and accuracy are summed over the ranks; validation is sharded and summed; the
  files are written by rank 0 only (atomically) while the others wait at a barrier, so no rank
  reads a half-written file. ``out_dir`` must be one folder every rank sees (one machine, or a
  shared file system). Callbacks run on every rank: one that prints or writes checks
  ``trainer.world.main``.
- The training state records the world size and every rank's random streams. A resume on the
  same world size continues them (bit for bit, as a single process); on another world size
  (the same global batch) it says so, rank 0 continues its streams and the other ranks derive
  theirs afresh. ``sync_bn`` may change on resume, like the world size: it changes how batch
  statistics are computed, not the state that is saved.
- A rank that dies or hangs makes the others' next collective fail after
  ``ROBUSTLAB_DIST_TIMEOUT`` seconds at most, as a RobustlabError naming it; torchrun then
  stops the job. Nothing is left half-written: every file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import save
from ..core import InputError, RobustlabError, check_int, check_number, is_number
from ..core.checkpoint import (
    flatten_state,
    read_checkpoint,
    unflatten_state,
    write_checkpoint,
    write_text_atomic,
)
from ..core.distributed import World, current_world
from ..core.metrics import accuracy, predict
from ..data import ImageDataset, make_loader
from .callbacks import Callback
from .distributed import (
    all_reduce_gradients,
    broadcast_tensors,
    local_cuda_device,
    rank_seed,
    synchronized_batchnorm,
)
from .ema import EMA
from .objectives import Objective, create_objective
from .optim import create_optimizer, param_groups
from .schedules import HORIZON_FREE, create_schedule, horizon_free

logger = logging.getLogger(__name__)

STATE_FILE = "last.safetensors"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run besides the model, objective and data."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    schedule_options: dict[str, Any] = field(default_factory=dict)
    ema_decay: float | None = None
    grad_clip: float | None = None
    amp: bool = True
    augment: bool | str = True
    seed: int = 0
    eval_batch_size: int = 512
    channels_last: bool = False
    """Train in the channels-last memory layout, on CPU as on GPU. ``benchmarks/train_layout.py``
    on 2 CPU cores (2026-12-07, one epoch on 2,000 images): resnet-mini 0.83x the time with
    cross-entropy, 0.78x with PGD-AT, 0.95x with a DCS layer under GSAT, but 1.97x with GradNorm's
    double backpropagation, hence off by default. The model comes back in the usual layout, so
    attacks run as before; weights differ from a contiguous training at float rounding, so a
    resume may change this setting (it is not compared)."""
    bn_eval: bool = False
    """Keep every batch-norm layer in eval mode while training (running statistics used, never
    updated), as the gradient-norm thesis does to isolate the activation's effect (Sec. 4.3)."""
    sync_bn: bool = False
    """Under torchrun, normalize every batch-norm layer with the global batch's statistics
    (synchronized over the ranks) instead of each rank's shard; the trained model keeps the
    usual batch-norm layers. No effect in one process. May change on resume (not compared)."""
    cudnn_benchmark: bool = False
    """Let cuDNN time its convolution algorithms and keep the fastest (``torch.backends.cudnn.
    benchmark``) while training: faster on GPUs for fixed input shapes, but the algorithm, and so
    the float rounding, may differ from run to run. Off by default; not compared on resume."""

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_number(self.lr, "lr", 0, low_open=True)
        if self.ema_decay is not None and not is_number(self.ema_decay, 0, 1, low_open=True, high_open=True):
            raise InputError(f"ema_decay must lie strictly between 0 and 1 (e.g. 0.999), got {self.ema_decay}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in checkpoints (``bn_eval``, ``sync_bn`` and
        ``cudnn_benchmark`` only when set, so runs saved before the options existed still
        resume, and a single-process run's checkpoint is as before)."""
        out = asdict(self)
        for option in _SET_ONLY:
            if not out[option]:
                del out[option]
        return out


_SET_ONLY = ("bn_eval", "sync_bn", "cudnn_benchmark")
"""Options stored in ``TrainConfig.to_dict`` only when on."""

_NOT_COMPARED = ("channels_last", "sync_bn", "cudnn_benchmark")
"""Options a resume may change: a memory layout, how batch statistics are gathered over the
ranks, the choice of convolution algorithms (how the arithmetic is done, not what is trained)."""


@dataclass
class TrainResult:
    """What ``fit`` returns: the trained model (EMA weights if EMA was on) and per-epoch metrics."""

    model: nn.Module
    history: list[dict[str, Any]]
    checkpoint: Path | None


def data_fingerprint(data: ImageDataset) -> dict[str, Any]:
    """What identifies a training set for resuming.

    Name, split, size, a hash of the item indices and labels (another ``limit`` or validation
    split), a hash of the pixel content (:meth:`ImageDataset.content_hash`, computed once per
    dataset object: the synthetic set at another image size, or Fashion-MNIST read from another
    folder with the same labels) and the load options (``root``, image size, ...).
    """
    h = hashlib.sha256()
    h.update(data.indices.to(torch.int64).contiguous().numpy().tobytes())
    h.update(data.targets.to(torch.int64).contiguous().numpy().tobytes())
    options = json.loads(json.dumps(getattr(data, "options", {}) or {}, sort_keys=True, default=repr))
    return {
        "name": data.info.name,
        "split": data.split,
        "n": len(data),
        "sha256": h.hexdigest()[:16],
        "pixels": data.content_hash(),
        "options": options,
    }


_MISSING = object()


def _differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted field, old, new)`` for every leaf where two JSON trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key, _MISSING), new.get(key, _MISSING),
                                f"{path}.{key}" if path else str(key))
        return out
    return [] if old == new else [(path or "value", old, new)]


def _show(value: Any) -> str:
    if value is _MISSING:
        return "not set"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(diffs: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{field} was {_show(old)}, now {_show(new)}" for field, old, new in diffs)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _seed_cuda(devices: Sequence[int], seed: int) -> None:
    for i in devices:
        with torch.cuda.device(i):
            torch.cuda.manual_seed(seed)


def _bn_eval_hook(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of ``TrainConfig(bn_eval=True)``: the batch norm runs in eval mode
    whatever ``model.train()`` (or an objective's attack mode) set."""
    module.training = False


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**63 - 1)


_OBJECTIVE_STREAM = -1
"""The "epoch" of the objective's generator in :func:`_epoch_seed`."""


class Trainer:
    """Train ``model`` with ``objective``; see the module docstring.

    Args:
        model: any ``nn.Module`` taking [0, 1] images (a robustlab model carries its recipe,
            which checkpoints need).
        objective: a registered objective name or an objective instance.
        config: the run's :class:`TrainConfig`.
        callbacks: e.g. ``[RichProgress()]``.
        out_dir: where ``last.safetensors``, ``model.safetensors`` and ``metrics.jsonl`` go;
            ``None`` trains without writing anything (no resume).
        device: where to train; by default the model's current device. Under torchrun a CUDA
            device without an explicit index (``"cuda"``, or the model's own device) is
            ``cuda:LOCAL_RANK``.
        dataset_name: recorded in the checkpoint header (default: the training set's name).
        world: the processes training together (see the module docstring); by default
            :func:`~robustlab.core.distributed.current_world`, which joins torchrun's process
            group when launched by torchrun and is one process otherwise.

    An objective with a ``set_epoch(epoch)`` method is given the 0-based epoch before each
    epoch's first batch (resumed runs included).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: str | Objective = "standard",
        config: TrainConfig | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        out_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dataset_name: str | None = None,
        world: World | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.objective: Objective = create_objective(objective) if isinstance(objective, str) else objective
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.world = world if world is not None else current_world()
        explicit = device is not None and torch.device(device).index is not None
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        if self.world.distributed and self.device.type == "cuda" and not explicit:
            self.device = local_cuda_device()  # one GPU per rank
        if self.world.backend == "nccl" and self.device.type != "cuda":
            raise InputError(
                f"the process group uses NCCL, which reduces GPU tensors only, and the model is on "
                f"{self.device}; train on the GPUs (device='cuda'), or run without GPUs (gloo)"
            )
        self.model = model.to(self.device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dataset_name = dataset_name
        self.steps_per_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        """The 0-based epoch ``fit`` started at (the epochs a resumed run had done)."""
        self.resumed_from: Path | None = None
        """The training state ``fit`` resumed from, or ``None`` for a fresh run."""
        self.resumed_world_size: int | None = None
        """The number of processes that wrote the state ``fit`` resumed from (``None`` for a
        fresh run)."""
        self.generator = torch.Generator().manual_seed(
            rank_seed(_epoch_seed(self.config.seed, _OBJECTIVE_STREAM), self.world.rank))
        """The objective's generator (attack starts): rank 0's is the single-process run's."""

    # ------------------------------------------------------------------ state
    def _state(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMA | None,
               data: dict[str, Any], rng_ranks: list[dict[str, Any]] | None = None,
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        rng = self._rng_state()
        if rng_ranks is not None:  # the other ranks' streams, to continue them all on resume
            rng["ranks"] = rng_ranks
        tree = {
            "optimizer": flatten_state(optimizer.state_dict(), "optimizer", tensors),
            "scheduler": flatten_state(scheduler.state_dict(), "scheduler", tensors),
            "rng": flatten_state(rng, "rng", tensors),
        }
        header = {
            "kind": "train_state",
            "epoch": epoch,
            "world_size": self.world.size,
            "config": self.config.to_dict(),
            "objective": self.objective.config(),
            "history": self.history,
            "state": tree,
            "recipe": getattr(self.model, "robustlab_recipe", None),
            "dataset": self.dataset_name,
            "data": data,
        }
        return tensors, header

    def _rng_devices(self) -> list[int]:
        """The CUDA devices whose RNG the run forks, saves and restores: every visible one in a
        single process, the rank's own under torchrun."""
        if self.world.distributed:
            return [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else []
        return _cuda_devices()

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "objective": self.generator.get_state()}
        devices = self._rng_devices()
        if devices:
            state["cuda"] = [torch.cuda.get_rng_state(i) for i in devices]
        return state

    def _set_rng_state(self, rng: dict[str, Any], path: Path) -> None:
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["objective"])
        saved = list(rng.get("cuda") or [])
        devices = self._rng_devices()
        for i, state in zip(devices, saved, strict=False):
            torch.cuda.set_rng_state(state, i)
        if saved and len(saved) != len(devices):
            warnings.warn(
                f"{path} holds the RNG states of {len(saved)} CUDA device(s) and this machine has "
                f"{len(devices)}; {min(len(saved), len(devices))} restored, so the resumed run's GPU "
                "random draws differ from an uninterrupted run's",
                stacklevel=4,
            )

    def _check_resume(self, path: Path, header: dict[str, Any], data: dict[str, Any]) -> None:
        """Refuse a resume whose settings differ from the saved run's, naming every difference;
        allow a change of ``epochs`` alone when the schedule does not depend on it."""
        fresh = ("; use the same settings, or start afresh in another output folder or without "
                 "resuming (resume=False; --no-resume)")
        saved_data = header.get("data")
        data_diffs = _differences(saved_data, data)
        unrecorded = [f for f, old, _ in data_diffs if old is _MISSING and isinstance(saved_data, dict)]
        if unrecorded:
            warnings.warn(
                f"{path} was written by an older robustlab that did not record "
                f"{', '.join('data.' + f for f in unrecorded)}; those are not compared",
                stacklevel=4,
            )
            data_diffs = [d for d in data_diffs if d[0] not in unrecorded]
        if data_diffs:
            raise RobustlabError(
                f"cannot resume from {path}: it was written for another training set "
                f"({_describe([(f'data.{f}', o, n) for f, o, n in data_diffs])}){fresh}"
            )
        for key, what, current in (
            ("recipe", "for another model recipe", getattr(self.model, "robustlab_recipe", None)),
            ("objective", "with another objective", self.objective.config()),
        ):
            diffs = _differences(header.get(key), json.loads(json.dumps(current)))
            if diffs:
                raise RobustlabError(
                    f"cannot resume from {path}: it was written {what} "
                    f"({_describe([(f'{key}.{f}', o, n) for f, o, n in diffs])}){fresh}"
                )
        config = json.loads(json.dumps(self.config.to_dict()))
        config_diffs = _differences(header.get("config"), config)
        changed = {d[0] for d in config_diffs}
        if "sync_bn" in changed:
            logger.info("%s: sync_bn was %s, now %s", path, not self.config.sync_bn, self.config.sync_bn)
        config_diffs = [d for d in config_diffs if d[0] not in _NOT_COMPARED]
        others = [d for d in config_diffs if d[0] != "epochs"]
        if others:
            raise RobustlabError(
                f"cannot resume from {path}: it was written with a different training config "
                f"({_describe(others)}){fresh}"
            )
        if config_diffs:  # only epochs changed
            done = int(header["epoch"]) + 1
            before, now = header["config"]["epochs"], self.config.epochs
            if not horizon_free(self.config.schedule):
                raise RobustlabError(
                    f"cannot resume from {path} with epochs {now} (it was started with {before}): "
                    f"the {self.config.schedule!r} schedule spreads its learning-rate curve over the "
                    "total number of epochs, so changing the total would change the rates of the "
                    f"epochs already trained; only the {' and '.join(sorted(HORIZON_FREE))} "
                    f"schedules can be extended. Keep epochs {before}, or start a new run (another "
                    "output folder) that finetunes from its model.safetensors"
                )
            if now < done:
                raise RobustlabError(
                    f"cannot resume from {path} with epochs {now}: it has already trained {done} "
                    f"epochs; pass epochs >= {done} (--epochs)"
                )
            logger.info("%s: changing the run's length from %d to %d epochs (%r schedule)",
                        path, before, now, self.config.schedule)

    def _restore(self, path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, ema: EMA | None,
                 data: dict[str, Any]) -> int:
        tensors, header = read_checkpoint(path)
        if header.get("kind") != "train_state":
            raise RobustlabError(f"{path} is not a training-state file")
        self._check_resume(path, header, data)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if ema is not None:
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        state = header["state"]
        optimizer.load_state_dict(unflatten_state(state["optimizer"], tensors))
        scheduler.load_state_dict(unflatten_state(state["scheduler"], tensors))
        done = int(header["epoch"]) + 1
        saved_size = int(header.get("world_size", 1))
        self.resumed_world_size = saved_size
        rng = unflatten_state(state["rng"], tensors)
        rank = self.world.rank
        if rank == 0:
            self._set_rng_state(rng, path)
        elif saved_size == self.world.size and len(rng.get("ranks") or []) >= rank:
            self._set_rng_state(rng["ranks"][rank - 1], path)
        else:  # a rank the saved run did not have: fresh streams from (seed, rank, epoch)
            seed = rank_seed(self.config.seed, rank, done)
            torch.default_generator.manual_seed(seed)
            _seed_cuda(self._rng_devices(), seed)
            self.generator.manual_seed(
                rank_seed(_epoch_seed(self.config.seed, _OBJECTIVE_STREAM), rank, done))
        if saved_size != self.world.size and self.world.main:
            logger.warning(
                "%s was written by a run on %d process(es); resuming on %d with the same global "
                "batch of %d (%d per process); rank 0 continues its random streams, the other "
                "ranks draw theirs afresh from the seed", path, saved_size, self.world.size,
                self.config.batch_size, self.config.batch_size // self.world.size)
        self.history = list(header["history"])
        return done

    def _write_metrics(self) -> None:
        """Rewrite ``metrics.jsonl`` whole and atomically (:func:`write_text_atomic`).

        One JSON line per epoch from ``history``, the same history the training state holds,
        so after a crash the file never has a torn line, and a resume rewrites it to agree with
        the state it continues from.
        """
        assert self.out_dir is not None
        if not self.world.main:  # rank 0 writes; the others hold the same history
            return
        write_text_atomic(self.out_dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in self.history))

    # -------------------------------------------------------------------- fit
    def fit(
        self, train: ImageDataset, val: ImageDataset | None = None, *, resume: bool = False
    ) -> TrainResult:
        """Train for ``config.epochs`` epochs; with ``resume=True`` continue from ``out_dir``.

        Runs in a fork of the global torch RNG (CPU and every CUDA device; under torchrun the
        rank's own device) seeded with ``config.seed`` (rank ``r`` of several: a seed derived from
        it and ``r``; see the module docstring): the result does not depend on the caller's RNG
        state, and the caller's RNG is as it was afterwards. ``torch.backends.cudnn.benchmark``
        is ``config.cudnn_benchmark`` while training and restored afterwards.
        """
        devices = self._rng_devices()
        benchmark = torch.backends.cudnn.benchmark
        with torch.random.fork_rng(devices=devices):
            seed = rank_seed(self.config.seed, self.world.rank)
            torch.default_generator.manual_seed(seed)
            if self.world.distributed:
                _seed_cuda(devices, seed)
            elif devices:
                torch.cuda.manual_seed_all(seed)
            torch.backends.cudnn.benchmark = self.config.cudnn_benchmark
            try:
                return self._fit(train, val, resume)
            finally:
                torch.backends.cudnn.benchmark = benchmark

    def _check_world(self, train: ImageDataset) -> None:
        size = self.world.size
        batch = self.config.batch_size
        if batch % size:
            lower, upper = batch - batch % size, batch + size - batch % size
            hint = f"{lower} or {upper}" if lower else f"{upper}"
            raise InputError(
                f"batch_size must be a multiple of the {size} processes of this run (it is the global "
                f"batch, split evenly over them), got {batch}; use e.g. {hint}"
            )
        if len(train) < size:
            raise InputError(f"the training set has {len(train)} images, fewer than the {size} processes "
                             "of this run; train on more images or with fewer processes")

    def _fit(self, train: ImageDataset, val: ImageDataset | None, resume: bool) -> TrainResult:
        cfg = self.config
        world = self.world
        if len(train) == 0:
            raise InputError("the training set is empty")
        self._check_world(train)
        drop_last = len(train) > cfg.batch_size
        self.steps_per_epoch = len(train) // cfg.batch_size if drop_last else 1
        total = cfg.epochs * self.steps_per_epoch
        wd = cfg.weight_decay
        optimizer = create_optimizer(
            cfg.optimizer, param_groups(self.model, wd), cfg.lr,
            momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd,
        )
        scheduler = create_schedule(cfg.schedule, optimizer, total, self.steps_per_epoch, **cfg.schedule_options)
        broadcast_tensors(self._shared_tensors(), world)  # every rank starts from rank 0's model
        ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        start = 0
        self.start_epoch = 0
        self.resumed_from = None
        self.resumed_world_size = None
        state_path = self.out_dir / STATE_FILE if self.out_dir is not None else None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        data = data_fingerprint(train) if state_path is not None else {}
        if self.dataset_name is None:
            self.dataset_name = train.info.name
        found = resume and state_path is not None and state_path.exists()
        if resume and state_path is not None and world.distributed:
            found = self._agree_on_state(state_path, found)
        if found:
            assert state_path is not None
            start = self._restore(state_path, optimizer, scheduler, ema, data)
            broadcast_tensors(self._shared_tensors(ema), world)
            self.start_epoch, self.resumed_from = start, state_path
            self._write_metrics()  # agree with the state resumed from, whatever the last crash left
            world.barrier()
            if start < cfg.epochs:
                logger.info("resuming from %s: %d of %d epochs done, starting at epoch %d of %d",
                            state_path, start, cfg.epochs, start + 1, cfg.epochs)
            else:
                logger.info("resuming from %s: all %d epochs are done; nothing left to train",
                            state_path, cfg.epochs)
        else:
            self.history = []
        use_amp = cfg.amp and self.device.type == "cuda"
        with contextlib.ExitStack() as stack:
            if cfg.sync_bn:
                stack.enter_context(synchronized_batchnorm(self.model, world, self.device))
            for module in self.model.modules():
                if cfg.bn_eval and isinstance(module, nn.modules.batchnorm._BatchNorm):
                    stack.callback(module.register_forward_pre_hook(_bn_eval_hook).remove)
            self._epochs(train, val, start, optimizer, scheduler, ema, state_path, data, use_amp)
        return self._finish(ema)

    def _shared_tensors(self, ema: EMA | None = None) -> list[torch.Tensor]:
        """What every rank must hold equal: the model's (and the EMA's) parameters and buffers."""
        modules = [self.model] + ([ema.shadow] if ema is not None else [])
        return [t for m in modules for t in (*m.parameters(), *m.buffers())]

    def _agree_on_state(self, path: Path, found: bool) -> bool:
        """Rank 0 decides whether there is a state to resume from; a rank that cannot see it
        (``out_dir`` not shared) is an error, not a silent fresh start."""
        found = self.world.broadcast(found)
        if found and not path.exists():
            raise RobustlabError(
                f"rank {self.world.rank} of {self.world.size} cannot see {path}, which rank 0 resumes "
                "from; out_dir must be a folder every rank sees (one machine, or a shared file system)"
            )
        return found

    def _epochs(self, train: ImageDataset, val: ImageDataset | None, start: int, optimizer: torch.optim.Optimizer,
                scheduler: Any, ema: EMA | None, state_path: Path | None, data: dict[str, Any],
                use_amp: bool) -> None:
        cfg = self.config
        world = self.world
        drop_last = len(train) > cfg.batch_size
        global_batch = min(cfg.batch_size, len(train))
        params = [p for p in self.model.parameters() if p.requires_grad]
        buffers = list(self.model.buffers()) if world.distributed else []
        for cb in self.callbacks:
            cb.on_fit_start(self)
        for epoch in range(start, cfg.epochs):
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            set_epoch = getattr(self.objective, "set_epoch", None)
            if set_epoch is not None:  # epoch-dependent objectives: AWP's warmup, FAT's tau schedule
                set_epoch(epoch)
            t0 = time.perf_counter()
            self.model.train()
            loader = make_loader(
                train, cfg.batch_size, shuffle=True, augment=cfg.augment,
                generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch)), drop_last=drop_last,
                **self._shard_options(epoch),
            )
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen = 0
            for step, (x, y) in enumerate(loader):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if cfg.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = self.objective(self.model, x, y, generator=self.generator)
                loss = out.loss
                finite = bool(torch.isfinite(loss))
                if not finite and not world.distributed:
                    raise RobustlabError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower the "
                        "learning rate or enable gradient clipping (grad_clip)"
                    )
                optimizer.zero_grad(set_to_none=True)
                if world.distributed:
                    # this rank's share of the global batch's mean loss; the sum over the ranks
                    # of the gradients is the global batch's gradient
                    (loss * (y.numel() / global_batch)).backward()
                    bad = all_reduce_gradients(params, world, bad_loss=not finite)
                    if bad:
                        here = f" (here {loss.item()})" if not finite else ""
                        raise RobustlabError(
                            f"loss became non-finite on {bad} of {world.size} processes{here} at epoch "
                            f"{epoch + 1}, step {step + 1}; lower the learning rate or enable gradient "
                            "clipping (grad_clip)"
                        )
                else:
                    loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                broadcast_tensors(buffers, world)  # rank 0's running statistics, as DDP's broadcast_buffers
                if ema is not None:
                    ema.update(self.model)
                loss_sum += loss.detach() * y.numel()
                if out.logits is not None:
                    correct += (out.logits.detach().argmax(1) == y).sum()
                seen += y.numel()
                if self.callbacks:
                    lv = float(loss.detach())
                    for cb in self.callbacks:
                        cb.on_batch_end(self, epoch * self.steps_per_epoch + step, lv)
            eval_model = ema.shadow if ema is not None else self.model
            if world.distributed:  # the global batch's loss and accuracy
                totals = torch.stack([loss_sum.double(), correct.double(),
                                      torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
                world.all_reduce_(totals)
                loss_total, correct_total, seen_total = totals.tolist()
            else:
                loss_total, correct_total, seen_total = float(loss_sum), float(correct), seen
            metrics: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": loss_total / max(1, seen_total),
                "train_acc": correct_total / max(1, seen_total),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - t0, 3),
                "val_acc": None,
            }
            if val is not None and len(val):
                was = eval_model.training
                eval_model.eval()
                metrics["val_acc"] = self._val_accuracy(eval_model, val)
                eval_model.train(was)
            self.history.append(metrics)
            if world.main:
                logger.info("epoch %d: %s", epoch + 1, metrics)
            if self.out_dir is not None and state_path is not None:
                rng_ranks = world.all_gather(self._rng_state())[1:] if world.distributed else None
                if world.main:
                    tensors, header = self._state(epoch, optimizer, scheduler, ema, data, rng_ranks)
                    write_checkpoint(state_path, tensors, header)
                self._write_metrics()
                world.barrier()  # nobody goes on (or reads) before the files are whole
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, metrics)

    def _shard_options(self, epoch: int) -> dict[str, Any]:
        """``make_loader``'s options for this rank: its share of every batch, and (ranks > 0) an
        augmentation stream of its own; none in a single process."""
        if not self.world.distributed:
            return {}
        options: dict[str, Any] = {"shard": (self.world.rank, self.world.size)}
        if self.world.rank:
            seed = rank_seed(_epoch_seed(self.config.seed, epoch), self.world.rank)
            options["augment_generator"] = torch.Generator().manual_seed(seed)
        return options

    @torch.no_grad()
    def _val_accuracy(self, model: nn.Module, val: ImageDataset) -> float:
        """Top-1 accuracy on ``val``; under torchrun each rank predicts its share and the counts
        are summed (the same number as one process's)."""
        if not self.world.distributed:
            return accuracy(model, make_loader(val, self.config.eval_batch_size), self.device)
        correct = total = 0
        for x, y in make_loader(val, self.config.eval_batch_size, shard=(self.world.rank, self.world.size)):
            if y.numel():
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                correct += int((predict(model, x) == y).sum())
                total += int(y.numel())
        counts = torch.tensor([correct, total], dtype=torch.float64, device=self.device)
        self.world.all_reduce_(counts)
        return float(counts[0]) / float(counts[1])

    def _finish(self, ema: EMA | None) -> TrainResult:
        final = ema.shadow if ema is not None else self.model
        if self.config.channels_last:  # back to the usual layout: attacks and checkpoints see the usual model
            final = final.to(memory_format=torch.contiguous_format)
        final.eval()
        ckpt = None
        if self.out_dir is not None and getattr(final, "robustlab_recipe", None) is not None:
            ckpt = self.out_dir / MODEL_FILE
            if self.world.main:
                ckpt = save(
                    final, ckpt, dataset=self.dataset_name,
                    train_config={**self.config.to_dict(), "objective": self.objective.config()},
                    metrics=self.history[-1] if self.history else {},
                )
            self.world.barrier()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return TrainResult(final, self.history, ckpt)


__all__ = [
    "METRICS_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "data_fingerprint",
]
