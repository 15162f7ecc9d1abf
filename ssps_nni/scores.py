"""From dense per-candidate scores to logit updates (docs/algorithm.md §3.1, §5).

Each search step, the cells' :class:`~ssps_nni.quant.ScoreTap` leave a raw first-order score
``s[d, j] = <dL/dv_q, Q_j(v) - v>`` for every open decision ``d`` and candidate ``j``. This
module turns them into an estimate ``D[d, j]`` of the loss increase of candidate ``j``:

- ``form='squared'`` (default): ``s^2``, a Fisher-style estimate of the second-order loss increase
  (HAWQ, FIT, AutoQuantize use the same quantity); ``form='signed'``: ``s`` itself;
- ``ema`` in [0, 1): a running average ``D <- ema * D + (1 - ema) * new`` (bias-corrected, as
  Adam's moments), ``ema=0`` uses each step's scores alone.

The logits then descend the objective (the budget enters it, §5)::

    J(alpha) = sum_d p_d . D_hat_d  +  sum_b mu_b * E[C_b] / T_b            (penalty 'lagrange')
    J(alpha) = sum_d p_d . D_hat_d  +  lam * g(E[C_b] / T_b)                (penalty 'abs', ...)

with ``D_hat = D / mean_d(max_j D - min_j D)`` (scale-free, so ``lam`` means the same on any
model) and ``mu_b >= 0`` the smallest multipliers for which the per-layer
minimiser of ``D_hat + sum_b mu_b C_b / T_b`` meets every budget (found by bisection): the price
of the budget in units of estimated loss, so that neither term drowns the other.
"""
from __future__ import annotations

import math

import torch

from .sampler import SLOTS

SCORE_FORMS = ("squared", "signed")


class ScoreAverage:
    """Running estimate ``D`` of the per-candidate loss increase, ``{slot: (L, n)}`` float64.

    Args:
        shapes: ``{slot: (L, n)}``. form: ``'squared'`` or ``'signed'``. ema: decay in [0, 1).

    Raises:
        ValueError: unknown form or ``ema`` outside [0, 1).
    """

    def __init__(self, shapes: dict, form: str = "squared", ema: float = 0.98):
        if form not in SCORE_FORMS:
            raise ValueError(f"unknown score form {form!r}; accepted: {', '.join(SCORE_FORMS)}")
        if not 0 <= ema < 1:
            raise ValueError(f"score_ema must be in [0, 1), got {ema}")
        self.form, self.ema = form, float(ema)
        self.sum = {s: torch.zeros(shape, dtype=torch.float64) for s, shape in shapes.items()}
        self.count = {s: torch.zeros(shape, dtype=torch.float64) for s, shape in shapes.items()}
        self.scale: dict | None = None  # per-operand calibration (score_calibration.py), None: 1

    def set_scale(self, factors: dict) -> None:
        """Multiply :meth:`value` by ``factors[slot]`` (``(n,)``, per candidate) from now on (§10.2)."""
        self.scale = {s: torch.as_tensor(factors[s], dtype=torch.float64).detach().clone().cpu() for s in SLOTS}

    def update(self, raw: dict, masks: dict) -> None:
        """Fold one step's raw scores ``{slot: (L, n)}`` into the open decisions.

        Args:
            masks: ``{slot: bool (L, n)}`` allowed candidates; a decision is open while it has
                more than one. Only allowed candidates of open decisions are updated, so a
                decided or pruned candidate keeps its last estimate (the budget fill reads it).
        """
        for slot in SLOTS:
            new = raw[slot].detach().double().cpu()
            new = new * new if self.form == "squared" else new
            m = masks[slot].cpu()
            cells = m & (m.sum(1, keepdim=True) > 1)
            upd = self.ema * self.sum[slot] + (1 - self.ema) * new
            self.sum[slot] = torch.where(cells, upd, self.sum[slot])
            self.count[slot] = torch.where(cells, self.count[slot] + 1, self.count[slot])

    def value(self, slot: str) -> torch.Tensor:
        """Bias-corrected ``D`` of ``slot``, ``(L, n)``, times the calibration if set; rows never measured are 0."""
        count = self.count[slot]
        corr = 1 - self.ema ** count
        value = torch.where(count > 0, self.sum[slot] / corr.clamp_min(1e-12), torch.zeros_like(self.sum[slot]))
        return value if self.scale is None else value * self.scale[slot]

    @property
    def measured(self) -> bool:
        return bool(all(bool((c > 0).any()) for c in self.count.values()))

    def state_dict(self) -> dict:
        state = {"sum": {s: t.clone() for s, t in self.sum.items()}, "count": {s: t.clone() for s, t in self.count.items()}}
        if self.scale is not None:
            state["scale"] = {s: t.clone() for s, t in self.scale.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for slot in SLOTS:
            self.sum[slot].copy_(state["sum"][slot])
            self.count[slot].copy_(state["count"][slot])
        if state.get("scale") is not None:
            self.set_scale(state["scale"])


def normalized(d: dict, masks: dict) -> dict:
    """``D / mean over decisions of (max_j D - min_j D)`` over allowed candidates (§3.1)."""
    spreads = []
    for slot in SLOTS:
        m = masks[slot]
        hi = d[slot].masked_fill(~m, -math.inf).max(1).values
        lo = d[slot].masked_fill(~m, math.inf).min(1).values
        multi = m.sum(1) > 1
        spreads.append((hi - lo)[multi])
    spread = torch.cat(spreads)
    scale = float(spread.mean()) if spread.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    return {slot: d[slot] / scale for slot in SLOTS}


class _Minimiser:
    """Per-layer minimiser of ``d_w[i] + d_a[j] + sum_b mu_b * table_b[i, j] / T_b`` (flat pair
    index) for many ``mu`` at one ``D``: the parts that do not depend on ``mu`` are built once.

    The same arithmetic as ``d_w + d_a + mu * table / T`` masked afterwards (so the same
    values and minimisers): disallowed pairs start at ``inf`` and their tables read 0.
    """

    def __init__(self, d_w, d_a, masks, tables, targets):
        allowed = masks["w"][:, :, None] & masks["a"][:, None, :]
        self.base = (d_w[:, :, None] + d_a[:, None, :]).masked_fill(~allowed, math.inf)
        self.tables = [table.masked_fill(~allowed, 0.0) for table in tables]
        self.flat = [table.flatten(1) for table in tables]
        self.targets = list(targets)
        self.rows = torch.arange(self.base.shape[0])

    def __call__(self, mu):
        obj = self.base
        for m, table, t in zip(mu, self.tables, self.targets):
            obj = obj + m * table / t
        return obj.flatten(1).argmin(1)

    def cost(self, choice, b: int) -> float:
        return float(self.flat[b][self.rows, choice].sum())


def lagrange_multipliers(d: dict, masks: dict, tables: list, limits: list, targets: list,
                         rounds: int = 3, iters: int = 40) -> list[float]:
    """Multipliers ``mu_b >= 0`` that price each budget (§5).

    For each budget, ``mu_lo`` is the smallest multiplier whose per-layer minimiser of
    ``D + sum_b mu_b C_b / T_b`` meets the budget, and ``mu_hi`` the largest that still gives
    the same minimiser; the result is their geometric mean, the centre of that interval, so
    that no layer sits exactly at its point of indifference (where its preference would be
    pure noise).

    Args:
        d: ``{slot: (L, n)}`` normalized scores. masks: ``{slot: bool (L, n)}`` allowed candidates.
        tables: per budget, float64 ``(L, n_w, n_a)`` cost of each searched layer.
        limits: per budget, what the searched layers may cost (target minus pinned cost).
        targets: per budget, the target ``T_b`` (scales ``mu`` to units of ``E[C] / T``).

    Returns:
        One multiplier per budget (0 where the unconstrained minimiser already fits). Several
        budgets: cyclic, ``rounds`` passes.
    """
    minimiser = _Minimiser(d["w"].double(), d["a"].double(), masks, tables, targets)
    mu = [0.0] * len(tables)
    choice = minimiser

    def fits(values, b):
        return minimiser.cost(choice(values), b) <= limits[b] * (1 + 1e-9)

    for _ in range(rounds if len(tables) > 1 else 1):
        for b in range(len(tables)):
            trial = list(mu)
            trial[b] = 0.0
            if fits(trial, b):
                mu[b] = 0.0
                continue
            hi = 1.0
            for _ in range(60):
                trial[b] = hi
                if fits(trial, b):
                    break
                hi *= 2
            lo = 0.0
            for _ in range(iters):
                trial[b] = 0.5 * (lo + hi)
                lo, hi = (lo, trial[b]) if fits(trial, b) else (trial[b], hi)
            mu_lo = hi
            trial[b] = mu_lo
            policy = choice(trial)
            top = mu_lo
            for _ in range(60):  # the largest multiplier with the same minimiser
                trial[b] = top * 2
                if not torch.equal(choice(trial), policy):
                    break
                top *= 2
            lo, hi = top, top * 2
            for _ in range(iters):
                trial[b] = 0.5 * (lo + hi)
                lo, hi = (trial[b], hi) if torch.equal(choice(trial), policy) else (lo, trial[b])
            mu[b] = math.sqrt(mu_lo * lo)
    return mu
