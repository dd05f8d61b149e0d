"""Model architectures, the ``Normalized`` wrapper and the ``create_model`` factory.

Registered architectures (``list_models()``): ``resnet-mini`` (Fashion-MNIST on a CPU),
``resnet18``, ``preact-resnet18``, ``resnet32`` (Madry et al.), ``wrn-34-10``, ``vgg16`` and
``alexnet``; torchvision and timm classifiers are reached as ``"torchvision:<name>"`` and
``"timm:<name>"``. Networks with strided stages expose ``stage_strides`` and take ``strides=``,
the knob of the stride-shrinking defense (feature-map-strides paper, Sec. IV-B, Table IV).
"""

from ..core.checkpoint import load_weights
from . import resnet as _resnet  # noqa: F401  (registers resnet-mini, resnet18, ...)
from . import vgg as _vgg  # noqa: F401  (registers vgg16, alexnet)
from . import wrn as _wrn  # noqa: F401  (registers wrn-34-10)
from ._registry import MODELS, ModelBuilder
from ._skeleton import TooManyTensors, build_on_meta
from .base import StagedNetwork
from .factory import (
    check_header_recipe,
    count_parameters,
    create_model,
    header_options,
    list_models,
    model_from_recipe,
)
from .normalized import Normalized

__all__ = [
    "MODELS",
    "ModelBuilder",
    "Normalized",
    "StagedNetwork",
    "TooManyTensors",
    "build_on_meta",
    "check_header_recipe",
    "count_parameters",
    "create_model",
    "header_options",
    "list_models",
    "load_weights",
    "model_from_recipe",
]
