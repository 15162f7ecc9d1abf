"""Helpers of the NNI driver tests: real CIFAR-10 images and an evaluator over them.

Imported by ``conftest.py`` here, and by path from other test folders that need a real NNI
search (``tests/mmengine/test_policy_routes.py``).
"""
from __future__ import annotations

import numpy as np
import torch
from nni.nas.evaluator.pytorch import Classification, DataLoader
from torch.utils.data import TensorDataset

from ssps_nni.data import load_cifar10_subset

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def cifar_tensors(split: str, n: int) -> TensorDataset:
    """The first ``n`` images of the shipped real CIFAR-10 subset, normalised, as tensors."""
    records = load_cifar10_subset(split)[:n]
    x = torch.from_numpy(np.stack([r["img"] for r in records])).permute(0, 3, 1, 2).float() / 255
    return TensorDataset((x - MEAN) / STD, torch.tensor([r["gt_label"] for r in records]))


def cifar_splits() -> dict:
    """128 training and 64 test images (what the ``cifar`` fixture holds)."""
    return {"train": cifar_tensors("train", 128), "val": cifar_tensors("test", 64)}


def make_evaluator(cifar, max_epochs: int = 2, root=None, **trainer_kwargs) -> Classification:
    """Classification on real CIFAR-10 images: 4 training batches of 32 per epoch, no shuffling."""
    return Classification(
        train_dataloaders=DataLoader(cifar["train"], batch_size=32, shuffle=False),
        val_dataloaders=DataLoader(cifar["val"], batch_size=64),
        max_epochs=max_epochs, num_classes=10, learning_rate=1e-3,
        enable_progress_bar=False, logger=False, enable_model_summary=False,
        default_root_dir=None if root is None else str(root), **trainer_kwargs,
    )
