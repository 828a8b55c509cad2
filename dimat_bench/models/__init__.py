"""Model registry: `create_model(name, num_classes, **kw)`.

Registered: `resnet20` (width multiplier, 3×3-conv shortcuts as in the paper), `vgg16_bn`,
`resnet50` (torchvision layout, new head). Any timm model is available as `timm:<name>`
(for local training; merging needs a model whose permutation structure is known)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..registry import ConfigError, Registry

ModelFn = Callable[..., nn.Module]
MODELS: Registry[ModelFn] = Registry("model")
TIMM_PREFIX = "timm:"

from . import resnet20, resnet50, vgg  # noqa: E402,F401  (register the built-in models)


def create_model(name: str, num_classes: int, width: int = 1, **kwargs) -> nn.Module:
    """A freshly initialised model with `num_classes` outputs."""
    if name.startswith(TIMM_PREFIX):
        if width != 1:
            raise ConfigError("width", width, "1 for timm models (pick a timm variant for other widths)")
        return _timm().create_model(name[len(TIMM_PREFIX):], num_classes=num_classes, pretrained=False, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, width=width, **kwargs)


def check_model_name(name: str) -> None:
    """Raise ConfigError unless `name` is a registered model or an existing `timm:<name>`."""
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        if not _timm().is_model(timm_name):
            raise ConfigError("model", name, "timm:<name> with a name from timm.list_models()")
    else:
        MODELS.get(name)


def _timm():
    try:
        import timm
    except ImportError as error:
        raise ConfigError("model", "timm:...", ", ".join(MODELS.names()),
                          "timm is not installed: pip install timm (or the [timm] extra)") from error
    return timm
