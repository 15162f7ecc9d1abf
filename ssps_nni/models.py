"""CIFAR ResNet-20 in plain PyTorch (no NNI, no mmengine); the mmengine backbone reuses it.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2: a 3x3 stem conv
with 16 channels, three stages of ``n = 3`` basic blocks with 16, 32 and 64 channels (the first
block of stages 2 and 3 halves the resolution), global average pooling and a linear
classifier. Depth ``6n + 2 = 20``, about 0.27M parameters and 41M MACs per 32x32 image.
Shortcuts are the paper's option A: identity, and where the shape changes a parameter-free
stride-2 subsample padded with zero channels, so the searched layers are exactly the 19 convs
and the classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "conv3x3", "make_stages", "resnet20"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU, plus an option-A shortcut.

    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H / stride, W / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.pad_channels = out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: identity, or subsample by ``stride`` and pad the new channels with zeros."""
        if self.stride == 1 and self.pad_channels == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.pad_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stages(in_channels: int, widths=(16, 32, 64), blocks_per_stage: int = 3) -> list[nn.Sequential]:
    """The residual stages: stage ``i`` has ``blocks_per_stage`` blocks of ``widths[i]`` channels."""
    stages = []
    for i, width in enumerate(widths):
        blocks = []
        for j in range(blocks_per_stage):
            blocks.append(BasicBlock(in_channels, width, stride=2 if i > 0 and j == 0 else 1))
            in_channels = width
        stages.append(nn.Sequential(*blocks))
    return stages


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
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1, self.layer2, self.layer3 = make_stages(widths[0], widths, depth)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` -> last stage's feature map ``(N, widths[-1], H / 4, W / 4)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20: 3 stages x 3 basic blocks, 16/32/64 channels (~0.27M parameters)."""
    return CifarResNet(depth=3, num_classes=num_classes)
