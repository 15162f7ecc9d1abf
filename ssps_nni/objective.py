"""The logits' objective, its natural gradient and the Lagrange budget price.

docs/algorithm.md §3.1, §3.2, §5 and §7.

:class:`LogitsObjective` is a part of :class:`~ssps_nni.search.SSPSSearch` (a mixin; it uses the
search's ``space``, ``scores``, ``costs``, ``targets``, ``config`` and ``logits_optimizer``): each
step the dense scores update the running estimate ``D``, ``J(p)`` of ``scores.py`` (expected
normalized loss increase plus the budget term, priced by the multipliers ``mu`` for the
``lagrange`` penalty) is differentiated with respect to the probabilities, and its natural
gradient is the logits' gradient for one Adam step.
"""
from __future__ import annotations

import math

import torch

from .sampler import SLOTS
from .scores import lagrange_multipliers, normalized


class LogitsObjective:
    """The logits' update of :class:`~ssps_nni.search.SSPSSearch` (docs/algorithm.md §3.1, §7)."""

    def logits_grads(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self.space.sampler.parameters()]

    def step_logits(self) -> None:
        """One Adam step on the logits (skipped in warm-up), then clear their gradients.

        With the dense signal (§3.1) the step's tapped scores (already reduced over ranks and
        unscaled by the driver, like the logit gradients) update the running estimate ``D``
        first, also during warm-up; the logits' gradient is then the natural gradient of ``J``
        of ``scores.py``: ``dJ/dp - sum_i p_i dJ/dp_i`` per decision, which does not vanish as
        a decision becomes certain, so a consistent preference moves a logit by about the
        learning rate every step (§3.2).
        """
        if self.config.signal == "dense":
            raw = self.space.sampler.take_scores()
            if all(bool(torch.isfinite(r).all()) for r in raw.values()):
                self.scores.update(raw, {s: self.space.masks(s) for s in SLOTS})
            if not self.in_warmup and self.scores.measured:
                self.logits_optimizer.zero_grad(set_to_none=True)
                self._natural_gradient()
        if not self.in_warmup:
            self.logits_optimizer.step()
        self.logits_optimizer.zero_grad(set_to_none=True)

    def _natural_gradient(self) -> None:
        space = self.space
        masks = {s: space.masks(s) for s in SLOTS}
        with torch.no_grad():
            probs = {s: space.probs(s).detach().double().cpu() for s in SLOTS}
        probs = {s: p.requires_grad_() for s, p in probs.items()}
        objective = self.logits_objective(probs, masks)
        grads = torch.autograd.grad(objective, [probs[s] for s in SLOTS])
        value = float(objective.detach())
        if not (math.isfinite(value) and all(bool(torch.isfinite(g).all()) for g in grads)):
            source = self._nonfinite_cost_or_score()
            raise self.diverged(f"the logits objective J is {value} (or its gradient is not finite)",
                                f"it comes from {source}" if source else None)
        for slot, g in zip(SLOTS, grads):
            p = probs[slot].detach()
            natural = (g - (p * g).sum(-1, keepdim=True)).masked_fill(~masks[slot], 0.0)
            logits = space.sampler.logits[slot]
            logits.grad = natural.to(logits.device, logits.dtype)

    def logits_objective(self, probs: dict, masks: dict) -> torch.Tensor:
        """``J(p)`` of ``scores.py``: expected normalized loss increase plus the budget term.

        Args:
            probs: ``{slot: (L, n)}`` float64 probabilities. masks: ``{slot: bool (L, n)}``.
        """
        d = normalized({s: self.scores.value(s) for s in SLOTS}, masks)
        j = sum((probs[s] * d[s]).sum() for s in SLOTS)
        expected = {n: c.expected(probs["w"], probs["a"]).cpu() for n, c in self.costs.items()}
        if self.config.penalty != "lagrange":  # the configured form, as for the task loss (§5)
            term, _ = self.config.constraint_loss.extra(j, expected, self.targets)
            return j + term
        names = list(self.costs)
        tables, limits = zip(*self.constraints())
        self.mu = lagrange_multipliers(d, masks, list(tables), list(limits), [self.targets[n] for n in names])
        return j + sum(m * expected[n] / self.targets[n] for m, n in zip(self.mu, names))

    def _nonfinite_cost_or_score(self) -> str | None:
        """The first searched layer whose running score or cost table holds NaN or inf."""
        for l, name in enumerate(self.space.searched):
            for slot in SLOTS:
                if not bool(torch.isfinite(self.scores.value(slot)[l]).all()):
                    return f"{name} (its running {slot} score D)"
            for cost_name, cost in self.costs.items():
                if not bool(torch.isfinite(cost.table[l]).all()):
                    return f"{name} (its {cost_name} cost table)"
        return None
