"""Data for SSPS's profiling and step-size calibration, from a training dataloader (an mmengine runner's).

A separate ``DataLoader`` over a few random samples of the training dataset (same samples on
every rank, so profiles and calibration agree across ranks). A second ``iter()`` on the
runner's own loader would reset persistent workers and share batch-sampler state. The random
states of ``random``, numpy and torch are restored afterwards, so calibrating does not change
the training run that follows (resume skips it).
Nothing here imports mmengine: :func:`forward_fn` only calls the model as an mmengine
``BaseModel`` is called.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

__all__ = ['calibration_loader', 'forward_fn', 'preserved_rng']


def calibration_loader(train_dataloader: DataLoader, num_batches: int, batch_size: int | None = None,
                       seed: int = 0) -> DataLoader:
    """``num_batches`` batches of random training samples, with the train loader's collate.

    Args:
        train_dataloader: the runner's built ``train_dataloader``.
        num_batches: batches to draw (>= 1). batch_size: defaults to the train loader's.
        seed: seed of the sample choice.
    """
    dataset = train_dataloader.dataset
    batch_size = int(batch_size or train_dataloader.batch_size or 1)
    count = min(len(dataset), max(int(num_batches), 1) * batch_size)
    generator = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=0,
                      collate_fn=train_dataloader.collate_fn)


def forward_fn(model: torch.nn.Module, loader: DataLoader) -> tuple[Callable[[], None], int]:
    """A callable running ``model`` (an mmengine ``BaseModel``) on every batch, ``mode='tensor'``.

    Returns:
        ``(fn, num_samples)`` as :meth:`ssps_nni.search.SSPSSearch.prepare` takes them.
    """

    def run() -> None:
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            if isinstance(data, dict):
                model(**data, mode='tensor')
            else:
                model(*data, mode='tensor')

    return run, len(loader.dataset)


@contextlib.contextmanager
def preserved_rng():
    """Restore the global ``random``, numpy and torch (CPU and CUDA) random states on exit."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
