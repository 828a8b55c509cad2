"""ResNet-50 in torchvision's layout with a new `num_classes` head."""

from __future__ import annotations

import torch.nn as nn

from ..registry import ConfigError
from . import MODELS


@MODELS.register("resnet50")
def resnet50(num_classes: int, width: int = 1, pretrained: bool = False) -> nn.Module:
    """`pretrained=True` starts the backbone from torchvision's ImageNet weights (downloads them)."""
    import torchvision

    if width != 1:
        raise ConfigError("width", width, "1 for resnet50 (torchvision's layout has no width multiplier)")
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2 if pretrained else None
    model = torchvision.models.resnet50(weights=weights)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
