"""Exact integer program, greedy budget fill and random policy (ssps_nni/solver.py).

Small instances are checked against brute force over every policy.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from ssps_nni.errors import BudgetError
from ssps_nni.solver import budget_fill, random_policy, solve_mckp

BITS = torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64)


def bitops_table(macs, bits_w=BITS, bits_a=BITS):
    """``macs[l] * b_w * b_a`` as ``(L, nw, na)``."""
    return torch.as_tensor(macs, dtype=torch.float64)[:, None, None] * bits_w[None, :, None] * bits_a[None, None, :]


def size_table(params, na=3, bits_w=BITS):
    """``params[l] * b_w`` as ``(L, nw, na)``: activation bits cost nothing."""
    t = torch.as_tensor(params, dtype=torch.float64)[:, None] * bits_w[None, :]
    return t[:, :, None].expand(-1, -1, na).clone()


def cost(table, w, a):
    return float(table[torch.arange(table.shape[0]), torch.as_tensor(w), torch.as_tensor(a)].sum())


def holds(constraints, w, a):
    return all(cost(t, w, a) <= limit * (1 + 1e-9) for t, limit in constraints)


def brute_force(objective, constraints, allowed=None):
    """``(best value, w, a)`` over every policy (vectorised), or None if none is feasible."""
    L, nw, na = objective.shape
    pairs = torch.cartesian_prod(*[torch.arange(nw * na)] * L).reshape(-1, L)  # every policy
    rows = torch.arange(L)

    def totals(table):
        return table.flatten(1)[rows, pairs].sum(1)

    ok = torch.ones(len(pairs), dtype=torch.bool)
    for table, limit in constraints:
        ok &= totals(table) <= limit * (1 + 1e-9)
    if allowed is not None:
        ok &= allowed.flatten(1)[rows, pairs].all(1)
    if not ok.any():
        return None
    values = totals(objective).masked_fill(~ok, float("inf"))
    best = int(values.argmin())
    return float(values[best]), (pairs[best] // na).tolist(), (pairs[best] % na).tolist()


def random_instance(seed, L, n_budgets):
    g = torch.Generator().manual_seed(seed)
    objective = torch.rand(L, 3, 3, generator=g, dtype=torch.float64)
    tables = [bitops_table(torch.rand(L, generator=g, dtype=torch.float64) * 100 + 1),
              size_table(torch.rand(L, generator=g, dtype=torch.float64) * 50 + 1)][:n_budgets]
    # a limit between the all-min and all-max cost of each table
    constraints = [(t, float(t[:, 0, 0].sum() + torch.rand(1, generator=g, dtype=torch.float64)
                             * (t[:, -1, -1].sum() - t[:, 0, 0].sum()))) for t in tables]
    return objective, constraints


def single_raises(w, a, constraints, allowed_w=None, allowed_a=None):
    """Every raise that fits at ``(w, a)``, as ``(layer, slot, to)``."""
    L, nw, na = constraints[0][0].shape
    found = []
    for l in range(L):
        for k in range(w[l] + 1, nw):
            w2 = list(w); w2[l] = k
            if (allowed_w is None or allowed_w[l, k]) and holds(constraints, w2, a):
                found.append((l, "w", k))
        for k in range(a[l] + 1, na):
            a2 = list(a); a2[l] = k
            if (allowed_a is None or allowed_a[l, k]) and holds(constraints, w, a2):
                found.append((l, "a", k))
    return found


# ---------------------------------------------------------------- solve_mckp


@pytest.mark.parametrize("n_budgets", [1, 2])
@pytest.mark.parametrize("L", [3, 4])
def test_solve_mckp_matches_brute_force(L, n_budgets):
    for seed in range(8):
        objective, constraints = random_instance(100 * L + 10 * n_budgets + seed, L, n_budgets)
        expected = brute_force(objective, constraints)
        if expected is None:  # possible with two budgets: must be refused
            with pytest.raises(BudgetError):
                solve_mckp(objective, constraints)
            continue
        w, a = solve_mckp(objective, constraints)
        assert len(w) == len(a) == L
        assert holds(constraints, w, a)
        assert cost(objective, w, a) == pytest.approx(expected[0], abs=1e-9)


def test_solve_mckp_no_constraint_takes_per_layer_minimum():
    objective = torch.rand(5, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w, a = solve_mckp(objective, [])
    best = objective.flatten(1).argmin(1)
    assert w == (best // 3).tolist() and a == (best % 3).tolist()


def test_solve_mckp_respects_allowed():
    for seed in range(6):
        objective, constraints = random_instance(seed, 3, 2)
        g = torch.Generator().manual_seed(1000 + seed)
        allowed = torch.rand(3, 3, 3, generator=g) < 0.5
        allowed[:, 0, 0] = True  # the all-min policy stays reachable
        constraints = [(t, max(limit, cost(t, [0] * 3, [0] * 3))) for t, limit in constraints]
        w, a = solve_mckp(objective, constraints, allowed=allowed)
        assert all(allowed[l, w[l], a[l]] for l in range(3))
        assert cost(objective, w, a) == pytest.approx(brute_force(objective, constraints, allowed)[0], abs=1e-9)


def test_solve_mckp_allowed_overrides_a_better_pair():
    objective = torch.zeros(2, 3, 3, dtype=torch.float64)
    objective[:, 2, 2] = -1.0  # best everywhere, but not allowed in layer 0
    allowed = torch.ones(2, 3, 3, dtype=torch.bool)
    allowed[0, 2, 2] = False
    w, a = solve_mckp(objective, [], allowed=allowed)
    assert (w[0], a[0]) != (2, 2) and (w[1], a[1]) == (2, 2)


def test_solve_mckp_infeasible_names_cheapest_and_limit():
    table = bitops_table([10.0, 20.0])  # cheapest: 30 * 4 = 120
    with pytest.raises(BudgetError, match=r"cheapest reachable cost 120 > limit 100"):
        solve_mckp(torch.zeros(2, 3, 3), [(table, 100.0)])
    allowed = torch.ones(2, 3, 3, dtype=torch.bool)
    allowed[:, 0, :] = False  # cheapest now 30 * 4 * 2 = 240
    with pytest.raises(BudgetError, match=r"cheapest reachable cost 240 > limit 200"):
        solve_mckp(torch.zeros(2, 3, 3), [(table, 200.0)], allowed=allowed)


def test_solve_mckp_jointly_infeasible():
    # one layer: budget A wants low w bits and high a bits, budget B the opposite
    a_cost = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    b_cost = a_cost.transpose(1, 2).clone()
    b_cost[0, 0, 0] = 1.0
    a_cost[0, 0, 0] = 1.0  # (0, 0) is over both; each alone is reachable with (0, j>0) or (i>0, 0)
    with pytest.raises(BudgetError, match="at once"):
        solve_mckp(torch.zeros(1, 3, 3), [(a_cost, 0.5), (b_cost, 0.5)])


def test_solve_mckp_limit_met_exactly():
    table = bitops_table([1.0, 1.0])
    w, a = solve_mckp(-table, [(table, float(table[0, 1, 1] * 2))])  # maximise cost up to W4A4
    assert cost(table, w, a) == pytest.approx(32.0)


def test_solve_mckp_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        solve_mckp(torch.zeros(2, 3, 3), [(torch.zeros(2, 3, 2), 1.0)])
    with pytest.raises(BudgetError, match="no allowed"):
        solve_mckp(torch.zeros(2, 3, 3), [], allowed=torch.zeros(2, 3, 3, dtype=torch.bool))


# ---------------------------------------------------------------- budget_fill


@pytest.mark.parametrize("mode", ["gains", "random"])
def test_budget_fill_ends_when_no_raise_fits(mode):
    for seed in range(10):
        objective, constraints = random_instance(seed, 4, 1 + seed % 2)
        w0 = a0 = [0] * 4
        if not holds(constraints, w0, a0):
            continue
        g = torch.Generator().manual_seed(seed)
        kwargs = ({"gains_w": torch.rand(4, 3, generator=g), "gains_a": torch.rand(4, 3, generator=g)}
                  if mode == "gains" else {"generator": g})
        w, a, raises = budget_fill(w0, a0, constraints, **kwargs)
        assert holds(constraints, w, a)
        assert single_raises(w, a, constraints) == []
        # the raises replay from the start and each one keeps every constraint
        w_r, a_r = list(w0), list(a0)
        for r in raises:
            idx = w_r if r["slot"] == "w" else a_r
            assert idx[r["layer"]] == r["from"] < r["to"]
            idx[r["layer"]] = r["to"]
            assert holds(constraints, w_r, a_r)
        assert (w_r, a_r) == (w, a)


def test_budget_fill_prefers_gain_per_cost():
    # layer 0: raise costs 10 for gain 1.0 (1.2 per limit); layer 1: costs 2 for gain 0.5 (3.0)
    table = torch.tensor([[[1.0], [11.0]], [[1.0], [3.0]]], dtype=torch.float64)
    gains_w = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    w, a, raises = budget_fill([0, 0], [0, 0], [(table, 12.0)], gains_w=gains_w)
    # raising layer 1 first leaves 8 < 10: layer 0 no longer fits (greedy by gain alone gives [1, 0])
    assert raises == [{"layer": 1, "slot": "w", "from": 0, "to": 1}]
    assert (w, a) == ([0, 1], [0, 0])


def test_budget_fill_may_skip_a_candidate():
    # from index 0: to 1 gains 0.1 for cost 4, to 2 gains 1.0 for cost 5: jump straight to 2
    table = torch.tensor([[[1.0], [5.0], [6.0]]], dtype=torch.float64)
    gains_w = torch.tensor([[1.0, 0.9, 0.0]])
    w, _, raises = budget_fill([0], [0], [(table, 100.0)], gains_w=gains_w)
    assert raises == [{"layer": 0, "slot": "w", "from": 0, "to": 2}] and w == [2]


def test_budget_fill_free_raise_goes_first():
    # size budget: activation bits cost nothing, so the 'a' raise with a gain goes first
    table = size_table([10.0], na=3)
    gains_w = torch.tensor([[1.0, 0.0, 0.0]])  # a big gain, but it costs
    gains_a = torch.tensor([[0.2, 0.1, 0.1]])
    w, a, raises = budget_fill([0], [0], [(table, 1000.0)], gains_w=gains_w, gains_a=gains_a)
    assert raises[0] == {"layer": 0, "slot": "a", "from": 0, "to": 1}
    assert (w, a) == ([2], [2])


def test_budget_fill_makes_zero_gain_raises():
    table = bitops_table([1.0, 2.0])
    zeros = torch.zeros(2, 3)
    limit = float(table[0, 1, 1] + table[1, 1, 0])  # W4A4 + W4A2: fits some raises, not all
    w, a, raises = budget_fill([0, 0], [0, 0], [(table, limit)], gains_w=zeros, gains_a=zeros)
    assert raises and holds([(table, limit)], w, a)
    assert single_raises(w, a, [(table, limit)]) == []


@pytest.mark.parametrize("mode", ["gains", "random"])
def test_budget_fill_reaches_all_max(mode):
    table = bitops_table([3.0, 1.0, 2.0])
    limit = float(table[:, -1, -1].sum())
    g = torch.Generator().manual_seed(0)
    kwargs = ({"gains_w": torch.rand(3, 3, generator=g), "gains_a": torch.rand(3, 3, generator=g)} if mode == "gains"
              else {"generator": g})
    w, a, _ = budget_fill([0, 1, 0], [2, 0, 0], [(table, limit), (size_table([5.0, 1.0, 1.0]), 1e9)], **kwargs)
    assert (w, a) == ([2, 2, 2], [2, 2, 2])


def test_budget_fill_respects_allowed():
    table = bitops_table([1.0, 1.0])
    allowed_w = torch.tensor([[True, False, True], [True, True, False]])
    allowed_a = torch.tensor([[True, True, False], [True, False, False]])
    w, a, raises = budget_fill([0, 0], [0, 0], [(table, 1e9)], generator=torch.Generator().manual_seed(3),
                               allowed_w=allowed_w, allowed_a=allowed_a)
    assert (w, a) == ([2, 1], [1, 0])
    assert all((allowed_w if r["slot"] == "w" else allowed_a)[r["layer"], r["to"]] for r in raises)


def test_budget_fill_errors():
    table = bitops_table([1.0, 1.0])
    with pytest.raises(BudgetError, match="starting policy"):
        budget_fill([2, 2], [2, 2], [(table, 10.0)], generator=torch.Generator())
    with pytest.raises(ValueError, match="Generator"):
        budget_fill([0, 0], [0, 0], [(table, 100.0)])


# ---------------------------------------------------------------- random_policy


def layered_constraints(L=24):
    g = torch.Generator().manual_seed(7)
    bits = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0, 8.0], dtype=torch.float64)
    macs = torch.rand(L, generator=g, dtype=torch.float64) * 10 + 1
    params = torch.rand(L, generator=g, dtype=torch.float64) * 10 + 1
    bitops, size = bitops_table(macs, bits, bits), size_table(params, 6, bits)
    return [(bitops, float(bitops[:, 2, 2].sum())), (size, float(size[:, 3, 0].sum()))]  # W4A4, W5


def test_random_policy_uses_the_budget():
    constraints = layered_constraints()
    w, a = random_policy(constraints, 6, 6, torch.Generator().manual_seed(0))
    for t, limit in constraints:
        assert 0.97 * limit <= cost(t, w, a) <= limit * (1 + 1e-9)


def test_random_policy_reproducible_and_varies_with_seed():
    constraints = layered_constraints()
    runs = [random_policy(constraints, 6, 6, torch.Generator().manual_seed(s)) for s in (0, 0, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2] and runs[0] != runs[3]


def test_random_policy_respects_allowed_and_low():
    constraints = layered_constraints(8)
    allowed_w = torch.ones(8, 6, dtype=torch.bool)
    allowed_w[:, 4:] = False
    w, a = random_policy(constraints, 6, 6, torch.Generator().manual_seed(0), allowed_w=allowed_w)
    assert max(w) < 4 and holds(constraints, w, a)
    # an unreachable fraction: returns the best try rather than raising
    w, a = random_policy(constraints, 6, 6, torch.Generator().manual_seed(0), low=1.5, tries=3)
    assert holds(constraints, w, a)


def test_random_policy_infeasible():
    table = bitops_table([10.0, 20.0])
    with pytest.raises(BudgetError, match="lowest allowed"):
        random_policy([(table, 100.0)], 3, 3, torch.Generator().manual_seed(0))
