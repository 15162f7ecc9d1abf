"""Applying a policy to a model: the fixed mixed-precision model a policy describes (docs/algorithm.md §8)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .convert import fixed_model
from .policy import Policy

__all__ = ["apply_policy"]


def apply_policy(model: nn.Module, policy: Policy, log: Callable[[str], None] | None = None):
    """Turn plain ``model`` into the fixed mixed-precision model of ``policy`` (in place).

    Policy layer names may differ from the model's by a dotted prefix (a policy of the other
    route, :meth:`Policy.match_model`); the mapping is reported through ``log`` (default: the
    logger of :mod:`ssps_nni.policy` at INFO).

    Returns ``{model layer name: cell}``. Raises ``PolicyError`` naming the first mismatching layer.
    """
    return fixed_model(model, policy.for_model(model, log=log).bits())
