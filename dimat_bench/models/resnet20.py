"""ResNet-20 for 32×32 images (He et al. 2016, CIFAR variant) as used by DIMAT: 3 stages × 3
post-activation basic blocks, widths 16w/32w/64w, and 3×3 conv + BN shortcuts on the blocks that
change shape. Parameter names follow the authors' code so their checkpoints load unchanged."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MODELS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 1, blocks: tuple[int, int, int] = (3, 3, 3)):
        super().__init__()
        planes = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        in_planes = planes[0]
        stages = []
        for stage, (p, n) in enumerate(zip(planes, blocks)):
            layers = []
            for b in range(n):
                layers.append(BasicBlock(in_planes, p, stride=2 if stage > 0 and b == 0 else 1))
                in_planes = p
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes[2], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.avgpool(out), 1))


@MODELS.register("resnet20")
def resnet20(num_classes: int, width: int = 1) -> ResNet20:
    return ResNet20(num_classes=num_classes, width=width)
