"""The stochastic-downsampling study (``stochastic-downsampling.txt``), run honestly.

Recipe ``sd-study`` (``robustlab run sd-study --profile quick|cpu|full``):

1. **Baseline**: the architecture trained with cross-entropy until the training loss settles
   (the paper's "Baseline ... until the training loss converges", App. A.3), or a checkpoint
   given as ``baseline=``.
2. **Finetuning** (paper Sec. 3 and App. A.3): every method converts the baseline's strided
   convolutions (:func:`robustlab.defenses.convert_downsampling`) and is finetuned for 5 epochs
   with SGD and cosine annealing at a low learning rate, once per seed. Scaled to Fashion-MNIST:
   the paper finetunes ImageNet-pretrained ConvNeXts at 5e-5 (ImageNet-100) to 4e-4 (CIFAR-100);
   a ``resnet-mini`` trained from scratch on 28x28 images needs 1e-2 for the new downsamplers to
   be absorbed in 5 epochs (the base rate of its training is 0.1), on a stratified subset of the
   training set whose size each profile states.
3. **Evaluation** on the first ``eval_n`` test images, L-inf, the paper's protocol (Sec. 4.1:
   eps = 4/255, alpha = 0.01) by default:

   - Table 1: i.i.d. (clean) accuracy, PGD, AutoAttack standard, Square alone, and the mean
     corruption error on a Fashion-MNIST-C generated here (:mod:`robustlab.data.corruptions`);
   - the honest columns the paper lacks: PGD with EOT over 20 and 64 draws, AutoAttack ``rand``
     (APGD-CE and APGD-DLR with EOT-20), PGD transferred from the model's deterministic twin
     (:func:`robustlab.defenses.deterministic_twin`) and the per-sample worst case over every
     attack run on the model;
   - Table 3: AddNoise standard-deviation sweep with and without SD (AutoAttack's attacks as
     cumulative columns, plus AutoAttack ``rand``); Table 4: PGD and AutoAttack transferred
     from the baseline; Table 5: samples per pixel.

Randomized models are judged by a fresh prediction on each adversarial example (the evaluator
never reuses the draws an attack optimized against). Every finished piece is stored under the
run folder (checkpoints, ``evals/*.json``, every attack's row in ``ledger.sqlite``) and skipped
when the recipe runs again, so a killed run resumes. ``report.md``, ``results.json`` and ``clean_vs_robust.png`` are written at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import EOT, PGD, AutoAttack, Square, Transfer
from ..checkpoints import load
from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError
from ..core.metrics import predict
from ..core.randomness import is_stochastic, seed_stochastic
from ..core.types import ThreatModel
from ..data import get_info, load_dataset, make_loader
from ..data.base import ImageDataset
from ..defenses import convert_downsampling, deterministic_twin
from ..evaluate import Battery, Ledger, create_battery, evaluate_corruptions, mean_std, run_battery
from ..models import create_model
from ..report import markdown_table
from ..train import Callback, TrainConfig, Trainer

logger = logging.getLogger(__name__)

__all__ = ["PROFILES", "SDStudyConfig", "Variant", "run_sd_study", "study_config", "summary_markdown"]


@dataclass(frozen=True)
class Variant:
    """One model of the study: a downsampling method with options, or the baseline itself.

    Attributes:
        label: the row label (the paper's naming).
        method: a :data:`robustlab.defenses.METHODS` name; ``None`` for the unconverted baseline.
        options: the method's options as ``(name, value)`` pairs.
    """

    label: str
    method: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def slug(self) -> str:
        """A folder name for the variant."""
        return re.sub(r"[^a-z0-9.]+", "-", self.label.lower()).strip("-")

    def opts(self) -> dict[str, Any]:
        """The options as a dict."""
        return dict(self.options)


BASELINE = Variant("Baseline")


def addnoise(std: float) -> Variant:
    """AddNoise with Gaussian noise of standard deviation ``std`` after the strided conv."""
    return Variant(f"AddNoise (std={std:g})", "addnoise", (("std", std),))


def sd_addnoise(std: float) -> Variant:
    """SD followed by Gaussian noise of standard deviation ``std``."""
    return Variant(f"SD + AddNoise (std={std:g})", "sd+addnoise", (("std", std),))


def sd_spp(spp: int) -> Variant:
    """SD with ``spp`` samples per output pixel (Table 5)."""
    return Variant("SD" if spp == 2 else f"SD (spp={spp})", "sd", () if spp == 2 else (("spp", spp),))


SD = Variant("SD", "sd")
ADDNOISE = addnoise(0.75)  # the paper's AddNoise row in Tables 1 and 4, SD's main rival in the verdict
# The paper's AddNoise (uniform) gives no range; U[-0.5, 0.5] has the width of torch.rand.
ADDNOISE_UNIFORM = Variant("AddNoise (uniform)", "addnoise", (("distribution", "uniform"), ("std", 0.5)))

TABLE1_ALL = (
    BASELINE,
    Variant("ASAP", "asap"),
    Variant("FLC", "flc"),
    Variant("AvgPool", "avgpool"),
    Variant("DropOut + AvgPool", "dropout-avgpool"),
    Variant("BlurPool", "blurpool"),
    ADDNOISE_UNIFORM,
    ADDNOISE,
    SD,
    sd_addnoise(0.15),
)
TABLE4 = (BASELINE, ADDNOISE, SD, sd_addnoise(0.15))


@dataclass(frozen=True)
class SDStudyConfig:
    """Everything the study's numbers depend on; :data:`PROFILES` holds the named settings."""

    profile: str = "quick"
    dataset: str = "fashion-mnist"
    model: str = "resnet-mini"
    baseline_epochs: int = 4
    baseline_lr: float = 0.1
    baseline_limit: int | None = None
    finetune_epochs: int = 5
    finetune_lr: float = 0.01
    finetune_limit: int | None = 5000
    batch_size: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    eps: float = 4 / 255
    pgd_steps: int = 20
    pgd_alpha: float = 0.01
    eval_n: int = 200
    clean_n: int | None = None
    eval_batch_size: int = 200
    square_queries: int = 5000
    autoattack: bool = True
    eot_draws: tuple[int, ...] = (20, 64)
    aa_rand: bool = True
    aa_rand_eot: int = 20
    twin_transfer: bool = True
    corruption_n: int = 500
    table1: tuple[Variant, ...] = TABLE1_ALL
    noise_sweep: tuple[float, ...] = (0.05, 0.15, 0.5, 1.0)
    spp_sweep: tuple[int, ...] = (1, 2, 4, 8, 16)
    transfer_from_baseline: tuple[Variant, ...] = TABLE4

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved as the run's resolved config)."""
        d = asdict(self)
        for key in ("table1", "transfer_from_baseline"):
            d[key] = [v.label for v in getattr(self, key)]
        return d


PROFILES: dict[str, SDStudyConfig] = {
    # The demo's slice: one seed, five methods, cheap attacks; minutes on 2 CPU cores. Without
    # AutoAttack its verdict draws no conclusion about adaptive attacks (see the cpu profile).
    "quick": SDStudyConfig(
        profile="quick", seeds=(0,), finetune_limit=2000, eval_n=100, clean_n=2000,
        pgd_steps=10, square_queries=200, autoattack=False, eot_draws=(20,), aa_rand=False,
        corruption_n=200, table1=(BASELINE, Variant("AvgPool", "avgpool"), ADDNOISE, SD, sd_addnoise(0.15)),
        noise_sweep=(), spp_sweep=(1, 2), transfer_from_baseline=TABLE4,
    ),
    # Every table and column of the study at a size a 2-core CPU finishes in a few hours: three
    # seeds, every Table 1 method, AutoAttack standard and rand at the reference settings (100
    # iterations, Square 5000 queries inside AutoAttack), EOT-20 and EOT-64, on 100 attacked
    # images; Square alone at 1000 queries.
    "cpu": SDStudyConfig(
        profile="cpu", seeds=(0, 1, 2), baseline_epochs=6, finetune_limit=2000, eval_n=100, clean_n=2000,
        pgd_steps=10, square_queries=1000, eot_draws=(20, 64), corruption_n=200, noise_sweep=(0.5,),
        spp_sweep=(1, 2, 4, 8, 16),
    ),
    # The paper's scale, for a GPU: full finetuning set, 1000 test images, Square at 5000.
    "full": SDStudyConfig(
        profile="full", seeds=(0, 1, 2), baseline_epochs=15, finetune_limit=None, eval_n=1000,
        clean_n=None, eval_batch_size=500, corruption_n=10000,
        noise_sweep=(0.05, 0.1, 0.15, 0.3, 0.5, 0.75, 0.9, 1.0),
    ),
}


# ---------------------------------------------------------------------------------------------
# models


def _bits(mask: torch.Tensor) -> str:
    """A boolean per-sample mask as a string of 0/1 (compact in JSON)."""
    return "".join("1" if b else "0" for b in mask.tolist())


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


class _Study:
    def __init__(self, cfg: SDStudyConfig, out: Path, device: torch.device, baseline: str | None,
                 log: Callable[[str], None], callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.report_only = False
        self.out = out
        self.device = device
        self.baseline_path = baseline
        self.log = log
        self.info = get_info(cfg.dataset)
        self.threat = ThreatModel("linf", cfg.eps)
        self.test = load_dataset(cfg.dataset, "test", limit=cfg.clean_n, seed=0)
        self.eval_set = load_dataset(cfg.dataset, "test", limit=cfg.eval_n, seed=0)
        self._finetune_set: ImageDataset | None = None
        self._baseline: nn.Module | None = None
        self.timings: dict[str, float] = {}

    # -- training ----------------------------------------------------------------------------

    def baseline(self) -> nn.Module:
        if self._baseline is not None:
            return self._baseline
        cfg = self.cfg
        if self.baseline_path is not None:
            self.log(f"baseline: {self.baseline_path}")
            model = load(self.baseline_path, device=self.device)
        else:
            path = self.out / "baseline" / "model.safetensors"
            if path.exists():
                model = load(path, device=self.device)
            else:
                self.log(f"baseline: training {cfg.model} for {cfg.baseline_epochs} epochs")
                t0 = time.perf_counter()
                train = load_dataset(cfg.dataset, "train", limit=cfg.baseline_limit, seed=0)
                net = create_model(cfg.model, num_classes=self.info.num_classes, in_channels=self.info.in_channels,
                                   mean=self.info.mean, std=self.info.std, seed=0)
                tcfg = TrainConfig(epochs=cfg.baseline_epochs, batch_size=cfg.batch_size, lr=cfg.baseline_lr,
                                   schedule="onecycle", seed=0)
                model = Trainer(net, "standard", tcfg, out_dir=self.out / "baseline", device=self.device,
                                dataset_name=cfg.dataset, callbacks=self.callbacks).fit(train, resume=True).model
                self.timings["baseline training"] = time.perf_counter() - t0
        self._baseline = model.to(self.device).eval()
        return self._baseline

    def finetune_set(self) -> ImageDataset:
        if self._finetune_set is None:
            self._finetune_set = load_dataset(self.cfg.dataset, "train", limit=self.cfg.finetune_limit, seed=0)
        return self._finetune_set

    def model(self, v: Variant, seed: int) -> nn.Module:
        """The baseline converted by ``v`` and finetuned with ``seed`` (cached on disk)."""
        if v.method is None:
            return self.baseline()
        cfg = self.cfg
        folder = self.out / "models" / v.slug / f"seed{seed}"
        path = folder / "model.safetensors"
        if path.exists():
            return load(path, device=self.device).eval()
        self.log(f"finetuning {v.label} (seed {seed}): {cfg.finetune_epochs} epochs on "
                 f"{len(self.finetune_set())} images")
        t0 = time.perf_counter()
        net = convert_downsampling(self.baseline(), v.method, **v.opts())
        seed_stochastic(net, 10_000 + seed)
        tcfg = TrainConfig(epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, lr=cfg.finetune_lr,
                           schedule="cosine", seed=seed)
        model = Trainer(net, "standard", tcfg, out_dir=folder, device=self.device,
                        dataset_name=cfg.dataset, callbacks=self.callbacks).fit(self.finetune_set(), resume=True).model
        self.timings["finetuning"] = self.timings.get("finetuning", 0.0) + time.perf_counter() - t0
        return model.eval()

    # -- evaluation --------------------------------------------------------------------------

    def _battery(self, model: nn.Module, battery: Battery, seed: int, name: str) -> dict[str, Any]:
        res = run_battery(model, self.eval_set, battery, threat=self.threat, n=len(self.eval_set),
                          batch_size=self.cfg.eval_batch_size, seed=seed, device=self.device,
                          state_dir=self.out / "eval-state", name=name)
        Ledger(self.out / "ledger.sqlite").add(res, extra={"recipe": "sd-study", "run": name,
                                                            "profile": self.cfg.profile})
        return {
            "acc": res.robust_acc,
            "clean_acc": res.clean_acc,
            "robust": _bits(res.robust[0]),
            "per_attack": {k: s.robust_acc for k, s in res.per_attack.items()},
            "seconds": res.seconds,
            "randomness": res.randomness,
            "warnings": [w.to_dict() for w in res.warnings],
        }

    def load(self, v: Variant, seed: int) -> dict[str, Any]:
        """Everything evaluated so far for (variant, seed)."""
        path = self.out / "evals" / f"{v.slug}-seed{seed}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _pgd(self, grad: Any = None) -> PGD:
        return PGD(self.threat, steps=self.cfg.pgd_steps, step_size=self.cfg.pgd_alpha, grad=grad)

    def evaluate(self, v: Variant, seed: int, columns: Sequence[str]) -> dict[str, Any]:
        """The asked columns for (variant, seed), computing only what is not on disk yet."""
        path = self.out / "evals" / f"{v.slug}-seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        done = self.load(v, seed)
        todo = [c for c in columns if c not in done]
        if not todo or self.report_only:
            return done
        model = self.model(v, seed)
        stochastic = is_stochastic(model)
        done["stochastic"] = stochastic
        name = f"{v.label} s{seed}"
        for col in todo:
            t0 = time.perf_counter()
            self.log(f"  {v.label} (seed {seed}): {col}")
            if col == "clean":
                seed_stochastic(model, seed)
                with torch.no_grad():
                    ok = torch.cat([(predict(model, x.to(self.device)) == y.to(self.device)).cpu()
                                    for x, y in make_loader(self.test, 500)])
                done[col] = {"acc": float(ok.float().mean()), "correct": _bits(ok)}
            elif col == "mce":
                cr = evaluate_corruptions(model, self.test, n=min(self.cfg.corruption_n, len(self.test)),
                                          batch_size=500, seed=seed, device=self.device)
                done[col] = {"acc": cr.mce, **cr.to_dict()}
            elif col.startswith("pgd-eot") and not stochastic:
                if "pgd" not in done:
                    done["pgd"] = self._battery(model, Battery([self._pgd()], "pgd"), seed, name)
                done[col] = {**done["pgd"], "same_as": "pgd"}
            elif col in ("aa-rand", "twin") and not stochastic:
                done[col] = {"acc": None, "note": "deterministic model"}
            else:
                done[col] = self._battery(model, self._attack_battery(col, model), seed, name)
            done[col]["wall"] = round(time.perf_counter() - t0, 1)
            _write_json(path, done)
        return done

    def _attack_battery(self, col: str, model: nn.Module) -> Battery:
        cfg = self.cfg
        if col == "pgd":
            return Battery([self._pgd()], "pgd")
        if col.startswith("pgd-eot"):
            return Battery([self._pgd(EOT(int(col[len("pgd-eot"):])))], col)
        if col == "square":
            return Battery([Square(self.threat, cfg.square_queries)], "square")
        if col == "aa":
            return create_battery("standard", self.threat)
        if col == "aa-rand":
            return create_battery("rand", self.threat, eot=cfg.aa_rand_eot)
        if col == "twin":
            return Battery([Transfer(deterministic_twin(model), self._pgd())], "twin-transfer")
        if col == "tb-pgd":
            return Battery([Transfer(self.baseline(), self._pgd())], "baseline-transfer-pgd")
        if col == "tb-aa":
            return Battery([Transfer(self.baseline(), AutoAttack(self.threat, "standard"))], "baseline-transfer-aa")
        raise InputError(f"unknown study column {col!r}")


# ---------------------------------------------------------------------------------------------
# tables


ADV_COLUMNS = ("pgd", "square", "aa", "aa-rand", "twin", "tb-pgd", "tb-aa")


def _unique(variants: Sequence[Variant]) -> list[Variant]:
    seen: dict[str, Variant] = {}
    for v in variants:
        seen.setdefault(v.label, v)
    return list(seen.values())


def _cols_table1(cfg: SDStudyConfig) -> list[str]:
    cols = ["clean", "pgd"]
    if cfg.autoattack:
        cols.append("aa")
    cols += ["square", "mce", *[f"pgd-eot{n}" for n in cfg.eot_draws]]
    if cfg.aa_rand:
        cols.append("aa-rand")
    if cfg.twin_transfer:
        cols.append("twin")
    return cols


def _fmt(vals: Sequence[float], expect: int) -> str:
    """``mean ± std`` of percentages; ``—`` when empty; names the seed count when some are missing."""
    if not vals:
        return "—"
    m, s = mean_std(list(vals))
    text = f"{m:.2f} ± {s:.2f}" if len(vals) > 1 else f"{m:.2f}"
    return f"{text} ({len(vals)} of {expect} seeds)" if len(vals) < expect else text


def _stat(evals: Sequence[dict[str, Any]], col: str, key: str = "acc") -> str:
    vals = [100 * e[col][key] for e in evals if col in e and e[col].get(key) is not None]
    return _fmt(vals, len(evals))


def _worst(evals: Sequence[dict[str, Any]]) -> str:
    """Per seed, the fraction of samples that survived every attack run on that model."""
    return _fmt([100 * w for w in (_worst_value(e) for e in evals) if w is not None], len(evals))


def _complete(evals: Sequence[dict[str, Any]], cols: Sequence[str]) -> list[dict[str, Any]]:
    """Per seed, the evals once every column in ``cols`` is done, else ``{}``: a worst case counts
    only complete seeds (a partial run may hold only another table's transfer attack)."""
    return [e if all(c in e for c in cols) else {} for e in evals]


def _worst_mask(e: dict[str, Any]) -> list[float] | None:
    """Per sample, 1.0 when it survived every attack run on the model (one seed's evals)."""
    masks = [e[c]["robust"] for c in e if isinstance(e[c], dict) and "robust" in e[c]]
    if not masks:
        return None
    return [1.0 if all(m[i] == "1" for m in masks) else 0.0 for i in range(len(masks[0]))]


def _worst_value(e: dict[str, Any]) -> float | None:
    mask = _worst_mask(e)
    return None if mask is None else sum(mask) / len(mask)


def run_sd_study(
    out_dir: str | os.PathLike[str] = "runs/sd-study",
    config: SDStudyConfig | str = "quick",
    *,
    device: str | torch.device = "cpu",
    baseline: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
    report_only: bool = False,
) -> dict[str, Any]:
    """Run the stochastic-downsampling study and write ``report.md`` under ``out_dir``.

    Args:
        out_dir: the run folder (resumes from what it holds).
        config: a profile name in :data:`PROFILES` or a :class:`SDStudyConfig`.
        device: where models train and are attacked.
        baseline: a trained model checkpoint to start from instead of training one.
        log: called with one line per step (the CLI prints them).
        callbacks: training callbacks (progress bars) for the baseline and every finetuning.
        report_only: compute nothing; write the report from what ``out_dir`` holds (cells not
            computed yet show ``—``, and the report says it is partial only when some are
            missing), e.g. while a long run is still going. ``config.json`` is not rewritten.

    Returns:
        The numbers of every table (also written to ``results.json``).
    """
    if isinstance(config, str):
        if config not in PROFILES:
            raise InputError(f"unknown sd-study profile {config!r}; known profiles: {', '.join(PROFILES)}")
        config = PROFILES[config]
    cfg = config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.exists():
        prev = json.loads(saved.read_text())
        if prev.get("config") != json.loads(json.dumps(cfg.to_dict())):
            raise InputError(f"{out} holds a study run with another configuration; pass a new --out or "
                             "delete the folder to start over")
    if not report_only:  # a report leaves the run's record as the run wrote it
        _write_json(saved, {"config": cfg.to_dict(), "baseline": None if baseline is None else str(baseline)})
    say = log or (lambda s: logger.info("%s", s))
    t_start = time.perf_counter()
    study = _Study(cfg, out, torch.device(device), None if baseline is None else str(baseline), say, callbacks)
    study.report_only = report_only

    results: dict[str, Any] = {"config": cfg.to_dict(), "tables": {}}
    cols1 = _cols_table1(cfg)
    cols3 = ["clean", *(["aa"] if cfg.autoattack else ["pgd"]), "mce", *(["aa-rand"] if cfg.aa_rand else [])]
    sweep = [*[addnoise(s) for s in cfg.noise_sweep], *[sd_addnoise(s) for s in cfg.noise_sweep], SD]
    cols4 = ["tb-pgd", *(["tb-aa"] if cfg.autoattack else [])]
    cols5 = ["clean", "pgd", *[f"pgd-eot{n}" for n in cfg.eot_draws[:1]]]
    tables: dict[str, list[tuple[Variant, list[str]]]] = {
        "table1": [(v, cols1) for v in cfg.table1],  # Table 1 (+ honest columns)
        "table3": [(v, cols3) for v in _unique([BASELINE, *[w for w in cfg.table1 if w.method in (
            "addnoise", "sd+addnoise")], *sweep])],  # Table 3: AddNoise sweep with and without SD
        "table4": [(v, cols4) for v in cfg.transfer_from_baseline],  # Table 4: transfer from the baseline
        "table5": [(sd_spp(p), cols5) for p in cfg.spp_sweep],  # Table 5: samples per pixel
    }
    # seed-major: every table gets a complete seed before the next seed starts, so a long run
    # stopped early (or read with --report-only) has whole tables on fewer seeds; within a seed
    # what the verdict needs comes first (Table 1's baseline, SD and AddNoise rows, Table 5, the
    # transferred PGD of Table 4), then Table 1's other methods, the costly extras last (Table 4's
    # transferred AutoAttack, Table 3's sweep models)
    needed = (BASELINE.label, SD.label, ADDNOISE.label)  # the verdict's main comparisons
    first = [job for job in tables["table1"] if job[0].label in needed]
    rest = [job for job in tables["table1"] if job[0].label not in needed]
    order = [*first, *tables["table5"], *[(v, ["tb-pgd"]) for v, _ in tables["table4"]], *rest,
             *tables["table4"], *tables["table3"]]
    for s in cfg.seeds:
        for v, cols in order:
            study.evaluate(v, s, cols)
    # every table's entries from disk, so a model's worst case counts every attack it met
    for key, jobs in tables.items():
        results["tables"][key] = {v.label: [study.load(v, s) for s in cfg.seeds] for v, _ in jobs}
    t1 = results["tables"]["table1"]
    # partial: some cell of the run is not on disk (only a report-only pass can leave one out)
    missing = any(c not in study.load(v, s) for s in cfg.seeds for v, cols in order for c in cols)
    elapsed = time.perf_counter() - t_start
    results.update({
        "seconds": round(elapsed, 1), "compute_seconds": round(_compute_seconds(out), 1), "partial": missing,
        "device": str(device), "torch": torch.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "finetune_images": len(study.finetune_set()), "clean_images": len(study.test),
        "eval_images": len(study.eval_set),
    })
    _write_json(out / "results.json", results)
    _plot(out / "clean_vs_robust.png", t1, cfg)
    (out / "report.md").write_text(_report(results, cfg))
    return results


def _compute_seconds(out: Path) -> float:
    """Finetuning and evaluation time of everything the run folder holds (resumed runs included)."""
    total = 0.0
    for f in (out / "evals").glob("*.json"):
        total += sum(v.get("wall", 0.0) for v in json.loads(f.read_text()).values() if isinstance(v, dict))
    for f in (out / "models").glob("*/seed*/metrics.jsonl"):
        total += sum(json.loads(line).get("seconds", 0.0) for line in f.read_text().splitlines() if line.strip())
    return total


def _mean(evals: Sequence[dict[str, Any]], col: str) -> float | None:
    vals = [e[col]["acc"] for e in evals if col in e and e[col].get("acc") is not None]
    return sum(vals) / len(vals) if vals else None


def _plot(path: Path, t1: dict[str, list[dict[str, Any]]], cfg: SDStudyConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, evals in t1.items():
        clean = _mean(evals, "clean")
        pgd = _mean(evals, "pgd")
        worst = [w for w in (_worst_value(e) for e in evals) if w is not None]
        if clean is None or pgd is None:
            continue
        ax.scatter(100 * clean, 100 * pgd, marker="o", color="tab:blue")
        ax.annotate(label, (100 * clean, 100 * pgd), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if worst:
            w = 100 * sum(worst) / len(worst)
            ax.scatter(100 * clean, w, marker="x", color="tab:red")
            ax.plot([100 * clean, 100 * clean], [100 * pgd, w], color="grey", lw=0.6, ls=":")
    ax.scatter([], [], marker="o", color="tab:blue", label="PGD (the paper's protocol)")
    ax.scatter([], [], marker="x", color="tab:red", label="worst case over every attack (EOT included)")
    ax.set_xlabel("clean (i.i.d.) accuracy (%)")
    ax.set_ylabel(f"robust accuracy (%), L-inf eps = {cfg.eps:.4g}")
    ax.set_title(f"{cfg.model} on {cfg.dataset}: clean vs robust accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_COL_NAMES = {
    "clean": "i.i.d. acc", "pgd": "PGD", "aa": "AutoAttack", "square": "Square", "mce": "mCE ↓",
    "aa-rand": "AA rand (EOT)", "twin": "transfer from twin", "tb-pgd": "PGD (transfer)",
    "tb-aa": "AutoAttack (transfer)",
}


def _col_name(c: str) -> str:
    if c.startswith("pgd-eot"):
        return f"PGD + EOT-{c[len('pgd-eot'):]}"
    return _COL_NAMES.get(c, c)


def _table(rows: dict[str, list[dict[str, Any]]], cols: Sequence[str], worst: bool = False) -> str:
    out = []
    for label, evals in rows.items():
        row = {"method": label}
        for c in cols:
            row[f"{_col_name(c)} (%)"] = _stat(evals, c)
        if worst:
            row["worst case, all attacks (%)"] = _worst(_complete(evals, cols))
        out.append(row)
    return markdown_table(out)


def _aa_table(rows: dict[str, list[dict[str, Any]]], cfg: SDStudyConfig) -> str:
    out = []
    for label, evals in rows.items():
        row = {"method": label, "i.i.d. acc (%)": _stat(evals, "clean")}
        if cfg.autoattack:
            for a in ("apgd-ce", "apgd-t", "fab-t", "square"):
                row[f"{a} (%)"] = _fmt([100 * e["aa"]["per_attack"][a] for e in evals if "aa" in e], len(evals))
        else:
            row["PGD (%)"] = _stat(evals, "pgd")
        row["mCE ↓ (%)"] = _stat(evals, "mce")
        if cfg.aa_rand:
            row["AA rand (EOT) (%)"] = _stat(evals, "aa-rand")
        out.append(row)
    return markdown_table(out)


def _report(r: dict[str, Any], cfg: SDStudyConfig) -> str:
    t = r["tables"]
    seeds = len(cfg.seeds)
    ms = "mean ± std over 3 seeds" if seeds == 3 else f"over {seeds} seed(s)"
    ms += " (a cell finished on fewer seeds says so)"
    eots = ", ".join(f"EOT-{n}" for n in cfg.eot_draws)
    parts = [
        f"# Stochastic Downsampling study ({cfg.profile} profile)\n\n",
        f"{cfg.model} on {cfg.dataset}. Baseline trained with cross-entropy ({cfg.baseline_epochs} epochs, or the "
        f"checkpoint given); every method converts its strided convolutions and is finetuned "
        f"{cfg.finetune_epochs} epochs (SGD, cosine, lr {cfg.finetune_lr:g}) on {r['finetune_images']} training "
        f"images, per seed. Clean accuracy on {r['clean_images']} test images; attacks on the first "
        f"{r['eval_images']} test images, L-inf eps = {cfg.eps:.4g} ({cfg.eps * 255:.3g}/255), PGD "
        f"{cfg.pgd_steps} steps of {cfg.pgd_alpha:g} with a random start; Square {cfg.square_queries} queries; "
        f"mCE = mean error over 15 corruptions x 5 severities of {min(cfg.corruption_n, r['clean_images'])} "
        f"generated Fashion-MNIST-C images. Numbers are percentages, {ms}. Randomized models are judged "
        f"by a fresh prediction on every adversarial example. Device {r['device']} ({r['threads']} threads), "
        f"torch {r['torch']}; finetuning and evaluation of everything below took {r['compute_seconds']:.0f} s "
        f"(summed over resumed runs; the baseline's training not included).\n\n",
        ("**Partial report**, written with `--report-only` while the run was incomplete: `—` marks cells "
         "not computed yet, and the worst case counts only the attacks finished so far.\n\n" if r["partial"] else ""),
        "## Table 1 analogue, with the honest columns the paper lacks\n\n",
        "The paper's columns (i.i.d., PGD, AutoAttack, Square, mCE) come first; then PGD with "
        f"{eots} (expectation over the model's randomness), AutoAttack `rand` (APGD-CE and APGD-DLR "
        f"with EOT-{cfg.aa_rand_eot}), PGD crafted on the deterministic twin (same weights, SD sampling "
        "pixel centres, AddNoise off) and transferred, and the per-sample worst case over every attack "
        "run on the model. On deterministic models EOT equals the plain gradient, so those cells "
        "repeat PGD; `—` marks what was not run.\n\n",
        _table(t["table1"], _cols_table1(cfg), worst=True),
        "\n![clean vs robust accuracy](clean_vs_robust.png)\n\n",
        "## Table 3 analogue: AddNoise with and without SD\n\n",
        ("AutoAttack's attacks as cumulative columns (robust accuracy once that attack and all before "
         "it have run), as the paper's Table 3.\n\n" if cfg.autoattack else
         "This profile skips AutoAttack; PGD stands in.\n\n"),
        _aa_table(t["table3"], cfg),
        "\n## Table 4 analogue: attacks transferred from the baseline\n\n",
        _table(t["table4"], ["tb-pgd", *(["tb-aa"] if cfg.autoattack else [])]),
        "\n## Table 5 analogue: samples per pixel\n\n",
        _table(t["table5"], ["clean", "pgd", *[f"pgd-eot{n}" for n in cfg.eot_draws[:1]]]),
        _warnings_section(r),
        "\n## Verdict\n\n",
        _verdict(r, cfg),
    ]
    return "".join(parts)


def _warnings_section(r: dict[str, Any]) -> str:
    """The evaluations' sanity-check warnings (:mod:`robustlab.attacks.checks`) from the records
    of every table, grouped by finding: which model's which column (and seed) raised it."""
    by_code: dict[str, tuple[str, dict[str, None]]] = {}
    seeds = list(r["config"]["seeds"])
    for table in r["tables"].values():
        for label, evals in table.items():
            for seed, e in zip(seeds, evals, strict=False):
                for col, cell in e.items():
                    for w in cell.get("warnings", []) if isinstance(cell, dict) else []:
                        example, where = by_code.setdefault(str(w["code"]), (str(w["message"]), {}))
                        where[f"{label} `{col}`" + (f" (seed {seed})" if len(seeds) > 1 else "")] = None
    if not by_code:
        return ""
    lines = ["\n## Sanity checks\n\n"]
    for code, (example, where) in sorted(by_code.items()):
        note = (" The paper's protocol columns (PGD, AutoAttack standard, Square) attack randomized models without EOT by design; "
                "the EOT, AutoAttack rand and transfer columns are the adaptive ones." if code == "randomized-without-eot" else "")
        lines.append(f"- `{code}` in {', '.join(where)}. For example: {example}.{note}\n")
    return "".join(lines)


def summary_markdown(results: dict[str, Any], cfg: SDStudyConfig) -> str:
    """Table 1 (with the honest columns) and the verdict, for embedding in another report."""
    t = results["tables"]
    return "".join([_table(t["table1"], _cols_table1(cfg), worst=True), "\n", _verdict(results, cfg)])


# The paper's own numbers (ImageNet-100, ConvNeXt-tiny; Tables 1 and 3) that define its words:
# SD's clean accuracy 86.83 vs the baseline's 89.05 is called a "marginal" / "insignificant"
# drop, its mCE 38.34 vs 34.94 an "insignificant" loss of generalization, and its Square
# accuracy 83.08 (clean 86.83) "almost unaffected". A claim holds here when the measured
# difference is no worse than the paper's own, rounded up.
PAPER_CLEAN_DROP = 0.025
PAPER_MCE_RISE = 0.035
PAPER_SQUARE_DROP = 0.04

# Where a profile's battery lacks AutoAttack (standard and ``rand``), its worst case is not
# conclusive about adaptive robustness; the verdict points here instead.
CONCLUSIVE_PROFILE = "cpu"
CONCLUSIVE_COMMAND = f"robustlab run sd-study --profile {CONCLUSIVE_PROFILE}"
CONCLUSIVE_REPORT = f"runs/sd-study-{CONCLUSIVE_PROFILE}/report.md"


def _missing_adaptive(cfg: SDStudyConfig) -> list[str]:
    """The AutoAttack columns a claim of adaptive robustness needs and ``cfg`` does not run:
    ``aa`` (standard) and ``aa-rand`` (APGD-CE and APGD-DLR with EOT, for randomized models)."""
    return [*([] if cfg.autoattack else ["aa"]), *([] if cfg.aa_rand else ["aa-rand"])]


def _worst_case_attacks(cfg: SDStudyConfig) -> str:
    """The attacks of Table 1 that the per-sample worst case covers, in words."""
    words = {"pgd": "PGD", "aa": "AutoAttack standard", "square": "Square", "aa-rand": "AutoAttack rand",
             "twin": "PGD transferred from the deterministic twin"}
    names = [f"PGD with EOT-{c[len('pgd-eot'):]}" if c.startswith("pgd-eot") else words[c]
             for c in _cols_table1(cfg) if c not in ("clean", "mce")]
    return ", ".join(names) + ", and the transfers from the baseline where run"


def _outcomes(evals: Sequence[dict[str, Any]], col: str) -> list[float] | None:
    """Per test image, the mean over seeds of the model's 0/1 outcome in column ``col``: correct
    (``clean``), robust (attack columns) or the fraction of corrupted versions right (``mce``);
    ``None`` when a seed lacks the per-image record."""
    per_seed: list[list[float]] = []
    for e in evals:
        cell = e.get(col)
        if col == "worst":
            w = _worst_mask(e)
            if w is None:
                return None
            per_seed.append(w)
        elif not isinstance(cell, dict):
            return None
        elif "per_image" in cell and cell["per_image"]:
            per_seed.append([float(v) for v in cell["per_image"]])
        elif isinstance(cell.get("correct" if col == "clean" else "robust"), str):
            per_seed.append([1.0 if c == "1" else 0.0 for c in cell["correct" if col == "clean" else "robust"]])
        else:
            return None
    if not per_seed or len({len(v) for v in per_seed}) != 1:
        return None
    return [sum(v[i] for v in per_seed) / len(per_seed) for i in range(len(per_seed[0]))]


def _has(e: dict[str, Any], col: str) -> bool:
    return _worst_mask(e) is not None if col == "worst" else isinstance(e.get(col), dict)


@dataclass(frozen=True)
class Paired:
    """A paired comparison of two models on the same test images (image = unit)."""

    a: float
    b: float
    diff: float
    se: float
    n: int

    @property
    def outcome(self) -> str:
        """``"higher"``, ``"lower"`` or ``"no significant difference"`` (|diff| > 2 se)."""
        if self.diff > 2 * self.se:
            return "higher"
        if -self.diff > 2 * self.se:
            return "lower"
        return "no significant difference"

    def text(self, scale: float = 100.0) -> str:
        """``+1.23 pp ± 0.45`` (the difference and its standard error)."""
        return f"{scale * self.diff:+.2f} pp, s.e. {scale * self.se:.2f}"


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Paired comparison of per-image outcomes ``a`` and ``b`` (each averaged over seeds): the
    mean difference and its standard error over images, so images seen by every seed count once
    (no pooling of images x seeds as if they were independent)."""
    if len(a) != len(b) or not a:
        raise InputError(f"paired comparison needs two equal, non-empty lists, got {len(a)} and {len(b)}")
    n = len(a)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
    return Paired(sum(a) / n, sum(b) / n, mean, math.sqrt(var / n), n)


def _verdict(r: dict[str, Any], cfg: SDStudyConfig) -> str:
    """The paper's claims about SD, checked one by one against the numbers above.

    Every sentence is computed from the tables. Two models are compared on the same images: per
    image the 0/1 outcome is averaged over seeds, and a difference counts when it exceeds twice
    its standard error over images (a paired test). Claims phrased by the paper as "marginal"
    or "almost unaffected" are held to the paper's own numbers (:data:`PAPER_CLEAN_DROP`,
    :data:`PAPER_MCE_RISE`, :data:`PAPER_SQUARE_DROP`). The last line concludes about adaptive
    attacks only when the battery holds AutoAttack standard and ``rand`` (APGD-CE and APGD-DLR
    with EOT, the attack that randomized defenses call for); otherwise (the quick profile) it says
    the worst case is not conclusive and points to the cpu profile's report.
    """
    t = r["tables"]
    t1 = t["table1"]
    base, sd = t1.get("Baseline"), t1.get("SD")
    if not base or not sd:
        return "Not enough results for a verdict (Table 1 needs the baseline and SD).\n"
    lines = [
        "Each comparison is paired: both models on the same test images, each image's outcome "
        "averaged over seeds; a difference counts when it exceeds twice its standard error (s.e.) "
        f"over the {r['eval_images']} attacked (or {r['clean_images']} clean) images. Where the paper "
        "calls a loss \"marginal\" or a model \"almost unaffected\", the claim holds when the loss "
        "here is no larger than the paper's own (ImageNet-100, Table 1), rounded up.\n",
        "What the paper reports (no EOT):\n",
    ]

    def pct(v: float) -> str:
        return f"{100 * v:.2f}%"

    def cmp(x: Sequence[dict[str, Any]], y: Sequence[dict[str, Any]], col: str) -> Paired | None:
        # only the seeds both models have finished (a partial run may lack some)
        both = [(ex, ey) for ex, ey in zip(x, y, strict=True) if _has(ex, col) and _has(ey, col)]
        if not both:
            return None
        a, b = _outcomes([e for e, _ in both], col), _outcomes([e for _, e in both], col)
        return paired(a, b) if a is not None and b is not None and len(a) == len(b) else None

    def verdict(ok: bool | None) -> str:
        return "**held**" if ok else "**not shown** at this sample size" if ok is None else "**did not hold**"

    def shown(p: Paired) -> bool | None:  # is the first model significantly higher?
        return True if p.outcome == "higher" else None if p.outcome.startswith("no ") else False

    def gain(text: str, p: Paired | None, who: str = "SD", vs: str = "baseline") -> None:
        if p is None:
            return
        lines.append(f"- {text}: {who} {pct(p.a)} vs {vs} {pct(p.b)} ({p.text()}; {who} {p.outcome}) -> "
                     f"{verdict(shown(p))}.")

    c = cmp(sd, base, "clean")
    if c is not None:
        drop = -c.diff
        lines.append(
            f"- \"Marginal drop in i.i.d. accuracy\" (paper: -2.22 pp; held at a drop of at most "
            f"{100 * PAPER_CLEAN_DROP:.1f} pp): SD {pct(c.a)} vs baseline {pct(c.b)} ({c.text()}) -> "
            f"{verdict(drop <= PAPER_CLEAN_DROP)}.")
    m = cmp(sd, base, "mce")
    if m is not None:
        rise = m.b - m.a  # error = 1 - fraction right
        lines.append(
            f"- \"Insignificant drop in generalization\" (mCE; paper: +3.40 pp; held at a rise of at most "
            f"{100 * PAPER_MCE_RISE:.1f} pp): SD mCE {pct(1 - m.a)} vs baseline {pct(1 - m.b)} "
            f"({100 * rise:+.2f} pp, s.e. {100 * m.se:.2f}) -> {verdict(rise <= PAPER_MCE_RISE)}.")
    gain("Robustness to PGD, the paper's protocol", cmp(sd, base, "pgd"))
    if cfg.autoattack:
        gain("Robustness to AutoAttack standard", cmp(sd, base, "aa"))
    sq = cmp(sd, base, "square")
    gain(f"Robustness to the black-box Square attack ({cfg.square_queries} queries)", sq)
    sd_sq = [e["square"] for e in sd if isinstance(e.get("square"), dict) and e["square"].get("acc") is not None]
    if sd_sq:
        clean_eval = sum(v["clean_acc"] for v in sd_sq) / len(sd_sq)
        acc_sq = sum(v["acc"] for v in sd_sq) / len(sd_sq)
        lines.append(
            f"- \"Almost unaffected under Square\" (paper: -3.75 pp from clean; held at a drop of at most "
            f"{100 * PAPER_SQUARE_DROP:.0f} pp): SD {pct(acc_sq)} under Square vs {pct(clean_eval)} clean on "
            f"the same images -> {verdict(clean_eval - acc_sq <= PAPER_SQUARE_DROP)}.")
    an = t1.get(ADDNOISE.label)
    if an:
        p = cmp(sd, an, "clean")
        if p is not None:
            gain("Better i.i.d. accuracy than AddNoise (std=0.75) (paper: 86.83 vs 83.53)", p,
                 vs="AddNoise")
        p = cmp(sd, an, "mce")
        if p is not None:
            lines.append(f"- Lower mCE than AddNoise (std=0.75) (paper: 38.34 vs 42.96): SD {pct(1 - p.a)} vs "
                         f"AddNoise {pct(1 - p.b)} -> {verdict(shown(p))}.")
    t4 = t.get("table4", {})
    if SD.label in t4 and ADDNOISE.label in t4:
        gain("Transfer from the baseline hurts SD less than AddNoise (std=0.75) (Table 4, paper: 75.06 vs 45.24)",
             cmp(t4[SD.label], t4[ADDNOISE.label], "tb-pgd"), vs="AddNoise")
    t5 = t.get("table5", {})
    if len(cfg.spp_sweep) >= 2:
        lo, hi = sd_spp(min(cfg.spp_sweep)).label, sd_spp(max(cfg.spp_sweep)).label
        if lo in t5 and hi in t5:
            gain(f"PGD robustness falls as spp grows (Table 5, paper: 50.22 at spp=1, 9.06 at spp=16): "
                 f"spp={min(cfg.spp_sweep)} vs spp={max(cfg.spp_sweep)}", cmp(t5[lo], t5[hi], "pgd"),
                 who=f"spp={min(cfg.spp_sweep)}", vs=f"spp={max(cfg.spp_sweep)}")
    lines += ["", "Once EOT and the other adaptive attacks are used:", ""]
    def within(col: str, ref: str) -> Paired | None:  # two columns of the same model
        done = [e for e in sd if _has(e, col) and _has(e, ref)]
        if not done:
            return None
        a, b = _outcomes(done, col), _outcomes(done, ref)
        return paired(a, b) if a is not None and b is not None and len(a) == len(b) else None

    for k in cfg.eot_draws:
        p = within(f"pgd-eot{k}", "pgd")
        if p is not None:
            got = p.outcome if p.outcome.startswith("no ") else f"significantly {p.outcome} than plain PGD"
            lines.append(f"- PGD with EOT-{k} against SD: {pct(p.a)} ({p.text()} against plain PGD; {got}).")
    if cfg.aa_rand and cfg.autoattack:
        p = within("aa-rand", "aa")
        if p is not None:
            got = p.outcome if p.outcome.startswith("no ") else f"significantly {p.outcome}"
            lines.append(f"- AutoAttack rand (APGD-CE and APGD-DLR with EOT-{cfg.aa_rand_eot}) against SD: {pct(p.a)} "
                         f"vs AutoAttack standard {pct(p.b)} ({p.text()}; {got}).")
    p = within("twin", "pgd")
    if p is not None:
        got = p.outcome if p.outcome.startswith("no ") else f"significantly {p.outcome}"
        lines.append(f"- PGD crafted on SD's deterministic twin and transferred: {pct(p.a)} vs plain PGD {pct(p.b)} "
                     f"({p.text()}; {got}).")
    cols1 = _cols_table1(cfg)
    w = cmp(_complete(sd, cols1), _complete(base, cols1), "worst")
    pg = cmp(sd, base, "pgd")
    if w is not None:
        kept = "" if pg is None or pg.diff <= 0 else f"; {max(0.0, w.diff) / pg.diff:.0%} of SD's PGD gain remains"
        got = w.outcome
        missing = _missing_adaptive(cfg)
        if missing:
            # without AutoAttack (rand for a randomized model) the worst case is an upper bound
            # that the adaptive attacks may still lower, on SD and the baseline alike
            lacks = " and ".join({"aa": "AutoAttack standard", "aa-rand": "AutoAttack rand (APGD-CE and "
                                  "APGD-DLR with EOT)"}[c] for c in missing)
            conclusion = (f"**not conclusive about adaptive robustness**: the {cfg.profile} profile's battery "
                          f"lacks {lacks}; see the {CONCLUSIVE_PROFILE} profile's numbers "
                          f"(`{CONCLUSIVE_COMMAND}`, report at `{CONCLUSIVE_REPORT}`)")
        elif got == "higher":
            conclusion = "**a robustness gain survives adaptive attacks**"
        elif got.startswith("no "):
            conclusion = "**no robustness gain is shown once adaptive attacks are used** (at this sample size)"
        else:
            conclusion = "**SD is less robust than the baseline under adaptive attacks**"
        lines.append(
            "- \"Does not provide a false sense of security\": the per-sample worst case over every attack run "
            f"on the model ({_worst_case_attacks(cfg)}): SD {pct(w.a)} vs baseline {pct(w.b)} "
            f"({w.text()}; SD {got}{kept}) -> {conclusion}.")
    return "\n".join(lines) + "\n"


def study_config(profile: str, **overrides: Any) -> SDStudyConfig:
    """A profile with some fields replaced (``None`` values are ignored)."""
    if profile not in PROFILES:
        raise InputError(f"unknown sd-study profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    return replace(PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None})

