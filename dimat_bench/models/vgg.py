"""VGG16 with BatchNorm for 32×32 images: 13 conv-BN-ReLU units, 5 max-pools, one Linear head.

Beyond the authors' code: BatchNorm follows the width multiplier (theirs stays at width 1), and a
global average pool sits before the head. At 32×32 the map is already 1×1 there, so the function is
unchanged; it lets the same model take 64×64 Tiny ImageNet images."""

from __future__ import annotations

import torch
import torch.nn as nn

from . import MODELS

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, layout=VGG16_LAYOUT, num_classes: int = 10, width: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out_channels = item * width
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                           nn.ReLU(inplace=True)]
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@MODELS.register("vgg16_bn")
def vgg16_bn(num_classes: int, width: int = 1) -> VGG:
    return VGG(VGG16_LAYOUT, num_classes=num_classes, width=width)
