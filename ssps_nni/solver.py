"""Policy solvers over cost tables: exact integer program, greedy budget fill, random policy.

A policy picks, in each of the ``L`` searched layers, a weight candidate index ``i`` in
``0..nw-1`` and an activation candidate index ``j`` in ``0..na-1`` (candidates sorted by
ascending bit-width, so a higher index means more bits). A *constraint* is a pair
``(table, limit)``: ``table`` is float ``(L, nw, na)`` with ``table[l, i, j]`` the cost of layer
``l`` at ``(i, j)`` (for example ``SpaceCost.table``), and ``limit`` is what the searched layers
may cost together, in the table's unit (the caller subtracts the pinned layers' cost:
``target - SpaceCost.pinned_cost``). A policy meets it when
``sum_l table[l, i_l, j_l] <= limit + |limit| * 1e-9``.

* :func:`solve_mckp`: the exact optimum of a separable objective under every constraint, as a
  multiple-choice knapsack solved by HiGHS (docs/algorithm.md §10).
* :func:`budget_fill`: greedy raises that use up the budget left (docs/algorithm.md §5).
* :func:`random_policy`: a random feasible policy that uses the budget (random baselines).

Plain torch / numpy / scipy; nothing here imports nni or mmengine.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from .errors import BudgetError

_REL_TOL = 1e-9  # relative slack on every limit
_TINY = 1e-30  # keeps gain / cost finite for a raise that costs nothing
_OBJ_RANGE = 1e3  # the objective is rescaled to per-layer ranges in [0, 1e3] for HiGHS (see solve_mckp)
_ROW_UNITS = 1e6  # budget rows are scaled so that each limit is 1e6: HiGHS's 1e-6 tolerance is then 1e-12 relative

Constraints = Sequence[tuple[torch.Tensor, float]]


def _bound(limit: float) -> float:
    return limit + abs(limit) * _REL_TOL


def _stack(constraints: Constraints, shape=None):
    """``(P, limits)``: tables stacked layer-first as float64 ``(L, C, nw, na)``, limits ``(C,)``."""
    tables, limits = [], []
    for k, item in enumerate(constraints):
        try:
            table, limit = item
        except (TypeError, ValueError):
            raise ValueError(f"constraint {k} must be a pair (table, limit), got {type(item).__name__}") from None
        table = torch.as_tensor(table).detach().to("cpu", torch.float64)
        if table.dim() != 3 or (shape is not None and tuple(table.shape) != tuple(shape)):
            raise ValueError(f"constraint {k}: table shape {tuple(table.shape)}, expected (L, nw, na)"
                             + (f" = {tuple(shape)}" if shape is not None else ""))
        shape = tuple(table.shape)
        tables.append(table)
        limits.append(float(limit))
    if not tables:
        return torch.zeros((*shape[:1], 0, *shape[1:]), dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.stack(tables, 1), torch.tensor(limits, dtype=torch.float64)


def _mask(mask, shape, name):
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(mask).detach().to("cpu", torch.bool)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask


def _totals(P: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Cost of policy ``(w, a)`` under each constraint, ``(C,)``."""
    return P[torch.arange(P.shape[0]), :, w, a].sum(0)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def solve_mckp(
    objective: torch.Tensor,
    constraints: Constraints,
    allowed: torch.Tensor | None = None,
    time_limit: float = 60.0,
) -> tuple[list[int], list[int]]:
    """The policy minimising ``sum_l objective[l, i_l, j_l]`` under every constraint, exactly.

    A multiple-choice knapsack (docs/algorithm.md §10) solved as a 0/1 integer program by
    ``scipy.optimize.milp`` (HiGHS): one binary ``x[l, i, j]`` per allowed pair, one equality
    row per layer (exactly one pair chosen), one row ``sum table[l, i, j] x[l, i, j] <= limit``
    per constraint, with relative optimality gap 0. Each budget row is scaled so its limit reads
    1e6 and the objective is shifted and rescaled per layer (which leaves the optimum unchanged),
    so HiGHS's absolute tolerances (1e-6) are negligible next to the 1e-9 relative slack; the
    rounded answer is re-checked in float64 and, should it still exceed a limit, solved once
    more with that row tightened by the excess.

    Args:
        objective: float ``(L, nw, na)``, the value to minimise (any unit; finite where allowed).
        constraints: list of ``(table (L, nw, na), limit)``; may be empty.
        allowed: optional bool ``(L, nw, na)``, the pairs that may be chosen (default all).
        time_limit: seconds for HiGHS. If it runs out with a feasible policy found, that policy
            is returned with a ``RuntimeWarning`` (it may not be optimal).

    Returns:
        ``(w_idx, a_idx)``: two lists of ``L`` candidate indices.

    Raises:
        ValueError: shapes disagree, or the objective is not finite on an allowed pair.
        BudgetError: no policy meets every constraint (the message gives the cheapest reachable
            cost of each constraint against its limit), or a layer has no allowed pair.
        RuntimeError: HiGHS failed otherwise (for example the time limit passed before any
            feasible policy was found); the message names HiGHS's status message.
    """
    obj = torch.as_tensor(objective).detach().to("cpu", torch.float64)
    if obj.dim() != 3:
        raise ValueError(f"objective must be (L, nw, na), got shape {tuple(obj.shape)}")
    L, nw, na = obj.shape
    P, limits = _stack(constraints, obj.shape)
    mask = _mask(allowed, obj.shape, "allowed")
    empty = (~mask.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise BudgetError(f"layer(s) {empty} have no allowed (w, a) pair")
    bounds = [_bound(float(x)) for x in limits]
    cheapest = P.masked_fill(~mask[:, None], math.inf).flatten(2).min(2).values.sum(0)  # (C,)
    over = [k for k in range(len(bounds)) if float(cheapest[k]) > bounds[k]]
    if over:
        raise BudgetError("no policy meets the budget: " + "; ".join(
            f"constraint {k}: cheapest reachable cost {float(cheapest[k]):.6g} > limit {float(limits[k]):.6g}"
            for k in over))

    layer, pair = (t.numpy() for t in mask.flatten(1).nonzero(as_tuple=True))
    n = len(layer)
    c = obj.flatten(1).numpy()[layer, pair]
    if not np.isfinite(c).all():
        raise ValueError("objective must be finite on every allowed pair")
    layer_min = np.full(L, np.inf)
    np.minimum.at(layer_min, layer, c)
    c = c - layer_min[layer]  # a constant per layer: the optimum does not change
    c = c * (_OBJ_RANGE / c.max()) if c.max() > 0 else c
    # int32 indices: HiGHS's wrapper takes no int64 ones when this is the only constraint matrix
    one_per_layer = csr_array((np.ones(n), (layer.astype(np.int32), np.arange(n, dtype=np.int32))), shape=(L, n))
    one_per_layer = LinearConstraint(one_per_layer, 1, 1)
    scale = np.array([abs(b) or 1.0 for b in limits.tolist()]) / _ROW_UNITS
    A = P.flatten(2).numpy()[layer, :, pair].T / scale[:, None]  # (C, n)
    if not np.isfinite(A).all():
        raise ValueError("constraint tables must be finite on every allowed pair")
    ub = np.array(bounds) / scale

    for attempt in range(2):
        rows = [one_per_layer] + ([LinearConstraint(A, -np.inf, ub)] if len(ub) else [])
        res = milp(c, constraints=rows, integrality=np.ones(n), bounds=Bounds(0, 1),
                   options={"time_limit": float(time_limit), "mip_rel_gap": 0.0})
        if res.x is None:
            if res.status == 2 and attempt == 0:
                raise BudgetError(
                    "no policy meets every budget at once (each is reachable alone): cheapest reachable "
                    f"costs {_fmt(cheapest)} vs limits {_fmt(limits)}")
            raise RuntimeError(f"HiGHS found no policy: {res.message} (status {res.status})")
        choice = np.full((L, nw * na), -1.0)
        choice[layer, pair] = res.x
        picked = torch.as_tensor(choice.argmax(1))
        w, a = picked // na, picked % na
        excess = (_totals(P, w, a) - torch.tensor(bounds, dtype=torch.float64)).numpy() if len(ub) else np.zeros(0)
        if (excess <= 0).all():
            if res.status != 0:
                warnings.warn(f"HiGHS stopped early ({res.message}); the policy may not be optimal",
                              RuntimeWarning, stacklevel=2)
            return w.tolist(), a.tolist()
        ub = ub - np.maximum(excess, 0) / scale - 1e-6 * (excess > 0)  # 1e-6: HiGHS's feasibility tolerance
    raise RuntimeError(f"HiGHS returned a policy over a limit by {_fmt(excess)} twice")


def budget_fill(
    w_idx: Sequence[int],
    a_idx: Sequence[int],
    constraints: Constraints,
    gains_w: torch.Tensor | None = None,
    gains_a: torch.Tensor | None = None,
    allowed_w: torch.Tensor | None = None,
    allowed_a: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[int], list[int], list[dict]]:
    """Raise bit-widths greedily while a single raise fits (docs/algorithm.md §5).

    A *raise* moves one layer's weight (``'w'``) or activation (``'a'``) index to any higher
    allowed candidate index. It *fits* if afterwards every constraint still holds. While some
    raise fits, the best one is applied:

    * with gains: the raise maximising ``(gain + eps) / (dcost + 1e-30)``, where
      ``gain = max(score[cur] - score[new], 0)`` (scores are estimated losses, lower is better),
      ``dcost = sum_k max(delta_cost_k, 0) / |limit_k|`` and ``eps = 1e-12 * (1 + max gain)``, so
      a raise that costs nothing and gains goes first and a zero-gain raise still happens when it
      fits: the fill ends only when no raise fits. Ties go to the lowest layer, then slot
      ``'w'``, then the lower index. A missing ``gains_w`` or ``gains_a`` counts as all zeros.
    * with ``gains_w = gains_a = None`` and a ``generator``: a raise drawn uniformly among those
      that fit (random baselines).

    Args:
        w_idx, a_idx: the starting policy, ``L`` indices each; must meet every constraint.
        constraints: non-empty list of ``(table (L, nw, na), limit)``.
        gains_w: float ``(L, nw)``; gains_a: float ``(L, na)``: per-candidate estimated loss.
        allowed_w: bool ``(L, nw)``; allowed_a: bool ``(L, na)``: candidates a raise may reach
            (default all). The starting indices themselves are not checked against them.
        generator: ``torch.Generator`` for the random fill.

    Returns:
        ``(w_idx, a_idx, raises)``: the new indices (lists of ``L`` ints) and the raises in the
        order made, each ``{'layer': l, 'slot': 'w' | 'a', 'from': i, 'to': k}``.

    Raises:
        ValueError: no constraint, shapes disagree, or neither gains nor a generator given.
        BudgetError: the starting policy already breaks a constraint.
    """
    if gains_w is None and gains_a is None and generator is None:
        raise ValueError("budget_fill needs gains_w/gains_a or a torch.Generator for a random fill")
    if not constraints:
        raise ValueError("budget_fill needs at least one constraint")
    P, limits = _stack(constraints)
    L, C, nw, na = P.shape
    w = torch.as_tensor(list(w_idx), dtype=torch.long)
    a = torch.as_tensor(list(a_idx), dtype=torch.long)
    if w.shape != (L,) or a.shape != (L,) or not (0 <= w).all() or not (w < nw).all() \
            or not (0 <= a).all() or not (a < na).all():
        raise ValueError(f"w_idx / a_idx must be {L} indices in 0..{nw - 1} / 0..{na - 1}")
    allowed = {"w": _mask(allowed_w, (L, nw), "allowed_w"), "a": _mask(allowed_a, (L, na), "allowed_a")}
    random = gains_w is None and gains_a is None
    gains = {}
    for slot, g, n in (("w", gains_w, nw), ("a", gains_a, na)):
        g = torch.zeros(L, n, dtype=torch.float64) if g is None else torch.as_tensor(g).detach().to("cpu", torch.float64)
        if tuple(g.shape) != (L, n):
            raise ValueError(f"gains_{slot} has shape {tuple(g.shape)}, expected {(L, n)}")
        gains[slot] = g
    bound = limits + limits.abs() * _REL_TOL
    scale = torch.where(limits != 0, limits.abs(), torch.ones_like(limits))
    rows = torch.arange(L)
    totals = _totals(P, w, a)
    if (totals > bound).any():
        raise BudgetError(f"the starting policy breaks a budget: costs {_fmt(totals)} vs limits {_fmt(limits)}")

    raises = []
    while True:
        cur = P[rows, :, w, a]  # (L, C)
        totals = cur.sum(0)
        options = {}  # slot -> (fits (L, n), gain (L, n), dcost (L, n))
        for slot, idx, row_costs in (("w", w, P[rows, :, :, a]), ("a", a, P[rows, :, w, :])):  # (L, C, n)
            delta = row_costs - cur[:, :, None]
            higher = torch.arange(row_costs.shape[-1])[None, :] > idx[:, None]
            fits = ((totals[None, :, None] + delta) <= bound[None, :, None]).all(1) & higher & allowed[slot]
            gain = (gains[slot][rows, idx][:, None] - gains[slot]).clamp(min=0)
            dcost = (delta.clamp(min=0) / scale[None, :, None]).sum(1)
            options[slot] = (fits, gain, dcost)
        if not any(fits.any() for fits, _, _ in options.values()):
            return w.tolist(), a.tolist(), raises
        if random:
            found = {slot: fits.nonzero() for slot, (fits, _, _) in options.items()}  # (m, 2) rows (l, k)
            pick = int(torch.randint(len(found["w"]) + len(found["a"]), (1,), generator=generator))
            slot = "w" if pick < len(found["w"]) else "a"
            l, k = found[slot][pick if slot == "w" else pick - len(found["w"])].tolist()
        else:
            eps = 1e-12 * (1 + max(float(g[f].max()) for f, g, _ in options.values() if f.any()))
            best = None
            for slot, (fits, gain, dcost) in options.items():
                score = torch.where(fits, (gain + eps) / (dcost + _TINY), -math.inf)
                flat = int(score.argmax())
                value = float(score.flatten()[flat])
                l, k = divmod(flat, score.shape[1])
                if best is None or value > best[0] or (value == best[0] and l < best[2]):
                    best = (value, slot, l, k)
            _, slot, l, k = best
        idx = w if slot == "w" else a
        raises.append({"layer": l, "slot": slot, "from": int(idx[l]), "to": k})
        idx[l] = k


def random_policy(
    constraints: Constraints,
    nw: int,
    na: int,
    generator: torch.Generator,
    low: float = 0.97,
    allowed_w: torch.Tensor | None = None,
    allowed_a: torch.Tensor | None = None,
    tries: int = 200,
) -> tuple[list[int], list[int]]:
    """A uniformly drawn feasible policy that uses the budget (for random baselines).

    Each try: draw every slot's index uniformly among its allowed candidates; while a
    constraint is broken, lower a uniformly drawn slot that is above its lowest allowed index
    to its next lower allowed one; then :func:`budget_fill` with random raises until none fits.
    The first try whose cost is within ``[low * limit, limit]`` for every constraint is
    returned; after ``tries`` without one, the try with the highest ``min_k cost_k / limit_k``
    (no error). Deterministic for a given generator state.

    Args:
        constraints: non-empty list of ``(table (L, nw, na), limit)``.
        nw, na: candidate counts (checked against the tables).
        generator: ``torch.Generator`` (CPU) driving every random choice.
        low: the least accepted fraction of each limit.
        allowed_w: bool ``(L, nw)``; allowed_a: bool ``(L, na)`` (default all).
        tries: how many random starts at most.

    Returns:
        ``(w_idx, a_idx)``: two lists of ``L`` indices.

    Raises:
        ValueError: no constraint, shapes disagree, or a slot has no allowed candidate.
        BudgetError: even every slot at its lowest allowed candidate breaks a constraint.
    """
    if not constraints:
        raise ValueError("random_policy needs at least one constraint")
    P, limits = _stack(constraints)
    L = P.shape[0]
    if tuple(P.shape[2:]) != (nw, na):
        raise ValueError(f"tables have {tuple(P.shape[2:])} candidates, expected (nw, na) = {(nw, na)}")
    masks = {"w": _mask(allowed_w, (L, nw), "allowed_w"), "a": _mask(allowed_a, (L, na), "allowed_a")}
    for slot, m in masks.items():
        if not m.any(1).all():
            raise ValueError(f"layer(s) {(~m.any(1)).nonzero().flatten().tolist()} have no allowed {slot} candidate")
    lowest = {slot: m.double().argmax(1) for slot, m in masks.items()}  # first allowed index
    bound = limits + limits.abs() * _REL_TOL
    best, best_ratio = None, -math.inf
    for _ in range(max(int(tries), 1)):
        idx = {slot: torch.multinomial(m.double(), 1, generator=generator).flatten() for slot, m in masks.items()}
        while (_totals(P, idx["w"], idx["a"]) > bound).any():
            above = [(slot, int(l)) for slot in ("w", "a") for l in (idx[slot] > lowest[slot]).nonzero().flatten()]
            if not above:
                raise BudgetError(
                    f"even the lowest allowed candidates break a budget: costs "
                    f"{_fmt(_totals(P, idx['w'], idx['a']))} vs limits {_fmt(limits)}")
            slot, l = above[int(torch.randint(len(above), (1,), generator=generator))]
            idx[slot][l] = int(masks[slot][l, : int(idx[slot][l])].nonzero().max())
        w, a, _ = budget_fill(idx["w"].tolist(), idx["a"].tolist(), constraints,
                              allowed_w=masks["w"], allowed_a=masks["a"], generator=generator)
        ratios = _totals(P, torch.tensor(w), torch.tensor(a)) / limits
        ratio = float(ratios.min())
        if ratio > best_ratio:
            best, best_ratio = (w, a), ratio
        if ratio >= low:  # the upper side holds: the fill never breaks a constraint
            return w, a
    return best
