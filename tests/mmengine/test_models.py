"""ResNet-20 for CIFAR and the CIFAR-10 datasets registered by ``ssps_nni.mmengine``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip('mmpretrain')

from mmpretrain.registry import DATASETS, MODELS  # noqa: E402

import ssps_nni.mmengine  # noqa: E402,F401
from ssps_nni.data import shared_data_root  # noqa: E402


def test_resnet20_shape_and_size():
    backbone = MODELS.build(dict(type='ResNet20CIFAR'))
    backbone.init_weights()
    params = sum(p.numel() for p in backbone.parameters())
    assert 0.26e6 < params < 0.28e6  # He et al. 2016: 0.27M with the classifier
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19 and [c.out_channels for c in convs[::6]] == [16, 16, 32, 64]
    (out,) = backbone(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64, 8, 8)


def test_cifar10_subset_dataset():
    train = DATASETS.build(dict(type='CIFAR10Subset', test_mode=False, pipeline=[dict(type='PackInputs')]))
    test = DATASETS.build(dict(type='CIFAR10Subset', test_mode=True))
    assert len(train) == 5000 and len(test) == 1000
    assert train.metainfo['classes'][0] == 'airplane'
    item = train[0]
    assert item['inputs'].shape == (3, 32, 32) and item['data_samples'].gt_label.item() == 0
    raw = test.get_data_info(999)
    assert raw['img'].dtype == np.uint8 and raw['img'].shape == (32, 32, 3) and raw['gt_label'] == 9


def test_cifar10_folder_dataset():
    root = shared_data_root()
    if root is None or not (root / 'cifar10' / 'test').is_dir():
        pytest.skip('shared CIFAR-10 folders not available')
    data = DATASETS.build(dict(type='CIFAR10Folder', data_root=str(root / 'cifar10'), test_mode=True,
                               limit_per_class=3))
    assert len(data) == 30 and data.get_data_info(29)['gt_label'] == 9
