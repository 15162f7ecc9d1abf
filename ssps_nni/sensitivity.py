"""Sensitivity + integer program: a policy in seconds from the float model (docs/algorithm.md §10).

The method users already run (HAWQ-V3, LIMPQ, ModelOpt AutoQuantize), built from the same
pieces as the search, so its scores are exactly the search's dense scores (§3.1) taken at the
float model:

1. run ``num_batches`` training batches through the *float* model (open layers are not
   quantized; pinned layers run at their fixed bits), one backward each; the cells' score taps
   give ``s[l, j] = <dL/dv, Q_j(v) - v>`` for every searched layer ``l``, both operands ``v``
   (weight, input) and every candidate ``j`` (step sizes at their LSQ initialisation);
2. the sensitivity is the Fisher-style mean of squares ``S[l, j] = mean_batches s[l, j]^2``;
3. the policy minimises ``sum_l S_w[l, i_l] + S_a[l, j_l]`` subject to every budget, one
   ``(w, a)`` pair per layer: a multiple-choice knapsack solved exactly with HiGHS
   (``scipy.optimize.milp``), followed by the budget fill of §5.

``random_search_policy`` gives the floor any search must clear: a random feasible policy that
uses 0.97 to 1.0 of every budget (:func:`ssps_nni.solver.random_policy` on the search's tables).
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Iterable

import torch

from .policy import Policy
from .sampler import SLOTS
from .search import SSPSSearch


def sensitivity_scores(search: SSPSSearch, loss_fn: Callable[[object], torch.Tensor], batches: Iterable,
                       num_batches: int = 128) -> dict[str, torch.Tensor]:
    """Fisher-style sensitivity of every searched layer and candidate, from the float model.

    Args:
        search: a prepared :class:`SSPSSearch` (converted model, calibrated step sizes, costs).
        loss_fn: ``loss_fn(batch) -> scalar loss tensor`` (a forward of ``search.model``).
        batches: an iterable of batches, cycled if shorter than ``num_batches``.
        num_batches: how many batches to average over (>= 1).

    Returns:
        ``{'w': (L, n_w), 'a': (L, n_a)}`` float64 mean squared first-order scores (units:
        loss squared); row ``l`` is ``search.space.searched[l]``.

    Raises:
        ValueError: ``num_batches < 1`` or an empty ``batches``.
    """
    return first_order_scores(search, loss_fn, batches, num_batches)["squared"]


def first_order_scores(search: SSPSSearch, loss_fn: Callable[[object], torch.Tensor], batches: Iterable,
                       num_batches: int = 128) -> dict[str, dict[str, torch.Tensor]]:
    """The §3.1 scores of the float model, averaged over batches in both forms (§10 step 1).

    Args and errors: as :func:`sensitivity_scores`.

    Returns:
        ``{'squared': {slot: (L, n)}, 'signed': {slot: (L, n)}}`` float64: the mean of ``s^2``
        (loss squared) and the mean of ``s`` (the first-order loss increase, loss units).
    """
    if int(num_batches) < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    search.require_prepared()
    space, model = search.space, search.model
    sampler = space.sampler
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    shapes = {s: tuple(sampler.logits[s].shape) for s in SLOTS}
    total = {s: torch.zeros(shape, dtype=torch.float64) for s, shape in shapes.items()}
    signed = {s: torch.zeros(shape, dtype=torch.float64) for s, shape in shapes.items()}
    count = 0
    model.eval()  # BatchNorm uses its running statistics and keeps them
    for cell in space.cells.values():
        cell.train(True)  # the cells tap scores only in training mode
    sampler.float_forward, signal, fraction = True, sampler.signal, sampler.score_fraction
    sampler.signal, sampler.score_fraction = "dense", 1.0  # every sample counts here
    for p in frozen:
        p.requires_grad_(False)
    try:
        sampler.take_scores()
        for batch in itertools.islice(itertools.cycle(batches), int(num_batches)):
            loss = loss_fn(batch)
            loss.backward()
            raw = sampler.take_scores()
            for s in SLOTS:
                value = raw[s].double().cpu()
                total[s] += value ** 2
                signed[s] += value
            count += 1
    finally:
        for p in frozen:
            p.requires_grad_(True)
        sampler.float_forward, sampler.signal, sampler.score_fraction = False, signal, fraction
        model.train(was_training)
    if count == 0:
        raise ValueError("sensitivity_scores got no batch: the data loader is empty")
    return {"squared": {s: total[s] / count for s in SLOTS}, "signed": {s: signed[s] / count for s in SLOTS}}


def _apply(search: SSPSSearch, w_idx, a_idx) -> None:
    for l, (w, a) in enumerate(zip(w_idx, a_idx)):
        search.space.fix(l, "w", int(w))
        search.space.fix(l, "a", int(a))


def sensitivity_policy(search: SSPSSearch, scores: dict[str, torch.Tensor], time_limit: float = 60.0) -> Policy:
    """The policy minimising the summed sensitivity within every budget, then the fill (§10, §5).

    Args:
        search: the prepared search whose model the scores were measured on.
        scores: :func:`sensitivity_scores`. time_limit: seconds for HiGHS.

    Returns:
        The :class:`Policy` (``meta['method'] = 'sensitivity'``, the scores under
        ``meta['sensitivity']``), with every decision of ``search.space`` fixed.

    Raises:
        BudgetError: no policy meets every budget.
    """
    from .solver import solve_mckp

    start = time.perf_counter()
    s_w, s_a = scores["w"].double(), scores["a"].double()
    objective = s_w[:, :, None] + s_a[:, None, :]
    w_idx, a_idx = solve_mckp(objective, search.constraints(), time_limit=time_limit)
    _apply(search, w_idx, a_idx)
    search.conclude(search.budget_fill({"w": s_w, "a": s_a}))  # final when within budget (docs/algorithm.md §8)
    policy = search.policy()
    policy.meta["method"] = "sensitivity"
    policy.meta["solve_s"] = round(time.perf_counter() - start, 3)
    policy.meta["sensitivity"] = {
        name: {"w": [round(float(v), 9) for v in s_w[l]], "a": [round(float(v), 9) for v in s_a[l]]}
        for l, name in enumerate(search.space.searched)
    }
    return policy


def retarget(search: SSPSSearch, budget) -> None:
    """Point a prepared search at another budget and reopen every decision (one-shot methods).

    The model, calibration and layer profile stay; the budgets, targets and decider are rebuilt
    (``budget`` in any form :class:`~ssps_nni.search_config.SearchConfig` accepts).

    Raises:
        BudgetError: a malformed budget (an unreachable one is refused by the solver).
    """
    import dataclasses

    search.require_prepared()
    search.config = dataclasses.replace(search.config, budget=budget)
    for l in range(len(search.space.searched)):
        cell = search.space.cell(l)
        for slot in SLOTS:
            cell.set_mask(slot, torch.ones(len(cell.candidates(slot)), dtype=torch.bool))
    search.build_constraints()
    search.reopen()


def policies_at(search: SSPSSearch, scores: dict[str, torch.Tensor], budgets) -> dict:
    """``{budget: Policy}``: :func:`sensitivity_policy` of the same scores at each budget.

    The scores are measured once; each budget is one solve (seconds). The search is left at the
    last budget.
    """
    out = {}
    for budget in budgets:
        retarget(search, budget)
        out[budget] = sensitivity_policy(search, scores)
    return out


def random_search_policy(search: SSPSSearch, seed: int = 0, low: float = 0.97) -> Policy:
    """A random feasible policy using ``low`` to 1.0 of every budget (the floor of §9).

    Random start, random lowering until feasible, then random raises until none fits
    (:func:`ssps_nni.solver.random_policy`). Deterministic for a given ``seed``.
    """
    from .solver import random_policy as draw

    search.require_prepared()
    space = search.space
    generator = torch.Generator().manual_seed(int(seed))
    w_idx, a_idx = draw(search.constraints(), len(space.candidates["w"]), len(space.candidates["a"]),
                        generator, low=low)
    _apply(search, w_idx, a_idx)
    search.conclude()
    policy = search.policy()
    policy.meta["method"] = "random"
    policy.meta["seed"] = int(seed)
    return policy


__all__ = ["sensitivity_scores", "first_order_scores", "sensitivity_policy", "retarget", "policies_at",
           "random_search_policy"]
