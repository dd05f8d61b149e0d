"""One battery evaluation in progress (:func:`~robustlab.evaluate.run_battery`'s loop): every
(repeat, batch) through :func:`robustlab.attacks.run_sequence`, the seeds it derives, the state
it saves and resumes, and the progress events it reports.

Randomness is explicit and derived, never taken from the clock or the global RNG: the attack
generator of every (repeat, batch, attack) and the seeds of the model's random layers at every
stage are derived from the run's seed (:func:`derive_seed`), so a run repeats bit for bit on the
same machine, and a run resumed from its saved state gives exactly the numbers of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..attacks import ModelFn, Verdict, run_sequence
from ..attacks.sequence import SequenceState, StageResult
from ..core.bpda import BPDAMode
from ..core.bpda import bpda as bpda_context
from ..core.randomness import is_frozen, seed_stochastic, stochastic_layers
from .battery import Battery
from .samples import Samples
from .state import EvalState

__all__ = ["Job", "ProgressCallback", "ProgressEvent", "derive_seed"]

_LAYER_SEED_BITS = 40  # seed_stochastic multiplies by ~2**20; keep the product below 2**63


@dataclass(frozen=True)
class ProgressEvent:
    """What :func:`run_battery` reports to its ``progress`` callback.

    Attributes:
        kind: ``"start"`` (once, before any work; ``completed`` counts batches restored from a
            saved state), ``"attack"`` (an attack finished on a batch), ``"saved"`` (the batch
            in progress was saved after ``attack``, mid-batch: on time, or on an interrupt),
            ``"batch"`` (a batch finished and its state was saved) or ``"end"`` (once, after
            the last batch).
        completed: batches finished so far, over all repeats.
        total: batches in the whole run (``repeats * batches``).
        repeat: the current repeat (0-based).
        batch: the current batch (0-based).
        attack: the label of the attack that finished (``"attack"`` events), or of the last
            attack the saved state holds for the batch (``"saved"`` events).
        robust: samples of the current batch still robust after this stage.
        size: samples in the current batch.
    """

    kind: Literal["start", "attack", "saved", "batch", "end"]
    completed: int
    total: int
    repeat: int = 0
    batch: int = 0
    attack: str | None = None
    robust: int = 0
    size: int = 0


ProgressCallback = Callable[[ProgressEvent], None]
"""``progress(event)``; the CLI turns events into a rich progress bar. Library code never prints."""


def derive_seed(seed: int, *parts: int | str, bits: int = 63) -> int:
    """A seed in ``[0, 2**bits)`` derived from ``seed`` and a path of ``parts`` (SHA-256).

    Different paths give independent seeds; the same path always gives the same one.
    """
    blob = json.dumps([int(seed), *parts], separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << bits) - 1)


def _seed_layers(model: nn.Module, seed: int) -> None:
    # a frozen model keeps its one draw for the whole evaluation (seeding would clear it)
    if stochastic_layers(model) and not is_frozen(model):
        seed_stochastic(model, seed)


class Job:
    """One battery evaluation in progress: its state, its saves and its progress events."""

    def __init__(self, model: nn.Module, samples: Samples, battery: Battery, config: dict[str, Any],
                 key: str, folder: Path | None, dev: torch.device, seed: int, batch_size: int,
                 bpda: BPDAMode | None, save_interval: float, progress: ProgressCallback | None) -> None:
        self.model, self.samples, self.battery, self.config = model, samples, battery, config
        self.key, self.folder, self.dev, self.seed = key, folder, dev, seed
        self.batch_size, self.bpda, self.save_interval, self.progress = batch_size, bpda, save_interval, progress

    def report(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def run(self, randomness: str, fresh: bool = False) -> EvalState:
        """Evaluate every (repeat, batch) not yet done; ``fresh`` ignores a saved state."""
        samples, battery, config = self.samples, self.battery, self.config
        config["stochastic"] = randomness in ("protocol", "detected")
        config["randomness"] = randomness
        repeats, batch_size = int(config["repeats"]), self.batch_size
        batches = (samples.n + batch_size - 1) // batch_size
        state = EvalState.new(self.key, config, repeats, len(battery.labels), samples.n, batches)
        if self.folder is not None and not fresh:
            loaded = EvalState.load(self.folder, state)
            if loaded is not None:  # a resumed run keeps the rule it was started under
                state = loaded
                randomness = str(loaded.config.get("randomness", randomness))
                config["randomness"] = randomness
                config["stochastic"] = randomness in ("protocol", "detected")
                if loaded.config.get("late_randomness"):
                    config["late_randomness"] = True
        return self._loop(state, randomness)

    def _loop(self, state: EvalState, randomness: str) -> EvalState:
        model, samples, battery, config, dev, seed = (self.model, self.samples, self.battery,
                                                      self.config, self.dev, self.seed)
        stochastic = randomness in ("protocol", "detected")
        config["prediction_draws"] = config["ensemble"] if stochastic else 1
        config["verdict_draws"] = config["draws"] if stochastic else 1
        state.config = config
        repeats, n_total, batch_size = int(config["repeats"]), samples.n, self.batch_size
        batches = (n_total + batch_size - 1) // batch_size
        labels = battery.labels
        total = repeats * batches
        completed = int(state.done.sum())
        verdict = Verdict(draws=int(config["draws"]), ensemble=int(config["ensemble"]), batch_size=batch_size)
        fmodel = ModelFn(model, randomness)
        folder = self.folder
        # the wall-clock bookkeeping of saves: time is added to state.seconds when it is saved
        clock = {"mark": time.perf_counter(), "saved": time.monotonic()}
        # True while after_attack writes a stage into ``state``: an interrupt then finds it torn
        writing = [False]
        unsaved = [False]

        def save() -> None:
            now = time.perf_counter()
            state.seconds += now - clock["mark"]
            clock["mark"] = now
            if folder is not None:
                state.save(folder)
            clock["saved"] = time.monotonic()
            unsaved[0] = False

        self.report(ProgressEvent("start", completed, total))
        try:
            with bpda_context(model, self.bpda) if self.bpda is not None else contextlib.nullcontext():
                for r in range(repeats):
                    for b in range(batches):
                        if bool(state.done[r, b]):
                            continue
                        lo, hi = b * batch_size, min(n_total, (b + 1) * batch_size)
                        x, y = samples.batch(lo, hi)
                        x, y = x.to(dev), y.to(dev)
                        clock["mark"] = time.perf_counter()
                        start = int(state.attacks_done[r, b])
                        resume = None
                        if start > 0:
                            resume = SequenceState(
                                p_clean=state.p_clean[r, lo:hi].to(dev, x.dtype),
                                x_inc=state.pending_x.to(dev, x.dtype),
                                wrong=state.pending_wrong.to(dev),
                                margin=state.pending_margin.to(dev),
                                stages=[StageResult(seen=state.seen[r, i, lo:hi].to(dev),
                                                    broken=state.success[r, i, lo:hi].to(dev),
                                                    p_after=state.p_after[r, i, lo:hi].to(dev))
                                        for i in range(start)],
                                probability_rows=0,
                            )

                        def on_stage(kind: str, i: int, r: int = r, b: int = b) -> None:
                            if kind in ("clean", "final"):
                                parts: tuple[int | str, ...] = (kind,)
                            elif kind == "attack":
                                parts = ("attack", i, "model")
                            else:
                                parts = ("attack", i, "predict")
                            _seed_layers(model, derive_seed(seed, "repeat", r, "batch", b, *parts,
                                                            bits=_LAYER_SEED_BITS))

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
                                state.probability_rows[r] += torch.tensor([seq.probability_rows, hi - lo])
                            state.robust[r, lo:hi] = seq.robust.cpu()
                            state.success[r, i, lo:hi] = stage.broken.cpu()
                            state.seen[r, i, lo:hi] = stage.seen.cpu()
                            state.p_after[r, i, lo:hi] = stage.p_after.cpu().double()
                            state.pending_x = seq.x_inc.detach().cpu()
                            state.pending_wrong = seq.wrong.detach().cpu()
                            state.pending_margin = seq.margin.detach().cpu()
                            state.attack_seconds[r, i] += stage.seconds
                            state.forward[r, i] += stage.forward_passes
                            state.backward[r, i] += stage.backward_passes
                            state.gradients[r, i] += torch.tensor(
                                [stage.grad_evaluations, stage.zero_grads, stage.nonfinite_grads])
                            state.attacks_done[r, b] = i + 1
                            writing[0] = False
                            unsaved[0] = True
                            more = i + 1 < len(labels)
                            if folder is not None and more and time.monotonic() - clock["saved"] >= self.save_interval:
                                save()
                                self.report(ProgressEvent("saved", done, total, r, b, labels[i],
                                                          int(seq.robust.sum()), hi - lo))
                            self.report(ProgressEvent("attack", done, total, r, b, labels[i],
                                                      int(seq.robust.sum()), hi - lo))

                        out = run_sequence(
                            battery.attacks, fmodel, x, y, verdict=verdict, generator=generator,
                            on_stage=on_stage, after_attack=after_attack, resume=resume,
                        )
                        state.p_robust[r, lo:hi] = out.p_robust.cpu().double()
                        state.p_select[r, lo:hi] = out.p_select.cpu().double()
                        state.robust[r, lo:hi] = out.robust.cpu()
                        state.pending_x = state.pending_wrong = state.pending_margin = torch.zeros(0)
                        state.done[r, b] = True
                        save()
                        completed += 1
                        self.report(ProgressEvent("batch", completed, total, r, b, None,
                                                  int(out.robust.sum()), hi - lo))
        except KeyboardInterrupt:
            # keep what the finished attacks did (a stage half-written when the interrupt came is
            # not saved: the previous save stands)
            if folder is not None and unsaved[0] and not writing[0]:
                save()
                r_b = (state.attacks_done > 0) & ~state.done
                if bool(r_b.any()):
                    r, b = (int(v) for v in r_b.nonzero()[0])
                    k = int(state.attacks_done[r, b])
                    self.report(ProgressEvent("saved", completed, total, r, b, labels[k - 1]))
            raise
        self.report(ProgressEvent("end", completed, total))
        return state
