"""Each downsampling method declares its options where it is registered; the declarations are what
``convert_downsampling`` and ``robustlab convert`` take."""

import inspect

import pytest
import torch

from robustlab.core import InputError, UnknownNameError
from robustlab.defenses import convert_downsampling
from robustlab.defenses.downsampling import (
    DOWNSAMPLERS,
    METHODS,
    NOISE_OPTIONS,
    SD_OPTIONS,
    SHARED_JITTER_METHODS,
    method_options,
)


def _keywords(factory) -> set[str]:
    return {p.name for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "addnoise"])
def test_declared_options_are_the_factorys_keywords(method):
    factory = DOWNSAMPLERS.get(method)
    declared = set(method_options(method))
    takes_sd = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    assert declared == _keywords(factory) | (set(SD_OPTIONS) if takes_sd else set())
    assert len(declared) == len(method_options(method))  # no option declared twice


def test_addnoise_takes_the_noise_options_and_every_method_is_declared():
    assert method_options("addnoise") == NOISE_OPTIONS
    assert set(SHARED_JITTER_METHODS) == {m for m in METHODS if "spp" in method_options(m)}
    with pytest.raises(UnknownNameError, match="known downsampling methods: "):
        method_options("maxblur")


@pytest.mark.parametrize("method", METHODS)
def test_an_undeclared_option_is_refused(method):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2, padding=1))
    other = next(o for o in (*SD_OPTIONS, *NOISE_OPTIONS, "p", "filter_size", "placement")
                 if o not in method_options(method))
    with pytest.raises(InputError):
        convert_downsampling(model, method, **{other: 1})
