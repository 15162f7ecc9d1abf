"""Constraint loss that puts the budget into the training loss (docs/algorithm.md §5).

With ``r = E[C] / C_target`` for each budget:

- ``hinge``: ``L = L_task + lambda * max(0, r - 1)``
- ``abs``:   ``L = L_task + lambda * |r - 1|``
- ``log2``:  ``L = L_task + lambda * (log r)^2``
- ``mul``:   ``L = L_task * r^beta`` (FBNet style)

Several budgets add their terms (or multiply their factors). Computed in torch, in float64,
so a BitOPs count near 1e12 does not overflow under mixed precision.
"""
from __future__ import annotations

from typing import Literal, Mapping

import torch

PenaltyForm = Literal["hinge", "abs", "log2", "mul"]
PENALTY_FORMS = ("hinge", "abs", "log2", "mul")


def penalty_term(ratio: torch.Tensor, form: PenaltyForm) -> torch.Tensor:
    """``g(r)`` of the additive forms.

    >>> float(penalty_term(torch.tensor(1.5), 'hinge')), float(penalty_term(torch.tensor(0.5), 'abs'))
    (0.5, 0.5)
    """
    if form == "hinge":
        return torch.relu(ratio - 1)
    if form == "abs":
        return (ratio - 1).abs()
    if form == "log2":
        return torch.log(ratio) ** 2
    raise ValueError(f"unknown additive penalty form {form!r}; accepted: hinge, abs, log2")


class ConstraintLoss:
    """Budget-aware loss (§5).

    Args:
        form: one of :data:`PENALTY_FORMS`.
        lam: weight ``lambda`` of the additive forms. beta: exponent of ``mul``.

    Raises:
        ValueError: unknown form, or a negative weight.
    """

    def __init__(self, form: PenaltyForm = "abs", lam: float = 1.0, beta: float = 0.6):
        if form not in PENALTY_FORMS:
            raise ValueError(f"unknown penalty form {form!r}; accepted: {', '.join(PENALTY_FORMS)}")
        if lam < 0 or beta < 0:
            raise ValueError(f"lam and beta must be >= 0, got lam={lam}, beta={beta}")
        self.form, self.lam, self.beta = form, float(lam), float(beta)

    def ratios(self, expected: Mapping[str, torch.Tensor], targets: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """``{cost: E[C] / C_target}``."""
        return {name: expected[name] / float(targets[name]) for name in targets}

    def extra(self, task_loss: torch.Tensor, expected, targets) -> tuple[torch.Tensor, dict[str, float]]:
        """The term to *add* to ``task_loss`` so that the sum equals the constrained loss.

        For ``mul`` this is ``L_task * (prod r^beta - 1)``. Returns ``(term, details)`` with
        ``details = {'ratio/<cost>': r, ...}`` for logging. The term is float32 on
        ``task_loss.device``.
        """
        ratios = self.ratios(expected, targets)
        details = {f"ratio/{k}": float(v.detach()) for k, v in ratios.items()}
        if self.form == "mul":
            factor = torch.ones((), dtype=torch.float64)
            for r in ratios.values():
                factor = factor * r.to(factor.device) ** self.beta
            term = task_loss * (factor.to(task_loss.device, task_loss.dtype) - 1)
        else:
            total = sum(penalty_term(r, self.form) for r in ratios.values())
            term = (self.lam * total).to(task_loss.device, torch.float32)
        details["loss_ssps"] = float(term.detach())
        return term, details

    def __call__(self, task_loss: torch.Tensor, expected, targets) -> tuple[torch.Tensor, dict[str, float]]:
        """``(L, details)``: the constrained loss and the ratios, as NNI's penalties return."""
        term, details = self.extra(task_loss, expected, targets)
        return task_loss + term, details
