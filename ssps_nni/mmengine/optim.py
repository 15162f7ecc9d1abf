"""How SSPS's parameters join mmengine's optimisation.

- Quantizer step sizes join the task optimizer as one extra param group, a copy of group 0
  with ``weight_decay=0``; every parameter scheduler of that optimizer gets a base value for
  it, so its learning rate follows group 0 at every step (warm-up, cosine, one-cycle...).
- Logit gradients are hook-owned: mean-reduced over ranks as one flat tensor and unscaled by
  the AMP loss scale before the logits' own Adam steps.
"""
from __future__ import annotations

from typing import Iterable

import torch
from mmengine import dist
from mmengine.optim import OptimWrapper, OptimWrapperDict

__all__ = ['find_optim_wrapper', 'add_param_group', 'iter_schedulers', 'loss_scale', 'reduce_logit_grads']


def find_optim_wrapper(optim_wrapper, param: torch.Tensor) -> OptimWrapper | None:
    """The :class:`OptimWrapper` whose optimizer holds ``param``; None outside training.

    ``runner.optim_wrapper`` is still a config dict under ``runner.val()``/``test()``.
    """
    if isinstance(optim_wrapper, OptimWrapperDict):
        candidates = list(optim_wrapper.values())
    elif isinstance(optim_wrapper, OptimWrapper):
        candidates = [optim_wrapper]
    else:
        return None
    for wrapper in candidates:
        if any(p is param for group in wrapper.param_groups for p in group['params']):
            return wrapper
    return None


def iter_schedulers(param_schedulers) -> Iterable:
    """Flatten ``runner.param_schedulers`` (None, a list, or ``{name: list}``)."""
    if param_schedulers is None:
        return []
    if isinstance(param_schedulers, dict):
        return [s for group in param_schedulers.values() for s in (group or [])]
    return list(param_schedulers)


def add_param_group(wrapper: OptimWrapper, params: list[torch.nn.Parameter], param_schedulers) -> dict:
    """Add ``params`` as a copy of param group 0 with ``weight_decay=0``; extend the schedulers.

    Copying every key of group 0 (``lr``, ``initial_lr``, ``momentum``, one-cycle keys...) and
    appending the group's initial value to each scheduler's ``base_values`` (``min_values``
    for ReduceOnPlateau) keeps the new group's learning rate equal to group 0's.

    Returns:
        The new param group.
    """
    optimizer = wrapper.optimizer
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != 'params'}
    if 'weight_decay' in group:
        group['weight_decay'] = 0.0
    group['params'] = list(params)
    optimizer.add_param_group(group)
    new = optimizer.param_groups[-1]
    for scheduler in iter_schedulers(param_schedulers):
        if scheduler.optimizer.param_groups is not optimizer.param_groups:
            continue
        name = scheduler.param_name
        if len(scheduler.base_values) < len(optimizer.param_groups):
            scheduler.base_values.append(new.get(f'initial_{name}', new[name]))
        min_values = getattr(scheduler, 'min_values', None)
        if isinstance(min_values, list) and len(min_values) < len(optimizer.param_groups):
            min_values.append(min_values[0])
    return new


def loss_scale(wrapper: OptimWrapper | None) -> float:
    """The AMP loss scale that gradients carry now (1.0 without a dynamic scaler)."""
    scaler = getattr(wrapper, 'loss_scaler', None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    return float(scaler.get_scale())


def reduce_logit_grads(params: list[torch.nn.Parameter], scale: float = 1.0) -> bool:
    """Mean-reduce the gradients of ``params`` over ranks and divide them by ``scale``.

    Returns:
        False if a gradient is not finite (an AMP overflow step: the caller skips the update).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    # the logits live on the CPU, the score probes on the model's device: one flat tensor on the
    # last one's device (mmengine's all_reduce moves it to the backend's device and back)
    device = grads[-1].device
    flat = torch.cat([g.reshape(-1).to(device) for g in grads])
    if dist.get_world_size() > 1:
        dist.all_reduce(flat, op='mean')
    if scale != 1.0:
        flat = flat / scale
    if not bool(torch.isfinite(flat).all()):
        return False
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return True
