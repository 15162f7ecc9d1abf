"""The logits' objective, its natural gradient and the Lagrange budget price.

docs/algorithm.md §3.1, §3.2, §5 and §7.

:class:`LogitsObjective` is a part of :class:`~ssps_nni.search.SSPSSearch` with explicit
inputs (the space, the running scores, the logits' optimizer, the configured signal and
budget term; the budgets' costs and targets are given per call, since a retarget rebuilds
them): each step the dense scores update the running estimate ``D``, ``J(p)`` of
``scores.py`` (expected normalized loss increase plus the budget term, priced by the
multipliers ``mu`` for the ``lagrange`` penalty) is differentiated with respect to the
probabilities, and its natural gradient is the logits' gradient for one Adam step.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .convert import SearchSpace
from .cost import SpaceCost
from .penalty import ConstraintLoss
from .sampler import SLOTS
from .scores import ScoreAverage, lagrange_multipliers, normalized


def constraint_tables(costs: dict[str, SpaceCost], targets: dict[str, float]) -> list[tuple[torch.Tensor, float]]:
    """Per budget, ``(table (L, n_w, n_a), limit)``: what the searched layers may cost (§4).

    The limit is the target less the pinned layers' cost (units of that cost).
    """
    return [(c.table, targets[n] - c.pinned_cost) for n, c in costs.items()]


class LogitsObjective:
    """The logits' update of :class:`~ssps_nni.search.SSPSSearch` (docs/algorithm.md §3.1, §7).

    Args:
        space: the search space; its sampler's logits ``{slot: (L, n)}`` get the gradient.
        scores: the running estimate ``D``, updated here with the dense signal.
        optimizer: the Adam over ``space.sampler.parameters()``.
        signal: ``'dense'`` or ``'sampled'`` (§3.1).
        constraint_loss: the configured budget term of ``J`` (§5), or None for the
            ``lagrange`` penalty, whose price is :attr:`mu`.
        diverged: ``diverged(what, layer)`` returns the
            :class:`~ssps_nni.errors.SearchDivergedError` to raise for a non-finite ``J``
            (``layer`` a phrase naming its source, or None).

    Attributes:
        mu: the Lagrange multipliers of the last step, one per cost in ``costs`` order
            (empty before the first ``lagrange`` step).
    """

    def __init__(self, space: SearchSpace, scores: ScoreAverage, optimizer: torch.optim.Optimizer, signal: str,
                 constraint_loss: ConstraintLoss | None, diverged: Callable[[str, str | None], Exception]):
        self.space, self.scores, self.optimizer = space, scores, optimizer
        self.signal, self.constraint_loss, self.diverged = signal, constraint_loss, diverged
        self.mu: list[float] = []

    def grads(self) -> list[torch.Tensor | None]:
        """The gradients of the sampler's parameters (the logits), None where there is none."""
        return [p.grad for p in self.space.sampler.parameters()]

    def step(self, warmup: bool, costs: dict[str, SpaceCost], targets: dict[str, float]) -> None:
        """One Adam step on the logits (skipped in warm-up), then clear their gradients.

        With the dense signal (§3.1) the step's tapped scores (already reduced over ranks and
        unscaled by the driver, like the logit gradients) update the running estimate ``D``
        first, also during warm-up; the logits' gradient is then the natural gradient of ``J``
        of ``scores.py``: ``dJ/dp - sum_i p_i dJ/dp_i`` per decision, which does not vanish as
        a decision becomes certain, so a consistent preference moves a logit by about the
        learning rate every step (§3.2).

        Args:
            warmup: the step is in warm-up (the logits are frozen).
            costs: ``{name: SpaceCost}`` of the budgets. targets: ``{name: target}`` (cost units).

        Raises:
            SearchDivergedError: ``J`` or its gradient is not finite (from ``diverged``).
        """
        if self.signal == "dense":
            raw = self.space.sampler.take_scores()
            if all(bool(torch.isfinite(r).all()) for r in raw.values()):
                self.scores.update(raw, {s: self.space.masks(s) for s in SLOTS})
            if not warmup and self.scores.measured:
                self.optimizer.zero_grad(set_to_none=True)
                self._natural_gradient(costs, targets)
        if not warmup:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _natural_gradient(self, costs: dict[str, SpaceCost], targets: dict[str, float]) -> None:
        space = self.space
        masks = {s: space.masks(s) for s in SLOTS}
        with torch.no_grad():
            probs = {s: space.probs(s).detach().double().cpu() for s in SLOTS}
        probs = {s: p.requires_grad_() for s, p in probs.items()}
        objective = self.value(probs, masks, costs, targets)
        grads = torch.autograd.grad(objective, [probs[s] for s in SLOTS])
        value = float(objective.detach())
        if not (math.isfinite(value) and all(bool(torch.isfinite(g).all()) for g in grads)):
            source = self._nonfinite_cost_or_score(costs)
            raise self.diverged(f"the logits objective J is {value} (or its gradient is not finite)",
                                f"it comes from {source}" if source else None)
        for slot, g in zip(SLOTS, grads):
            p = probs[slot].detach()
            natural = (g - (p * g).sum(-1, keepdim=True)).masked_fill(~masks[slot], 0.0)
            logits = space.sampler.logits[slot]
            logits.grad = natural.to(logits.device, logits.dtype)

    def value(self, probs: dict, masks: dict, costs: dict[str, SpaceCost], targets: dict[str, float]) -> torch.Tensor:
        """``J(p)`` of ``scores.py``: expected normalized loss increase plus the budget term.

        Sets :attr:`mu` with the ``lagrange`` penalty.

        Args:
            probs: ``{slot: (L, n)}`` float64 probabilities. masks: ``{slot: bool (L, n)}``.
            costs, targets: as :meth:`step`.
        """
        d = normalized({s: self.scores.value(s) for s in SLOTS}, masks)
        j = sum((probs[s] * d[s]).sum() for s in SLOTS)
        expected = {n: c.expected(probs["w"], probs["a"]).cpu() for n, c in costs.items()}
        if self.constraint_loss is not None:  # the configured form, as for the task loss (§5)
            term, _ = self.constraint_loss.extra(j, expected, targets)
            return j + term
        names = list(costs)
        tables, limits = zip(*constraint_tables(costs, targets))
        self.mu = lagrange_multipliers(d, masks, list(tables), list(limits), [targets[n] for n in names])
        return j + sum(m * expected[n] / targets[n] for m, n in zip(self.mu, names))

    def _nonfinite_cost_or_score(self, costs: dict[str, SpaceCost]) -> str | None:
        """The first searched layer whose running score or cost table holds NaN or inf."""
        for l, name in enumerate(self.space.searched):
            for slot in SLOTS:
                if not bool(torch.isfinite(self.scores.value(slot)[l]).all()):
                    return f"{name} (its running {slot} score D)"
            for cost_name, cost in costs.items():
                if not bool(torch.isfinite(cost.table[l]).all()):
                    return f"{name} (its {cost_name} cost table)"
        return None
