"""ResNet-20 for CIFAR (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

The CIFAR variant of the paper, built from the blocks of :mod:`ssps_nni.models`: a 3x3 stem conv with 16 channels, then 3 stages of ``n = 3``
basic blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 halves the
resolution), global average pooling in the classifier. Depth ``6n + 2 = 20``, about 0.27M
parameters. Shortcuts are the paper's option A: identity, and where the shape changes a
parameter-free stride-2 subsample padded with zero channels.

Registered in mmpretrain's ``MODELS`` as a backbone; use it with mmpretrain's
``ImageClassifier``::

    model = dict(type='ImageClassifier', backbone=dict(type='ResNet20CIFAR'),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=10, in_channels=64, ...))

Every conv is a plain ``nn.Conv2d``, so :func:`ssps_nni.convert.convert_model` searches each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.registry import MODELS
from torch import nn

from ..models import BasicBlock, conv3x3, make_stages

__all__ = ['BasicBlock', 'ResNet20CIFAR']


@MODELS.register_module()
class ResNet20CIFAR(BaseBackbone):
    """ResNet-20 for 32x32 inputs: stem, 3 stages of 3 :class:`BasicBlock`, 16/32/64 channels.

    Args:
        in_channels: input image channels. Defaults to 3.
        widths: channels of the three stages. Defaults to ``(16, 32, 64)``.
        blocks_per_stage: ``n`` of the paper (depth ``6n + 2``). Defaults to 3 (ResNet-20).
        init_cfg: mmengine init config. Defaults to Kaiming for convs, constant 1 for BN.

    Returns (forward):
        A 1-tuple with the last stage's feature map ``(N, widths[-1], H / 4, W / 4)``, as
        mmpretrain necks expect.
    """

    def __init__(self, in_channels: int = 3, widths=(16, 32, 64), blocks_per_stage: int = 3,
                 init_cfg=(dict(type='Kaiming', layer='Conv2d'),
                           dict(type='Constant', val=1, layer='_BatchNorm'))):
        super().__init__(init_cfg=list(init_cfg) if init_cfg is not None else None)
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        for i, stage in enumerate(make_stages(widths[0], widths, blocks_per_stage)):
            self.add_module(f'layer{i + 1}', stage)
        self.num_stages = len(widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = self.conv1(x)
        x = self.bn1(x)
        x = F.relu(x)
        for i in range(self.num_stages):
            x = getattr(self, f'layer{i + 1}')(x)
        return (x, )
