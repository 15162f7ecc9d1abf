"""Plain PyTorch models used by the examples and tests (no NNI, no mmengine).

CIFAR ResNet-20 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2):
a 3x3 stem with 16 channels, three stages of three basic blocks with 16, 32 and 64 channels
(stride 2 at the start of stages 2 and 3), global average pooling and a linear classifier.
About 0.27M parameters and 41M MACs per 32x32 image. Shortcuts that change shape use a 1x1
convolution with BatchNorm (option B of the paper), so every layer is a plain Conv2d/Linear.
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut.

    Input ``(N, in_channels, H, W)``, output ``(N, channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: stem, three stages of ``depth`` basic blocks, pooling, classifier.

    Args:
        depth: blocks per stage (3 gives ResNet-20, 5 ResNet-32).
        num_classes: classifier outputs.
        widths: channels of the three stages.

    Input ``(N, 3, 32, 32)`` float; output logits ``(N, num_classes)``.
    """

    def __init__(self, depth: int = 3, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlock(in_channels, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels (~0.27M parameters)."""
    return CifarResNet(depth=3, num_classes=num_classes)
