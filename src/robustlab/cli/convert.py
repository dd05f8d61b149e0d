"""``robustlab convert``: rewrite every strided convolution of a checkpoint with a downsampling
method (stochastic downsampling and its baselines) and write the converted checkpoint.

Which method takes which option is declared where the methods are registered
(:func:`robustlab.defenses.downsampling.method_options`); the help and the checks below are
built from those declarations, so a method's new option needs only its flag here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..core import RobustlabError
from ..defenses.downsampling import METHODS, SHARED_JITTER_METHODS, method_options
from .console import console
from .errors import boundary
from .options import Checkpoint, check_writable


def methods_taking(option: str) -> list[str]:
    """The downsampling methods that take ``option``, in :data:`METHODS` order."""
    return [m for m in METHODS if option in method_options(m)]


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _for(option: str) -> str:
    """An option's help prefix: the methods it applies to (``"sd, sd+addnoise: "``)."""
    return ", ".join(methods_taking(option)) + ": "


@boundary()
def convert(
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option(help="where the converted model is written (.safetensors)")],
    method: Annotated[str, typer.Option(help=f"downsampling method: {', '.join(METHODS)}")] = "sd",
    spp: Annotated[int | None, typer.Option(min=1, help=_for("spp") + "samples per output pixel (paper: 2)")] = None,
    jitter: Annotated[str | None, typer.Option(help=_for("jitter") + "uniform or normal")] = None,
    normal_std: Annotated[float | None, typer.Option(min=0, help=_for("normal_std") + "std of the normal jitter, output pixels")] = None,
    std: Annotated[float | None, typer.Option(min=0, help=_for("std") + "noise std")] = None,
    distribution: Annotated[str | None, typer.Option(help=_for("distribution") + "noise distribution: normal or uniform")] = None,
    reduction: Annotated[str | None, typer.Option(help=_for("reduction") + "mean, sum, min or max over the samples")] = None,
    per_sample: Annotated[bool, typer.Option("--per-sample", help=_for("per_sample") + "one jitter draw per image instead of per batch")] = False,
    p: Annotated[float | None, typer.Option(min=0, max=1, help=_for("p") + "dropout probability")] = None,
    filter_size: Annotated[int | None, typer.Option(min=1, help=_for("filter_size") + "binomial filter size")] = None,
    placement: Annotated[str | None, typer.Option(help="flc, asap: after (default) or before (official code); blurpool: after (default) or after-activation (Zhang: conv, BN, ReLU, blur)")] = None,
    shortcut_jitter: Annotated[str, typer.Option(help=f"{', '.join(SHARED_JITTER_METHODS)}: independent (default) or shared (1x1 shortcuts reuse their block's main-path jitter)")] = "independent",
    deterministic: Annotated[bool, typer.Option("--deterministic", help=_for("deterministic") + "sample pixel centres (the deterministic twin)")] = False,
    include_pooling: Annotated[bool, typer.Option("--include-pooling", help="all methods: also convert strided max/avg pooling")] = False,
) -> None:
    """Rewrite every strided convolution as stride 1 + a downsampler (stochastic downsampling and baselines).

    Example: robustlab convert runs/fm/model.safetensors --out runs/fm/sd.safetensors --method sd --spp 2
    """
    from .. import load, save
    from ..defenses import convert_downsampling

    given = {"spp": spp, "jitter": jitter, "normal_std": normal_std, "std": std, "distribution": distribution,
             "reduction": reduction, "p": p, "filter_size": filter_size, "placement": placement,
             "deterministic": deterministic or None, "per_sample": per_sample or None}
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if method not in METHODS:
        raise RobustlabError(f"unknown downsampling method {method!r}; --method takes {', '.join(METHODS)}")
    if shortcut_jitter not in ("independent", "shared"):
        raise RobustlabError(f"--shortcut-jitter must be independent or shared, got {shortcut_jitter!r}")
    if shortcut_jitter == "shared" and method not in SHARED_JITTER_METHODS:
        raise RobustlabError(f"--shortcut-jitter shared applies to --method {', '.join(SHARED_JITTER_METHODS)}, "
                             f"not {method}")
    takes = method_options(method)
    for name in options:
        if name not in takes:
            raise RobustlabError(f"{_flag(name)} does not apply to --method {method}; it takes "
                                 f"{', '.join(map(_flag, takes)) if takes else 'no method option'}")
    if out.suffix != ".safetensors":
        raise RobustlabError(f"--out must end in .safetensors, got {str(out)!r}")
    check_writable(out, "--out", folder=False)
    model = load(checkpoint)
    header: dict[str, Any] = getattr(model, "robustlab_header", {})
    converted = convert_downsampling(model, method, include_pooling=include_pooling,
                                     shortcut_jitter=shortcut_jitter, **options)
    path = save(converted, out, dataset=header.get("dataset"), train_config=header.get("train_config"),
                extra={"converted_from": str(checkpoint)})
    count = sum(type(m).__name__ == "Downsampled" for m in converted.modules())
    console.print(f"converted {count} strided layers with [bold]{method}[/] {escape(str(options or ''))}; "
                  f"wrote [bold]{path}[/] (finetune it through the Python Trainer)")
