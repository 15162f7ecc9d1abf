"""The budgets of a search as constraints on its layer profile (docs/algorithm.md §4).

One chain, used by the search (:meth:`ssps_nni.search.SSPSSearch.build_constraints`) and by the
command line's early reachability check (:func:`ssps_nni.cli.cost_check.check`): each budget's
cost model, priced over the profiled layers (:class:`~ssps_nni.cost.SpaceCost`), its absolute
target (:meth:`~ssps_nni.cost.Budget.target`) and the :class:`~ssps_nni.decider.Constraint` the
decider keeps. Imports the core only (no driver, no command line).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .cost import CostModel, LayerProfile, SpaceCost, build_cost_model
from .decider import Constraint
from .search_config import SearchConfig

__all__ = ['BudgetConstraints', 'build_constraints', 'cost_models']


def cost_models(config: SearchConfig) -> dict[str, CostModel]:
    """``{cost: CostModel}`` of the config's budgets, in their order, with their ``cost_options``.

    Raises:
        UnknownCostError, LutMissingError, LutError: as :func:`~ssps_nni.cost.build_cost_model`.
    """
    return {b.cost: build_cost_model(b.cost, **config.cost_options.get(b.cost, {})) for b in config.budgets}


@dataclass(frozen=True)
class BudgetConstraints:
    """What the budgets of a config are on one layer profile.

    Attributes:
        costs: ``{cost: SpaceCost}``, in the budgets' order.
        targets: ``{cost: absolute target}`` in the cost's unit.
        constraints: one :class:`~ssps_nni.decider.Constraint` per budget, in their order.
    """

    costs: dict
    targets: dict
    constraints: list


def build_constraints(config: SearchConfig, profiles: Mapping[str, LayerProfile], searched: Sequence[str],
                      pinned: Mapping[str, tuple], w_candidates: Sequence[int], a_candidates: Sequence[int],
                      models: Mapping[str, CostModel] | None = None) -> BudgetConstraints:
    """The costs, targets and constraints of ``config.budgets`` on a layer profile (§4).

    Args:
        config: the search's config (its parsed budgets and ``cost_options``).
        profiles: ``{layer: LayerProfile}`` of every converted layer.
        searched: searched layer names (row ``l`` of the cost tables).
        pinned: ``{layer: (w_bits, a_bits)}`` of the pinned layers.
        w_candidates, a_candidates: the searched layers' candidate bit-widths.
        models: the cost models (:func:`cost_models`), when already built.

    Raises:
        UnknownCostError, LutMissingError, LutError: a cost model cannot be built, or a LUT does
        not price a layer at a candidate pair.
    """
    models = cost_models(config) if models is None else models
    costs = {name: SpaceCost(model, profiles, searched, pinned, w_candidates, a_candidates)
             for name, model in models.items()}
    targets = {b.cost: b.target(costs[b.cost]) for b in config.budgets}
    constraints = [Constraint(costs[b.cost], targets[b.cost], b.spec) for b in config.budgets]
    return BudgetConstraints(costs, targets, constraints)
