"""Shared pieces of the NNI driver tests: real CIFAR-10 images, a ResNet-20 space, evaluators."""
from __future__ import annotations

import pytest

pytest.importorskip("nni")
pytest.importorskip("pytorch_lightning")

from nni_helpers import cifar_splits, cifar_tensors, make_evaluator as _make_evaluator  # noqa: E402,F401

CANDIDATES = (2, 4, 8)


@pytest.fixture(scope="session")
def cifar():
    return cifar_splits()


@pytest.fixture
def make_evaluator():
    """``make_evaluator(cifar, max_epochs=2, root=None, **trainer_kwargs) -> Classification``."""
    return _make_evaluator
