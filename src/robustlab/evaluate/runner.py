"""The battery runner: per-sample worst case over attacks, honest for randomized models.

:func:`run_battery` evaluates a model on a dataset with a :class:`~robustlab.evaluate.Battery`
the way AutoAttack does (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks", Sec. 4-5), under the one verdict rule of
:mod:`robustlab.attacks.verdict`: each sample has an incumbent point (its clean input at first),
each attack runs on the samples whose incumbent does not yet fool every draw and proposes its
point, which replaces the incumbent only if it is at least as bad on fresh draws; on a
deterministic model this is AutoAttack's worst case exactly.

Randomized defenses get the treatment Athalye et al. (2018, "Obfuscated Gradients Give a False
Sense of Security", Sec. 4.3) asks for: when the model draws randomness (its
:class:`~robustlab.core.randomness.Stochastic` layers, or two forwards that differ on the clean
batch or at an attack's points), every comparison and the reported figure come from *fresh*
draws (never the attack's own), the figure is per sample the probability that a draw
classifies the incumbent correctly, a draw can average the softmax over ``ensemble`` forwards,
and ``repeats`` re-runs the whole battery with independent randomness to report mean and
standard deviation.

Randomness is explicit and derived, never taken from the clock or the global RNG: the attack
generator of every (repeat, batch, attack) and the seeds of the model's random layers at every
stage are derived from ``seed``, so a run repeats bit for bit on the same machine, and a run
resumed from its saved state (``state_dir``) gives exactly the numbers of an uninterrupted one.
The state is saved after every batch and, inside a batch, after any attack that ends more than
``save_interval`` (60 s) after the last save, so an interrupted run loses at most about a minute
plus one attack.

``n`` samples are chosen by the one rule of the library (:func:`robustlab.data.select_subset`):
the deterministic class-balanced subset ``load_dataset(..., limit=n, seed=seed)`` keeps.

Under ``torchrun`` the batches are sharded: each rank attacks a contiguous range of whole
batches, every seed keeps the global batch index, and the per-sample results are gathered, so
every rank returns the result one process would (same seed, same batch size: the batch size,
not the number of ranks, is what a result depends on; see :func:`run_battery`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import (
    logits_of,
    merge_warnings,
    model_fn,
    sequence_warnings,
)
from ..attacks.checks import (
    EvalWarning,
    gradient_warnings,
    late_randomness_warning,
    probability_warning,
    randomness_warnings,
    train_mode_warning,
)
from ..attacks.model import DETECTION_BATCH, LateRandomness
from ..attacks.verdict import VERDICT_DRAWS
from ..core.bpda import BPDA_MODES, BPDAMode
from ..core.checkpoint import content_hash
from ..core.checks import check_int
from ..core.distributed import World, current_world
from ..core.errors import InputError
from ..core.types import ThreatModel
from .battery import Battery, create_battery, jsonable
from .fast import check_fast, prepare_fast
from .fingerprint import behaviour_key, key_mismatch
from .job import Job, ProgressCallback, ProgressEvent, derive_seed, seed_global
from .result import AttackSummary, EvalResult, indices_hash, mean_std
from .samples import Samples
from .state import EvalState

__all__ = [
    "STATE_DIR_NAME",
    "ProgressCallback",
    "ProgressEvent",
    "derive_seed",
    "ensemble_predict",
    "model_hash",
    "model_name",
    "run_battery",
    "state_dir_for",
    "versions",
]

logger = logging.getLogger(__name__)

STATE_FORMAT = 5  # 5: per-batch counters and pending incumbents, one file per rank
STATE_DIR_NAME = "eval-state"
"""The evaluation-state folder's name inside a run folder (``runs/<name>/eval-state``)."""
FINGERPRINT_PROBE = 16
"""Images of the first batch whose outputs, with fixed randomness, are part of the state key."""


def model_hash(model: nn.Module) -> str:
    """SHA-256 over every state-dict tensor of ``model`` (name, dtype, shape, bytes).

    The same logic as the checkpoint content hash (:func:`robustlab.core.checkpoint
    .content_hash`) with an empty header, so it identifies the weights, not the file.
    """
    return content_hash(dict(model.state_dict()), {})


def model_name(model: nn.Module) -> str:
    """A short name for tables: the recipe's architecture and conversions, else the class name."""
    recipe = getattr(model, "robustlab_recipe", None)
    if not isinstance(recipe, Mapping) or "arch" not in recipe:
        return type(model).__name__
    parts = [str(recipe["arch"])]
    for conv in recipe.get("conversions", []) or []:
        if isinstance(conv, Mapping):
            parts.append(str(conv.get("name", conv.get("conversion", "conversion"))))
        else:
            parts.append(str(conv))
    return "+".join(parts)


def versions() -> dict[str, str]:
    """Versions of robustlab, torch and python (for ledger rows)."""
    from .. import __version__

    return {"robustlab": __version__, "torch": torch.__version__, "python": platform.python_version()}


@torch.no_grad()
def ensemble_predict(model: nn.Module, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Class predictions from ``draws`` forward passes: argmax of the mean softmax.

    Each forward of a randomized model draws fresh randomness, so ``draws > 1`` predicts with
    the expectation over the defense's randomness (the ensemble prediction of the randomized
    defenses' papers). With one draw it is the plain argmax of the logits.
    """
    check_int(draws, "draws", 1)
    if draws == 1:
        return logits_of(model(x)).argmax(dim=1)
    probs: torch.Tensor | None = None
    for _ in range(draws):
        p = F.softmax(logits_of(model(x)).float(), dim=1)
        probs = p if probs is None else probs + p
    assert probs is not None
    return probs.argmax(dim=1)


def state_dir_for(run_folder: str | os.PathLike[str]) -> Path:
    """The default evaluation-state folder of a run: ``<run folder>/eval-state``.

    Pass it as ``run_battery(state_dir=...)`` so that every evaluation of the run can resume
    (the CLI passes the folder of the evaluated checkpoint's run). States of different models,
    data or settings live side by side in it, one subfolder per state key.
    """
    return Path(run_folder) / STATE_DIR_NAME


@contextlib.contextmanager
def _fp32_and_own_rng(dev: torch.device) -> Iterator[None]:
    """The numerics and the randomness of an evaluation, restored afterwards.

    fp32 only: TF32 matmuls and convolutions off, and no autocast, because attacks follow
    gradients and low precision masks them (a TF32 or fp16 forward rounds away the small
    input gradients a PGD step or a margin comparison needs, and an evaluation under it reports
    gradient masking as robustness). ``cudnn.benchmark`` is left as the caller set it (off by
    default: deterministic algorithm choice); turn it on yourself for speed at the cost of bit
    repeatability.

    Randomness: the global CPU (and ``dev``'s CUDA) generator is forked, so the seeds
    :func:`~robustlab.evaluate.job.seed_global` sets per stage never leak to the caller.
    """
    b = torch.backends
    # torch >= 2.9 has per-backend fp32_precision flags; reading the legacy allow_tf32 flags
    # after a caller set the new ones raises, so the new ones are used where they exist
    flags = []
    for path in ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn"):
        obj: Any = b
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(getattr(obj, "fp32_precision", None), str):
            flags.append(obj)
    old_precision = [m.fp32_precision for m in flags]
    old_legacy = None if flags else (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    autocast_off = (torch.autocast(device_type=dev.type, enabled=False) if dev.type in ("cpu", "cuda")
                    else contextlib.nullcontext())
    try:
        for m in flags:
            m.fp32_precision = "ieee"
        if old_legacy is not None:
            b.cuda.matmul.allow_tf32 = False
            b.cudnn.allow_tf32 = False
        with torch.random.fork_rng(devices=devices), autocast_off:
            yield
    finally:
        for m, value in zip(flags, old_precision, strict=True):
            m.fp32_precision = value
        if old_legacy is not None:
            b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = old_legacy


def _agree(world: World, key: str, config: Mapping[str, Any], randomness: str) -> str:
    """Check that every rank evaluates the same thing (same key), and return rank 0's randomness.

    A model built differently on some rank (an unseeded initialisation, another checkpoint)
    would silently mix two models into one result; this refuses it on every rank at once.
    """
    if not world.distributed:
        return randomness
    mine: dict[str, Any] = {"key": key, "config": dict(config), "randomness": randomness}
    views = world.all_gather(mine)
    first = views[0]
    for rank, view in enumerate(views):
        if view["key"] == first["key"]:
            continue
        old, new = first["config"], view["config"]
        reasons = key_mismatch(old.get("behaviour") or {}, new.get("behaviour") or {})
        reasons += [f"{k} differs" for k in sorted(set(old) | set(new))
                    if k != "behaviour" and old.get(k) != new.get(k)]
        raise InputError(
            f"rank {rank} evaluates something else than rank 0 ({'; '.join(reasons) or 'the key differs'}): "
            "every rank must evaluate the same model on the same data with the same battery and options; "
            "build the model identically on every rank (a fixed seed, or robustlab.load of one checkpoint)"
        )
    return str(first["randomness"])


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def run_battery(
    model: nn.Module,
    data: Any,
    battery: Battery | str,
    *,
    threat: ThreatModel | None = None,
    battery_options: Mapping[str, Any] | None = None,
    n: int | None = None,
    batch_size: int = 256,
    repeats: int = 1,
    ensemble: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    name: str | None = None,
    bpda: BPDAMode | None = None,
    train_mode_ok: bool = False,
    save_interval: float = 60.0,
    draws: int = VERDICT_DRAWS,
    world: World | None = None,
    fast: Iterable[str] = (),
) -> EvalResult:
    """Evaluate ``model`` with ``battery``: clean accuracy and per-sample worst-case robustness.

    For every repeat and batch, :func:`robustlab.attacks.run_sequence` (the loop AutoAttack
    uses too) under the one verdict rule (:mod:`robustlab.attacks.verdict`): each sample has an
    incumbent point, its clean input at first; the attacks run in order, each on every sample
    whose incumbent does not yet fool every draw, and each proposes its point, which replaces
    the incumbent only if it is at least as bad on ``draws`` fresh draws. The reported figure
    is, per sample, the probability that a draw (one forward, or the mean softmax over
    ``ensemble`` forwards) classifies the final incumbent correctly, estimated on ``draws``
    new draws after it was chosen, averaged over samples; clean accuracy likewise at the clean
    inputs. On a deterministic model this is the usual 0/1 worst case, one forward per point.

    Whether the model is randomized is established before any attack: by its
    :class:`core.randomness.Stochastic` layers (frozen ones included: they are evaluated as
    randomized), or empirically (two forwards of the first batch differ in some row). A model
    that looked deterministic but whose outputs at an attack's points are random is evaluated
    again from the start under the randomized rule, and the result says so
    (``config["randomness"]`` is ``"protocol"``, ``"frozen"``, ``"detected"`` or ``"none"``;
    ``config["late_randomness"]``). The sanity checks of :mod:`robustlab.attacks.checks` land
    in ``result.warnings``.

    Per-attack numbers (:class:`~robustlab.evaluate.AttackSummary`): the cumulative worst-case
    robust accuracy after that attack, and the attack's own success rate on the samples it saw.

    The model's train/eval mode is not changed, and the model is not moved. The seeds of its
    random layers are set per stage from ``seed`` (:func:`core.randomness.seed_stochastic`);
    they keep the last one afterwards. The global generator is seeded per stage too (for
    models that draw from it), inside ``torch.random.fork_rng``: the caller's is left as it was.

    Numerics: attacks run in fp32. TF32 matmuls and convolutions are switched off for the call
    and autocast is disabled (low precision rounds away the small gradients attacks follow and
    would report gradient masking as robustness); the flags are restored afterwards, and
    ``cudnn.benchmark`` is left as the caller set it (off by default, for repeatable numbers).
    This holds for the fast paths too: they never lower the precision.

    Fast paths (``fast``, opt-in, never default; :mod:`robustlab.evaluate.fast`):
    ``"channels_last"`` attacks a copy of the model in that memory format, ``"compile"`` a
    ``torch.compile`` of it. Each is checked on the first images before any attack (forward and
    backward at two seeds of the model's randomness) and dropped with a warning when it fails
    or its logits differ from the plain model's by more than
    :data:`~robustlab.evaluate.fast.FAST_RTOL` of a row's scale. They change logits at
    float-rounding level only (about 2e-7 of a row's scale on resnet-mini), so per-sample
    results equal the plain path's except at near-ties; the paths in use are recorded
    (``config["fast"]``, part of the state key and of the state folder, so a resumed state
    never mixes results with and without them) with what was asked for, any fallback and the
    differences measured (``config["fast_check"]``). Randomized models keep their treatment
    (the random layers stay visible through the wrappers), and the fingerprint, the model hash
    and the name are the caller's model's.

    Sharded evaluation: launched by ``torchrun --nproc_per_node N`` (``world``, default
    :func:`core.distributed.current_world`, which joins torchrun's process group; gloo on
    CPU, NCCL on GPUs), each rank attacks a contiguous range of whole batches
    (:func:`core.distributed.shard_range` over the batches), with every seed derived from the
    *global* batch index, and the per-sample results are gathered to every rank: every rank
    returns the same result, identical to a one-process run with the same ``seed`` and
    ``batch_size``. It is the batch size, not the number of ranks, that a result depends on (a
    random layer may share one draw across its batch, so the batch is the unit of randomness;
    seeds are per batch, not per sample). Every rank must call it, with the same arguments (to
    evaluate on one rank of a torchrun job only, pass ``world=World()``); every rank checks that
    the others evaluate the same thing (the state key: weights, behaviour, data, battery,
    options) and refuses a model built differently on some rank. Progress events count each
    rank's own batches (:class:`ProgressEvent`). With ``state_dir`` each rank saves its own file
    (``state.rank<r>-of-<N>.safetensors``); a resumed run, on any number of ranks, takes every
    batch some file of the same key finished (or got furthest with), so an interrupted 2-rank
    run resumed on 2 ranks or on 1 gives the uninterrupted numbers. A rank that dies makes the
    others fail at the next collective (its timeout: :data:`core.distributed.DEFAULT_TIMEOUT`)
    with a :class:`RobustlabError`; nothing is returned. ``result.seconds`` is the time spent
    on the batches, summed over the ranks.

    Args:
        model: the classifier, taking [0, 1] images (see ``attacks.logits_of`` for outputs).
        data: a dataset whose items are ``(image, label)`` (``robustlab.data.load_dataset``),
            or an ``(x, y)`` pair of tensors.
        battery: a :class:`Battery`, or a name in :data:`~robustlab.evaluate.BATTERIES`.
        threat: the threat model of a named battery; default the dataset's default threat.
        battery_options: options of a named battery (e.g. ``{"surrogate": net}`` for ``full``).
        n: evaluate ``n`` samples, chosen by the library's one rule for "``n`` samples"
            (:func:`robustlab.data.select_subset` with ``seed``): the deterministic,
            class-balanced subset that ``load_dataset(name, split, limit=n, seed=seed)`` keeps,
            in the original order (so ``run_battery(m, load_dataset(name, "test"), b, n=100)``
            and ``run_battery(m, load_dataset(name, "test", limit=100), b)`` attack the same
            images; not the first ``n``, whose classes depend on how the files are ordered).
            Default all. ``result.indices`` and ``config["indices_sha256"]`` say which.
        batch_size: samples per batch (also the unit of saved progress).
        repeats: run the whole battery this many times with independent randomness (derived
            from ``seed``) and report mean and standard deviation.
        ensemble: one draw of the verdict is the mean softmax over this many forwards (a
            defense used as an ensemble), for randomized models.
        draws: ``k``, the fresh draws of every estimate on a randomized model (the comparisons
            that choose each sample's point, and the final figure); a deterministic model is
            judged by one forward.
        seed: the root of every generator of the run.
        device: where the inputs go; default the model's device. The model must be there.
        state_dir: save the per-sample state under ``state_dir/<key>/state.safetensors`` (one
            file per rank under torchrun) and
            resume from it: after every batch, and after any attack that ends more than
            ``save_interval`` seconds after the last save (a resumed batch continues with the
            next attack, with exactly an uninterrupted run's numbers); on ``KeyboardInterrupt``
            the last finished attack's state is saved before the interrupt propagates. The key
            hashes the model weights, the data (name, split, pixel content) and its indices,
            the battery configuration, ``seed``, ``repeats``, ``ensemble``, ``batch_size``,
            ``bpda`` and the fast paths in use; a finished state is returned at once. A run folder's default is
            :func:`state_dir_for` (``<run folder>/eval-state``).
        progress: called with a :class:`ProgressEvent` at the start, after every attack and
            batch, and at the end.
        name: the model's name for tables; default :func:`model_name`.
        bpda: run every gradient attack of the battery with the model's BPDA layers in this
            mode (``"identity"``, ``"smooth"`` or ``"bypass"``; Athalye et al., 2018, Sec. 4.1); the
            verdict always uses the exact forward.
        train_mode_ok: evaluate a model in training mode (refused otherwise: batch-norm
            statistics would be updated by the attacks, dropout would be active).
        save_interval: seconds between saves inside a batch (``0``: after every attack);
            used with ``state_dir`` only.
        world: the processes sharing the run (see "Sharded evaluation" above); default
            :func:`core.distributed.current_world` (one process unless launched by torchrun).
        fast: opt-in fast paths for the model under attack, names of
            :data:`~robustlab.evaluate.fast.FAST_PATHS` (``("channels_last",)``,
            ``("compile",)``, both, or ``()``: none); see "Fast paths" above.

    Returns:
        An :class:`~robustlab.evaluate.EvalResult`.

    Raises:
        UnknownNameError: for an unknown battery name (listing the known ones).
        InputError: for bad arguments (an unknown fast path among them), ``n`` larger than the data, a named battery with no
            threat, a model on another device than ``device``, or a model in training mode;
            under torchrun, when the ranks do not evaluate the same model, data and battery.
        RobustlabError: under torchrun, when another rank died or a collective timed out.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batch_size = check_int(batch_size, "batch_size", 1)
    repeats = check_int(repeats, "repeats", 1)
    ensemble = check_int(ensemble, "ensemble", 1)
    seed = check_int(seed, "seed", 0)
    if bpda is not None and bpda not in BPDA_MODES:
        raise InputError(f"unknown BPDA mode {bpda!r}; use 'identity', 'smooth', 'bypass' or None")
    if isinstance(save_interval, bool) or not isinstance(save_interval, (int, float)) or not save_interval >= 0:
        raise InputError(f"save_interval must be a number of seconds >= 0, got {save_interval!r}")
    samples = Samples(data, n, seed)
    if isinstance(battery, str):
        threat = threat if threat is not None else samples.threat
        if threat is None:
            raise InputError(
                f"battery {battery!r} needs a threat model; pass threat=ThreatModel(norm, eps)"
            )
        battery = create_battery(battery, threat, **dict(battery_options or {}))
    elif not isinstance(battery, Battery):
        raise InputError(f"battery must be a Battery or a battery name, got {type(battery).__name__}")

    dev = _model_device(model) if device is None else torch.device(device)
    mdev = _model_device(model)
    if mdev.type != dev.type or (dev.index is not None and mdev.index not in (None, dev.index)):
        raise InputError(
            f"the model is on {mdev} but device={dev} was asked for; move it with model.to({str(dev)!r})"
        )
    if model.training and not train_mode_ok:
        raise InputError(
            "run_battery got a model in training mode: the attacks would update its batch-norm "
            "statistics and dropout would be active; call model.eval() first, or pass "
            "train_mode_ok=True if training mode is what you mean to evaluate"
        )
    draws = check_int(draws, "draws", 1)
    fast = check_fast(fast)
    if world is None:
        world = current_world()
    elif not isinstance(world, World):
        raise InputError(f"world must be a robustlab.core.distributed.World, got {type(world).__name__}")
    mhash = model_hash(model)
    recipe = getattr(model, "robustlab_recipe", None)
    header = getattr(model, "robustlab_header", None)
    n_total = samples.n
    config: dict[str, Any] = {
        "format": STATE_FORMAT,
        "model_hash": mhash,
        "dataset": samples.describe(),
        "n": n_total,
        "battery": battery.config(),
        "seed": seed,
        "repeats": repeats,
        "ensemble": ensemble,
        "draws": draws,
        "batch_size": batch_size,
        "indices_sha256": indices_hash(samples.indices),
    }
    if bpda is not None:
        config["bpda"] = bpda
    if model.training:
        config["train_mode"] = True
    with _fp32_and_own_rng(dev):
        probe_x, _ = samples.batch(0, min(n_total, DETECTION_BATCH))
        probe_x = probe_x.to(dev)
        # behaviour, not weights alone: every layer's configuration, the outputs on a fixed probe
        # and every attack's full configuration (robustlab.evaluate.fingerprint)
        behaviour, problems = behaviour_key(model, battery, probe_x[:FINGERPRINT_PROBE], seed=0)
        config["behaviour"] = behaviour
        # the model the attacks call: the caller's, or its fast paths, checked on the probe; the
        # paths in use are part of the key and the slot (results with and without them never mix)
        prepared = prepare_fast(model, fast, probe_x[:FINGERPRINT_PROBE], bpda=bpda)
        if prepared.applied:
            config["fast"] = list(prepared.applied)
        key = hashlib.sha256(
            json.dumps({**config, "indices": samples.indices}, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        # one state slot per (weights, data, battery name, seed, sizes, fast paths in use): a state
        # there with another key is a changed model or battery, started over with the reason said
        slot = hashlib.sha256(json.dumps(
            [mhash, config["dataset"], samples.indices, battery.name, list(battery.labels), seed, repeats,
             batch_size] + ([config["fast"]] if "fast" in config else []),
            sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        folder = Path(state_dir) / slot[:20] if state_dir is not None else None
        if folder is not None and problems:
            if world.main:
                warnings.warn("this evaluation cannot be resumed (its state is not saved): "
                              + "; ".join(problems), stacklevel=2)
            config["not_resumable"] = problems
            folder = None
        # randomness, established on the first batch (the protocol, else two forwards differ),
        # with the global generator seeded so every rank probes the same draws. These forwards
        # also draw a frozen model's one inference path (a frozen layer draws at its first
        # forward, from a generator forked from the global one unless seeded): from the seed, the
        # same on every rank, not at whichever batch a rank happens to start with
        seed_global(derive_seed(seed, "detect"), dev)
        randomness = _agree(world, key, config, model_fn(prepared.model, probe_x).randomness)
        if fast:  # what was asked for and measured: recorded, outside the key
            config["fast_check"] = prepared.record()
        if isinstance(header, Mapping) and header.get("content_hash"):
            config["checkpoint_hash"] = str(header["content_hash"])
        job = Job(prepared.model, samples, battery, config, key, folder, dev, seed, batch_size, bpda,
                  save_interval, progress, world)
        try:
            state = job.run(randomness)
        except LateRandomness:
            # random only near the decision boundary: everything is judged again as randomized
            # (on every rank: the ranks agree on it when they gather their shards)
            job.config["late_randomness"] = True
            state = job.run("detected", fresh=True)
    return _result(state, battery, samples, name or model_name(model), recipe, job.config)


def _warnings(state: EvalState, battery: Battery, config: Mapping[str, Any]) -> list[EvalWarning]:
    """The sanity checks of a finished run, from its state (so a resumed run reports them too)."""
    found: list[EvalWarning] = []
    if config.get("train_mode"):
        found.append(train_mode_warning(f"battery {battery.name!r}"))
    if config.get("late_randomness"):
        found.append(late_randomness_warning(f"battery {battery.name!r}"))
    found += randomness_warnings(str(config.get("randomness", "none")),
                                 any(a.expects_randomness for a in battery.attacks), f"battery {battery.name!r}")
    rows, checked = (int(v) for v in state.probability_rows.sum(dim=(0, 1)))
    prob = probability_warning(rows, checked)
    if prob is not None:
        found.append(prob)
    for i, label in enumerate(battery.labels):
        evals, zero, nonfinite = (int(v) for v in state.gradients[:, :, i].sum(dim=(0, 1)))
        found += gradient_warnings(evals, zero, nonfinite, label)
    broken = [int(state.success[:, i].sum()) for i in range(len(battery.labels))]
    seen = [int(state.seen[:, i].sum()) for i in range(len(battery.labels))]
    found += sequence_warnings(battery.attacks, broken, seen)
    return list(merge_warnings(found))


def _result(
    state: EvalState,
    battery: Battery,
    samples: Samples,
    name: str,
    recipe: Any,
    config: dict[str, Any],
) -> EvalResult:
    config = {**config, "warnings": [w.to_dict() for w in _warnings(state, battery, config)]}
    clean_accs = state.p_clean.mean(dim=1).tolist()
    robust_accs = state.p_robust.mean(dim=1).tolist()
    clean_mean, clean_std = mean_std(clean_accs)
    robust_mean, robust_std = mean_std(robust_accs)
    per_attack: dict[str, AttackSummary] = {}
    configs = battery.config()["attacks"]
    for i, label in enumerate(battery.labels):
        # cumulative: the incumbents' estimate after this attack (the estimate that chose them)
        mean, std = mean_std(state.p_after[:, i].mean(dim=1).tolist())
        seen = int(state.seen[:, i].sum())
        broken = int(state.success[:, i].sum())
        cfg = {k: v for k, v in configs[i].items() if k != "label"}
        per_attack[label] = AttackSummary(
            label=label,
            config=cfg,
            robust_acc=mean,
            robust_std=std,
            success_rate=broken / seen if seen else float("nan"),
            seen=seen,
            broken=broken,
            forward_passes=int(state.forward[:, :, i].sum()),
            backward_passes=int(state.backward[:, :, i].sum()),
            seconds=float(state.attack_seconds[:, :, i].sum()),
        )
    return EvalResult(
        clean_acc=clean_mean,
        clean_std=clean_std,
        robust_acc=robust_mean,
        robust_std=robust_std,
        per_attack=per_attack,
        n=samples.n,
        indices=list(samples.indices),
        seconds=float(state.seconds),
        config=config,
        clean_correct=state.clean.clone(),
        robust=state.robust.clone(),
        success={lab: state.success[:, i].clone() for i, lab in enumerate(battery.labels)},
        seen={lab: state.seen[:, i].clone() for i, lab in enumerate(battery.labels)},
        clean_accs=[float(v) for v in clean_accs],
        robust_accs=[float(v) for v in robust_accs],
        model_hash=str(config["model_hash"]),
        model_name=name,
        recipe=jsonable(recipe) if isinstance(recipe, Mapping) else {},
        dataset=samples.name,
        versions=versions(),
        p_clean=state.p_clean.clone(),
        p_robust=state.p_robust.clone(),
        p_select=state.p_select.clone(),
    )
