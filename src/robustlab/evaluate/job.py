"""One battery evaluation in progress (:func:`~robustlab.evaluate.run_battery`'s loop): every
(repeat, batch) through :func:`robustlab.attacks.run_sequence`, the seeds it derives, the state
it saves and resumes, the progress events it reports, and, under ``torchrun``, the shard of
batches this rank attacks and the gathering of every rank's shard.

Randomness is explicit and derived, never taken from the clock or the position in the run: the
attack generator of every (repeat, batch, attack), the seeds of the model's random layers and
of the global generator (for models that draw from it) at every stage are derived from the
run's seed and the *global* batch index (:func:`derive_seed`), so a run repeats bit for bit on
the same machine, a run resumed from its saved state gives exactly the numbers of an
uninterrupted one, and a sharded run gives exactly the numbers of one process. The unit is the
batch (a random layer may share one draw across its batch, as stochastic downsampling does), so
a result depends on the seed and the batch size, never on the number of ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..attacks import ModelFn, Verdict, run_sequence
from ..attacks.model import LateRandomness
from ..attacks.sequence import SequenceState, StageResult
from ..core.bpda import BPDAMode
from ..core.bpda import bpda as bpda_context
from ..core.distributed import World
from ..core.errors import RobustlabError
from ..core.randomness import is_frozen, seed_stochastic, stochastic_layers
from .battery import Battery
from .samples import Samples
from .state import EvalState, Pending, state_filename

__all__ = ["Job", "ProgressCallback", "ProgressEvent", "derive_seed", "seed_global"]

logger = logging.getLogger(__name__)

_LAYER_SEED_BITS = 40  # seed_stochastic multiplies by ~2**20; keep the product below 2**63
_COUNTERS = ("forward", "backward", "attack_seconds", "gradients", "probability_rows", "batch_seconds")


@dataclass(frozen=True)
class ProgressEvent:
    """What :func:`run_battery` reports to its ``progress`` callback.

    Under ``torchrun`` every rank reports its own shard's batches (the CLI shows rank 0's): the
    counts of every event but ``end`` are then this rank's, and ``ranks`` says how many share the
    run; ``end`` counts the whole run once every rank's shard is gathered.

    Attributes:
        kind: ``"start"`` (once, before any work; ``completed`` counts batches restored from a
            saved state), ``"attack"`` (an attack finished on a batch), ``"saved"`` (the batch
            in progress was saved after ``attack``, mid-batch: on time, or on an interrupt),
            ``"batch"`` (a batch finished and its state was saved) or ``"end"`` (once, after
            the last batch).
        completed: batches finished so far, over all repeats (this rank's shard; ``end``: all).
        total: batches in the run (``repeats * batches``; this rank's shard under ``torchrun``,
            except for ``end``).
        repeat: the current repeat (0-based).
        batch: the current batch (0-based, global: the same index on any number of ranks).
        attack: the label of the attack that finished (``"attack"`` events), or of the last
            attack the saved state holds for the batch (``"saved"`` events).
        robust: samples of the current batch still robust after this stage.
        size: samples in the current batch.
        ranks: the processes sharing the run (1 unless launched by ``torchrun``).
    """

    kind: Literal["start", "attack", "saved", "batch", "end"]
    completed: int
    total: int
    repeat: int = 0
    batch: int = 0
    attack: str | None = None
    robust: int = 0
    size: int = 0
    ranks: int = 1


ProgressCallback = Callable[[ProgressEvent], None]
"""``progress(event)``; the CLI turns events into a rich progress bar. Library code never prints."""


def derive_seed(seed: int, *parts: int | str, bits: int = 63) -> int:
    """A seed in ``[0, 2**bits)`` derived from ``seed`` and a path of ``parts`` (SHA-256).

    Different paths give independent seeds; the same path always gives the same one.
    """
    blob = json.dumps([int(seed), *parts], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << bits) - 1)


def seed_global(seed: int, dev: torch.device) -> None:
    """Seed the global CPU generator (and ``dev``'s CUDA one): only ever inside the
    ``torch.random.fork_rng`` that :func:`run_battery` holds, so the caller's generators are
    restored afterwards. It keys the draws of models that take their randomness from the global
    generator (``torch.rand`` in a forward, dropout) by the stage, not by the position in the run."""
    torch.default_generator.manual_seed(seed)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            torch.cuda.manual_seed(seed)


def _seed_stage(model: nn.Module, seed: int, dev: torch.device) -> None:
    seed_global(derive_seed(seed, "global"), dev)
    # a frozen model keeps its one draw for the whole evaluation (seeding would clear it)
    if stochastic_layers(model) and not is_frozen(model):
        seed_stochastic(model, seed)


class Job:
    """One battery evaluation in progress: its state, its saves and its progress events, on
    this rank's shard of the batches (all of them in one process)."""

    def __init__(self, model: nn.Module, samples: Samples, battery: Battery, config: dict[str, Any],
                 key: str, folder: Path | None, dev: torch.device, seed: int, batch_size: int,
                 bpda: BPDAMode | None, save_interval: float, progress: ProgressCallback | None,
                 world: World | None = None) -> None:
        self.model, self.samples, self.battery, self.config = model, samples, battery, config
        self.key, self.folder, self.dev, self.seed = key, folder, dev, seed
        self.batch_size, self.bpda, self.save_interval, self.progress = batch_size, bpda, save_interval, progress
        self.world = world if world is not None else World()
        self.batches = (samples.n + batch_size - 1) // batch_size
        self.shard = self.world.shard(self.batches)  # whole batches: [b0, b1) of the global indices
        self.filename = state_filename(self.world.rank, self.world.size)

    def report(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def samples_of(self, b0: int, b1: int) -> tuple[int, int]:
        """The sample positions ``[lo, hi)`` of batches ``[b0, b1)``."""
        n = self.samples.n
        return min(n, b0 * self.batch_size), min(n, b1 * self.batch_size)

    def run(self, randomness: str, fresh: bool = False) -> EvalState:
        """Evaluate every (repeat, batch) of this rank's shard not yet done, then gather every
        rank's shard; ``fresh`` ignores saved states.

        Raises:
            LateRandomness: on every rank, when any rank's attack points showed randomness the
                model's clean inputs did not (the caller starts over under the randomized rule).
        """
        config, world = self.config, self.world
        repeats = int(config["repeats"])
        state = EvalState.new(self.key, config, repeats, len(self.battery.labels), self.samples.n, self.batches)
        files = []
        if self.folder is not None and not fresh:
            files = EvalState.load_all(self.folder, state, warn=world.main)
        usable = [f.state for f in files if f.state is not None]
        # a resumed run keeps the rule it was started under (the late rule once a run fell back
        # to it). Every rank has read every file before this gather returns anywhere, so no rank
        # writes a file another is still reading; rank 0's reading decides.
        late_files = [s for s in usable if s.config.get("late_randomness")]
        if late_files:
            mine = (str(late_files[0].config.get("randomness", "detected")), True)
        elif usable:
            mine = (str(usable[0].config.get("randomness", randomness)), False)
        else:
            mine = (randomness, bool(config.get("late_randomness")))
        chosen = world.all_gather(mine)[0]
        randomness, late = str(chosen[0]), bool(chosen[1])
        if world.main:
            for f in files:
                if f.state is None:  # another key or damaged: replaced, like a one-process run's file
                    f.path.unlink(missing_ok=True)
        config["randomness"] = randomness
        config["stochastic"] = randomness in ("protocol", "detected")
        if late:
            config["late_randomness"] = True
        matching = [s for s in usable if s.config.get("randomness", randomness) == randomness
                    and bool(s.config.get("late_randomness")) == late]
        if matching:
            self._merge(state, matching)
        late_here = False
        try:
            self._loop(state, randomness)
        except LateRandomness:
            if not world.distributed:
                raise
            late_here = True  # the other ranks hear of it at the gather
        state = self._gather(state, late_here)
        self.report(ProgressEvent("end", int(state.done.sum()), int(state.done.numel()), ranks=world.size))
        return state

    def _merge(self, state: EvalState, found: list[EvalState]) -> None:
        """Take every (repeat, batch) from the file that got furthest with it: finished first,
        else the most attacks saved mid-batch."""
        for r in range(state.done.shape[0]):
            for b in range(self.batches):
                best: EvalState | None = None
                for s in found:
                    if bool(s.done[r, b]):
                        best = s
                        break
                    if (r, b) in s.pending and int(s.attacks_done[r, b]) > (
                            int(best.attacks_done[r, b]) if best is not None else 0):
                        best = s
                if best is not None:
                    state.adopt(best, r, b, *self.samples_of(b, b + 1))

    def _gather(self, state: EvalState, late: bool) -> EvalState:
        """Every rank's shard into every rank's state (one process: nothing to do)."""
        world = self.world
        if not world.distributed:
            return state
        b0, b1 = self.shard
        mine: dict[str, Any] = {"late": late, "batches": [b0, b1], "samples": list(self.samples_of(b0, b1)),
                                "state": state.shard_bytes((b0, b1), self.samples_of(b0, b1))}
        shards = world.all_gather(mine)
        late_ranks = [k for k, s in enumerate(shards) if s["late"]]
        if late_ranks:
            raise LateRandomness(f"the model's outputs at the attacks' points are random (seen on rank(s) "
                                 f"{', '.join(map(str, late_ranks))})")
        for k, s in enumerate(shards):
            if k != world.rank:
                (sb0, sb1), (ss0, ss1) = s["batches"], s["samples"]
                state.put_shard(s["state"], (int(sb0), int(sb1)), (int(ss0), int(ss1)))
        if not state.complete:  # every batch belongs to one rank's shard: a bug if this happens
            raise RobustlabError(f"rank {world.rank}: the gathered shards leave "
                                 f"{int((~state.done).sum())} batches undone")
        if world.main and self.folder is not None:  # the whole run in one file: any later run reads it back
            state.save(self.folder, self.filename, self._shard_header())
        return state

    def _shard_header(self) -> dict[str, Any]:
        return {"rank": self.world.rank, "world": self.world.size, "batches": list(self.shard)}

    def _loop(self, state: EvalState, randomness: str) -> EvalState:
        model, samples, battery, config, dev, seed = (self.model, self.samples, self.battery,
                                                      self.config, self.dev, self.seed)
        stochastic = randomness in ("protocol", "detected")
        config["prediction_draws"] = config["ensemble"] if stochastic else 1
        config["verdict_draws"] = config["draws"] if stochastic else 1
        state.config = config
        repeats, n_total, batch_size = int(config["repeats"]), samples.n, self.batch_size
        b_first, b_last = self.shard
        labels = battery.labels
        total = repeats * (b_last - b_first)
        completed = int(state.done[:, b_first:b_last].sum())
        ranks = self.world.size
        verdict = Verdict(draws=int(config["draws"]), ensemble=int(config["ensemble"]), batch_size=batch_size)
        fmodel = ModelFn(model, randomness)
        folder = self.folder
        shard_header = self._shard_header() if self.world.distributed else None
        # the wall-clock bookkeeping of saves: time is added to the batch in progress when saved
        clock = {"mark": time.perf_counter(), "saved": time.monotonic()}
        current = [0, b_first]  # the (repeat, batch) in progress
        # True while after_attack writes a stage into ``state``: an interrupt then finds it torn
        writing = [False]
        unsaved = [False]

        def save() -> None:
            now = time.perf_counter()
            state.batch_seconds[current[0], current[1]] += now - clock["mark"]
            clock["mark"] = now
            if folder is not None:
                state.save(folder, self.filename, shard_header)
            clock["saved"] = time.monotonic()
            unsaved[0] = False

        self.report(ProgressEvent("start", completed, total, ranks=ranks))
        try:
            with bpda_context(model, self.bpda) if self.bpda is not None else contextlib.nullcontext():
                for r in range(repeats):
                    for b in range(b_first, b_last):
                        if bool(state.done[r, b]):
                            continue
                        current[:] = [r, b]
                        lo, hi = b * batch_size, min(n_total, (b + 1) * batch_size)
                        x, y = samples.batch(lo, hi)
                        x, y = x.to(dev), y.to(dev)
                        clock["mark"] = time.perf_counter()
                        pending = state.pending.get((r, b))
                        start = int(state.attacks_done[r, b]) if pending is not None else 0
                        resume = None
                        if start > 0 and pending is not None:
                            resume = SequenceState(
                                p_clean=state.p_clean[r, lo:hi].to(dev, x.dtype),
                                x_inc=pending.x.to(dev, x.dtype),
                                wrong=pending.wrong.to(dev),
                                margin=pending.margin.to(dev),
                                stages=[StageResult(seen=state.seen[r, i, lo:hi].to(dev),
                                                    broken=state.success[r, i, lo:hi].to(dev),
                                                    p_after=state.p_after[r, i, lo:hi].to(dev))
                                        for i in range(start)],
                                probability_rows=0,
                            )
                        else:  # a batch (re)started from its clean inputs: its counters start at 0
                            for name in _COUNTERS:
                                getattr(state, name)[r, b] = 0
                            state.attacks_done[r, b] = 0

                        def on_stage(kind: str, i: int, r: int = r, b: int = b) -> None:
                            if kind in ("clean", "final"):
                                parts: tuple[int | str, ...] = (kind,)
                            elif kind == "attack":
                                parts = ("attack", i, "model")
                            else:
                                parts = ("attack", i, "predict")
                            _seed_stage(model, derive_seed(seed, "repeat", r, "batch", b, *parts,
                                                           bits=_LAYER_SEED_BITS), dev)

                        def generator(i: int, r: int = r, b: int = b) -> torch.Generator:
                            gen = torch.Generator(device=dev)
                            gen.manual_seed(derive_seed(seed, "repeat", r, "batch", b, "attack", i))
                            return gen

                        def after_attack(i: int, seq: SequenceState, r: int = r, b: int = b, lo: int = lo,
                                         hi: int = hi, first: int = start, fresh: bool = resume is None,
                                         done: int = completed) -> None:
                            stage = seq.stages[i]
                            writing[0] = True
                            if i == first and fresh:
                                state.p_clean[r, lo:hi] = seq.p_clean.cpu().double()
                                state.clean[r, lo:hi] = (seq.p_clean >= 0.5).cpu()
                                state.probability_rows[r, b] = torch.tensor([seq.probability_rows, hi - lo])
                            state.robust[r, lo:hi] = seq.robust.cpu()
                            state.success[r, i, lo:hi] = stage.broken.cpu()
                            state.seen[r, i, lo:hi] = stage.seen.cpu()
                            state.p_after[r, i, lo:hi] = stage.p_after.cpu().double()
                            state.pending[(r, b)] = Pending(seq.x_inc.detach().cpu(), seq.wrong.detach().cpu(),
                                                            seq.margin.detach().cpu())
                            state.attack_seconds[r, b, i] += stage.seconds
                            state.forward[r, b, i] += stage.forward_passes
                            state.backward[r, b, i] += stage.backward_passes
                            state.gradients[r, b, i] += torch.tensor(
                                [stage.grad_evaluations, stage.zero_grads, stage.nonfinite_grads])
                            state.attacks_done[r, b] = i + 1
                            writing[0] = False
                            unsaved[0] = True
                            more = i + 1 < len(labels)
                            if folder is not None and more and time.monotonic() - clock["saved"] >= self.save_interval:
                                save()
                                self.report(ProgressEvent("saved", done, total, r, b, labels[i],
                                                          int(seq.robust.sum()), hi - lo, ranks))
                            self.report(ProgressEvent("attack", done, total, r, b, labels[i],
                                                      int(seq.robust.sum()), hi - lo, ranks))

                        out = run_sequence(
                            battery.attacks, fmodel, x, y, verdict=verdict, generator=generator,
                            on_stage=on_stage, after_attack=after_attack, resume=resume,
                        )
                        state.p_robust[r, lo:hi] = out.p_robust.cpu().double()
                        state.p_select[r, lo:hi] = out.p_select.cpu().double()
                        state.robust[r, lo:hi] = out.robust.cpu()
                        state.pending.pop((r, b), None)
                        state.attacks_done[r, b] = len(labels)
                        state.done[r, b] = True
                        save()
                        completed += 1
                        self.report(ProgressEvent("batch", completed, total, r, b, None,
                                                  int(out.robust.sum()), hi - lo, ranks))
        except KeyboardInterrupt:
            # keep what the finished attacks did (a stage half-written when the interrupt came is
            # not saved: the previous save stands)
            if folder is not None and unsaved[0] and not writing[0]:
                save()
                r, b = current
                k = int(state.attacks_done[r, b])
                if k > 0 and not bool(state.done[r, b]):
                    self.report(ProgressEvent("saved", completed, total, r, b, labels[k - 1], ranks=ranks))
            raise
        return state
