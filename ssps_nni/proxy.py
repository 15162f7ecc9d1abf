"""The proxy against the truth: measured loss increase of every searched layer and candidate.

docs/algorithm.md §10.1. The scores of §3.1 (squared first-order scores) *predict* how much the
loss grows when one operand of one layer is quantized at one candidate. This module *measures*
it: with only that operand quantized (every other decision in float, or at the search's policy),
one forward pass per layer, operand, candidate and batch, no gradient::

    M[l, j] = mean_batches ( L(operand of layer l at candidate j) - L(reference) )

``reference='float'``: every open decision runs in float (the sampler's ``float_forward``) and
the reference is that float model; ``reference='policy'``: every decision runs at its current
bits (fixed, or the argmax of an open one) and the reference of decision ``(l, slot)`` is the same
network with that one operand in float, which is what the running score ``D`` of a search
estimates (§3.1). Pinned layers always run at their bits. The model runs in ``eval()`` mode:
BatchNorm uses its running statistics, and nothing the measurement does changes the model.

The measured increase is also a score (``ssps search --method sensitivity --scores measured``,
and the calibration of the search's running scores, :mod:`ssps_nni.calibration_prior`).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from .quant import FLOAT_BITS
from .sampler import SLOTS

__all__ = ["holdout_split", "operand_override", "measured_increase", "HOLDOUT_EVERY"]

#: One training sample in this many is held out (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1).
HOLDOUT_EVERY = 10


def holdout_split(n: int, every: int = HOLDOUT_EVERY) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into ``(fit, holdout)``: every ``every``-th index (the last of each run) is held out.

    Deterministic and spread evenly over a class-sorted dataset (CIFAR10Folder lists 5,000
    images per class in a row, so each class gives one tenth). The held-out split is the one
    defaults are chosen on (docs/algorithm.md §9) and the one the proxy is checked on.

    Raises:
        ValueError: ``n < every`` or ``every < 2``.
    """
    if every < 2 or n < every:
        raise ValueError(f"holdout_split needs every >= 2 and n >= every, got n={n}, every={every}")
    fit = [i for i in range(n) if i % every != every - 1]
    held = [i for i in range(n) if i % every == every - 1]
    return fit, held


def operand_override(cell, slot: str, index: int):
    """Run one operand of ``cell`` at candidate ``index`` (``-1``: float) inside the block.

    The cell's other operand, and every other cell, run as they would; the override is this
    cell's only and is removed on exit, even on an error (:meth:`QuantCellMixin.operand_at`).

    Args:
        cell: a search cell (``ssps_nni.cell.QuantCellMixin``). slot: ``'w'`` or ``'a'``.
        index: candidate index of ``cell.candidates(slot)``, or -1 for float.
    """
    return cell.operand_at(slot, index)


def measured_increase(search, loss_fn: Callable[[object], torch.Tensor], batches: Iterable,
                      reference: str = "float", progress: Callable[[str], None] | None = None) -> dict:
    """Measured loss increase of every searched layer, operand and allowed candidate (§10.1).

    Args:
        search: a prepared :class:`~ssps_nni.search.SSPSSearch` (converted, calibrated).
        loss_fn: ``loss_fn(batch) -> 0-dim loss`` of ``search.model`` (the mean over the batch).
        batches: the batches to measure on (each is used for every forward; keep them few).
        reference: ``'float'`` (every open decision in float) or ``'policy'`` (every decision at
            its current bits; each decision's reference is its operand in float).
        progress: optional ``progress(text)`` called after each layer.

    Returns:
        ``{'w': (L, n_w), 'a': (L, n_a)}`` float64 mean loss increases (loss units; 0 for a
        32-bit candidate). Every candidate is measured, also those a decision no longer allows
        (a finished search's decisions allow one; its running scores still cover all).
        ``'se'``: ``{slot: (L, n)}`` standard error of that mean over the batches (paired
        differences; NaN with one batch). ``'base'`` the mean loss of the reference network,
        ``'forwards'`` the number of forward passes and ``'seconds'`` the time taken.

    Raises:
        ValueError: unknown ``reference`` or no batch.
    """
    if reference not in ("float", "policy"):
        raise ValueError(f"reference must be 'float' or 'policy', got {reference!r}")
    search.require_prepared()
    batches = list(batches)
    if not batches:
        raise ValueError("measured_increase got no batch")
    space, model = search.space, search.model
    sampler = space.sampler
    start = time.perf_counter()
    out = {s: torch.zeros(tuple(sampler.logits[s].shape), dtype=torch.float64) for s in SLOTS}
    se = {s: torch.full(tuple(sampler.logits[s].shape), float("nan"), dtype=torch.float64) for s in SLOTS}
    forwards = 0

    def losses() -> torch.Tensor:
        nonlocal forwards
        forwards += len(batches)
        return torch.tensor([float(loss_fn(b)) for b in batches], dtype=torch.float64)

    was_training, float_forward = model.training, sampler.float_forward
    model.eval()
    sampler.float_forward = reference == "float"
    try:
        with torch.no_grad():
            base = losses()
            for l, name in enumerate(space.searched):
                cell = space.cells[name]
                for slot in SLOTS:
                    if reference == "float":
                        ref = base
                    else:
                        with operand_override(cell, slot, -1):
                            ref = losses()
                    for j, bits in enumerate(cell.candidates(slot)):
                        if bits >= FLOAT_BITS:
                            continue
                        with operand_override(cell, slot, j):
                            diff = losses() - ref  # paired: the same batches
                        out[slot][l, j] = diff.mean()
                        if len(batches) > 1:
                            se[slot][l, j] = diff.std() / len(batches) ** 0.5
                if progress is not None:
                    progress(f"{name}: {forwards} forwards, {time.perf_counter() - start:.0f} s")
    finally:
        sampler.float_forward = float_forward
        model.train(was_training)
    out.update(base=float(base.mean()), se=se, forwards=forwards, seconds=time.perf_counter() - start)
    return out
