"""The loss increase that remains after the weights adapt: one short QAT per operand (docs/algorithm.md §10.2).

The squared score (§3.1) and the measured increase of :mod:`ssps_nni.proxy` both price an
operand *before* any retraining. Retraining recovers most of what quantizing the weights costs
(the weights move onto their grid) and much less of what quantizing the inputs costs (ResNet-20
on CIFAR-10: uniform W2A3 and W3A2 cost the same BitOPs, yet W3A2 ends about 2 points lower).
:func:`adapted_increase` measures that: every searched layer's operand ``slot`` at its lowest
candidate, the other operand in float, ``steps`` SGD steps on training batches (weights and step
sizes, BatchNorm in training mode), then the mean loss on ``eval_batches`` in ``eval()`` mode
against the float model's. The model, masks and sampler are restored afterwards.
"""
from __future__ import annotations

import copy
import itertools
import time
from typing import Callable

import torch

from .sampler import SLOTS

__all__ = ["adapted_increase", "adapted_factors"]


def _mean_loss(model, loss_fn, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(loss_fn(b)) for b in batches) / len(batches)


def adapted_increase(search, loss_fn: Callable[[object], torch.Tensor], train_batches: list, eval_batches: list,
                     steps: int = 100, lr: float = 0.01, momentum: float = 0.9) -> dict:
    """Per operand, the loss increase of its lowest candidate in every searched layer after ``steps`` QAT steps.

    Args:
        search: a prepared :class:`~ssps_nni.search.SSPSSearch` with every decision open.
        loss_fn: ``loss_fn(batch) -> 0-dim loss`` of ``search.model``.
        train_batches: batches to adapt on (cycled for ``steps``). eval_batches: batches to score on.
        steps, lr, momentum: the SGD of the adaptation (weight decay 0).

    Returns:
        ``{'w': float, 'a': float}`` loss increases (loss units), ``'bits'`` the candidate of each
        operand, ``'base'`` the float loss, ``'seconds'``.

    Raises:
        ValueError: ``steps < 1``, no batch, or a decision already fixed.
    """
    if steps < 1 or not train_batches or not eval_batches:
        raise ValueError("adapted_increase needs steps >= 1 and training and evaluation batches")
    search.require_prepared()
    space, model = search.space, search.model
    if space.num_decided:
        raise ValueError("adapted_increase needs every decision open (measure before the search decides)")
    sampler = space.sampler
    start = time.perf_counter()
    saved_state = copy.deepcopy(model.state_dict())
    saved = (model.training, sampler.float_forward, sampler.signal)
    grads = {p: p.requires_grad for p in model.parameters()}
    out = {"bits": {}}
    try:
        sampler.float_forward, sampler.signal = True, "sampled"  # open decisions in float, no score taps
        out["base"] = _mean_loss(model, loss_fn, eval_batches)
        for slot in SLOTS:
            low = min(range(len(space.candidates[slot])), key=lambda j: space.candidates[slot][j])
            out["bits"][slot] = space.candidates[slot][low]
            for l in range(len(space.searched)):
                space.fix(l, slot, low)
            params = [p for p in model.parameters() if grads[p]]
            optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
            model.train()
            for batch in itertools.islice(itertools.cycle(train_batches), steps):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(batch).backward()
                optimizer.step()
            out[slot] = _mean_loss(model, loss_fn, eval_batches) - out["base"]
            model.load_state_dict(saved_state)  # weights, BatchNorm, step sizes and masks as before
    finally:
        model.load_state_dict(saved_state)
        for p, flag in grads.items():
            p.grad = None
            p.requires_grad_(flag)
        sampler.take_scores()
        model.train(saved[0])
        sampler.float_forward, sampler.signal = saved[1], saved[2]
    out["seconds"] = time.perf_counter() - start
    return out


def adapted_factors(predicted: dict, adapted: dict, candidates: dict) -> dict[str, torch.Tensor]:
    """Per operand, ``max(adapted[slot], 0) / sum_l predicted[slot][l, lowest]``, the same for every candidate.

    An operand whose loss does not increase after adaptation gets 0: its lowest bits cost
    nothing measurable once retrained.

    Raises:
        ValueError: a predicted sum that is not positive, or no operand with a positive increase
            (nothing to calibrate against).
    """
    if not any(adapted[slot] > 0 for slot in SLOTS):
        raise ValueError(f"cannot calibrate the scores after adaptation: no operand's loss increased "
                         f"(weights {adapted['w']:.3g}, activations {adapted['a']:.3g})")
    out = {}
    for slot in SLOTS:
        low = min(range(len(candidates[slot])), key=lambda j: candidates[slot][j])
        pred = float(predicted[slot][:, low].double().sum())
        if pred <= 0:
            raise ValueError(f"cannot calibrate the {slot} scores after adaptation: predicted sum {pred:.3g}")
        out[slot] = torch.full((len(candidates[slot]),), max(adapted[slot], 0.0) / pred, dtype=torch.float64)
    return out
