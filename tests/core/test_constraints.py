"""One constraint builder (ssps_nni/constraints.py, docs/algorithm.md §4) and an immutable SearchConfig.

The search (``SSPSSearch.build_constraints``, at ``prepare``) and the command line's early
reachability check (``ssps_nni.cli.cost_check.check`` on a cached layer profile) both build their
costs, targets and constraints with :func:`ssps_nni.constraints.build_constraints`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict

import pytest
import torch

import ssps_nni.constraints as constraints_module
import ssps_nni.cost as cost_module
from ssps_nni.cli import cost_check
from ssps_nni.cli.common import InputError
from ssps_nni.search import SearchConfig, SSPSSearch
from tiny_models import HandNet, hand_input

BUDGETS = "bitops=W4A4,size=W4A8"


def prepared(budget: str = BUDGETS) -> SSPSSearch:
    torch.manual_seed(0)
    model = HandNet()
    search = SSPSSearch(model, SearchConfig(budget=budget, candidates=(2, 4, 8), total_steps=8))
    search.prepare(lambda: model(hand_input(4)), num_samples=4)
    return search


def record_of(search: SSPSSearch) -> dict:
    """The profile record ``cost_check.measure_profile`` keeps, of a prepared search."""
    space = search.space
    return {'key': 'test', 'profiles': {n: asdict(p) for n, p in search.profiles.items()},
            'searched': list(space.searched), 'pinned': {n: list(b) for n, b in space.pinned.items()}, 'samples': 4}


def test_search_and_early_check_build_constraints_with_one_function(monkeypatch):
    """Both callers reach the body of ``constraints.build_constraints`` (its ``SpaceCost`` is
    spied on) and get the same tables, targets and budgets."""
    made = []

    class Spied(cost_module.SpaceCost):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(constraints_module, 'SpaceCost', Spied)
    search = prepared()
    from_search = {c.name: c for c in made}
    assert set(from_search) == {'bitops', 'size'} and search.costs == from_search
    made.clear()
    cost_check.check(record_of(search), search.config)  # reachable: no error
    from_check = {c.name: c for c in made}
    assert set(from_check) == {'bitops', 'size'}
    for name, cost in from_search.items():
        assert torch.equal(cost.table, from_check[name].table) and cost.pinned_cost == from_check[name].pinned_cost
    built = cost_check.record_constraints(record_of(search), search.config)
    assert built.targets == search.targets
    assert [c.spec for c in built.constraints] == [c.spec for c in search.decider.constraints] == ['bitops=W4A4',
                                                                                                 'size=W4A8']


def test_early_check_refuses_what_the_search_refuses():
    search = prepared()
    with pytest.raises(InputError, match=r'budget bitops=1 .* is unreachable'):
        cost_check.check(record_of(search), dataclasses.replace(search.config, budget='bitops=1'))


def test_early_check_notes_a_budget_that_constrains_nothing():
    """A budget at or above the all-maximum policy's cost is reachable but says nothing: a note, not an error."""
    search = prepared()
    assert cost_check.check(record_of(search), search.config) == []
    top = search.costs['bitops'].references()['max']
    notes = cost_check.check(record_of(search), dataclasses.replace(search.config, budget=f'bitops={top * 2:.6g}'))
    assert len(notes) == 1 and 'constrains nothing' in notes[0] and notes[0].startswith(f'budget bitops={top * 2:.6g} ')


def test_search_config_is_immutable_and_parsed_once(monkeypatch):
    calls = []
    parse = cost_module.parse_budget
    monkeypatch.setattr(cost_module, 'parse_budget', lambda text: calls.append(text) or parse(text))
    config = SearchConfig(budget=BUDGETS, candidates=[8, 2, 4, 4])
    assert calls == ['bitops=W4A4', 'size=W4A8']
    assert config.budget == BUDGETS and [b.spec for b in config.budgets] == ['bitops=W4A4', 'size=W4A8']
    assert config.candidates == (2, 4, 8)
    assert 'budgets' in {f.name for f in dataclasses.fields(config)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.budget = 'size=1MB'
    later = config.with_schedule(40, 0.25, 2)
    assert calls == ['bitops=W4A4', 'size=W4A8']  # not parsed again
    assert (later.total_steps, later.warmup_steps) == (40, 10)
    assert (later.decider.total_steps, later.decider.warmup_steps, later.decider.interval) == (40, 10, 2)
    assert later.budget == BUDGETS and later.budgets == config.budgets
    assert (config.total_steps, config.decider.total_steps) == (1000, 1000)  # the original is unchanged
    other = dataclasses.replace(config, budget='size=1MB')  # a new budget is parsed, not the old one kept
    assert [b.spec for b in other.budgets] == ['size=1MB'] and calls[-1] == 'size=1MB'
    assert SearchConfig.from_dict(config.to_dict()) == config
