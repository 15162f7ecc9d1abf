"""Sequential determination by selection certainty (docs/algorithm.md §6).

At each decision point (every ``interval`` steps after ``warmup_steps``), every open decision
whose certainty reaches ``threshold`` is fixed to its argmax, and, so that the search ends on
time, at least as many decisions are fixed as the schedule requires (linear in the steps, all
by ``total_steps``), the most certain first. A feasibility guard never lets a fix make a
budget unreachable: it takes the most probable feasible candidate instead. When everything is
decided the search can stop. ``finalize`` fixes what is left and, if the result is still over a
budget (possible only for a non-monotone LUT or with the guard off), repairs it by lowering the
bits that cost least certainty per unit of cost saved, and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from .convert import SearchSpace
from .cost import SpaceCost
from .errors import BudgetError
from .sampler import SLOTS

Certainty = Literal["max_prob", "entropy", "margin"]
CERTAINTY_MEASURES = ("max_prob", "entropy", "margin")
_TOL = 1e-9


def certainty(probs: torch.Tensor, measure: Certainty = "max_prob") -> torch.Tensor:
    """Selection certainty of each row of ``probs`` ``(D, n)`` -> ``(D,)`` in [0, 1].

    ``max_prob``: ``max_i p_i``; ``entropy``: ``1 - H(p) / log(n_allowed)``; ``margin``:
    ``p_(1) - p_(2)``. Zero-probability (pruned) candidates are ignored.

    >>> certainty(torch.tensor([[0.7, 0.2, 0.1]]), 'margin')
    tensor([0.5000], dtype=torch.float64)
    """
    probs = probs.detach().double()
    if measure == "max_prob":
        return probs.max(-1).values
    if measure == "margin":
        top = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        return top[:, 0] - (top[:, 1] if top.shape[-1] > 1 else 0)
    if measure == "entropy":
        n = (probs > 0).sum(-1).clamp_min(2).double()
        h = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        return (1 - h / n.log()).clamp(0, 1)
    raise ValueError(f"unknown certainty measure {measure!r}; accepted: {', '.join(CERTAINTY_MEASURES)}")


@dataclass
class Constraint:
    """A hard budget on one cost: ``cost(policy) <= target``."""

    cost: SpaceCost
    target: float
    spec: str = ""


def check_reachable(constraints: list[Constraint], masks_w: torch.Tensor, masks_a: torch.Tensor) -> None:
    """Every budget can be met with the allowed candidates (bool ``(L, n)`` masks), §4, §6.

    Raises:
        BudgetError: the first budget below the cheapest policy; the message gives the
            reachable range and the W8A8 and FP32 costs.
    """
    for c in constraints:
        low = c.cost.cheapest(masks_w, masks_a)
        if low > c.target * (1 + _TOL):
            refs = c.cost.references()
            fmt = c.cost.model.format

            def ref(key):
                return fmt(refs[key]) if key in refs else "n/a"

            raise BudgetError(
                f"budget {c.spec or c.cost.name} = {fmt(c.target)} is unreachable: the cheapest policy "
                f"costs {fmt(low)}. Reachable range: {ref('min')} (all-minimum) to "
                f"{ref('max')} (all-maximum); W8A8 = {ref('w8a8')}, FP32 = {ref('fp32')}"
            )


@dataclass
class DeciderConfig:
    """Options of :class:`SequentialDecider` (§6); all lengths in optimizer steps.

    Raises ``ValueError`` from ``__post_init__`` on a value outside its range.
    """

    total_steps: int
    warmup_steps: int = 0
    interval: int = 1
    threshold: float | None = 0.9
    measure: Certainty = "max_prob"
    schedule: Literal["linear", "none"] = "linear"
    prune_epsilon: float | None = None
    guard: bool = True
    schedule_start: float = 0.25

    def __post_init__(self):
        if self.total_steps < 1 or self.warmup_steps < 0 or self.interval < 1:
            raise ValueError("need total_steps >= 1, warmup_steps >= 0, interval >= 1")
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below total_steps ({self.total_steps})")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] or None, got {self.threshold}")
        if self.measure not in CERTAINTY_MEASURES:
            raise ValueError(f"unknown certainty measure {self.measure!r}; accepted: {', '.join(CERTAINTY_MEASURES)}")
        if self.schedule not in ("linear", "none"):
            raise ValueError(f"schedule must be 'linear' or 'none', got {self.schedule!r}")
        if not 0 <= self.schedule_start < 1:
            raise ValueError(f"schedule_start must be in [0, 1), got {self.schedule_start}")
        if self.prune_epsilon is not None and not 0 < self.prune_epsilon < 1:
            raise ValueError(f"prune_epsilon must be in (0, 1) or None, got {self.prune_epsilon}")


@dataclass
class SequentialDecider:
    """Fixes the decisions of ``space`` one by one (§6). See the module docstring.

    Attributes:
        decided: ``{label: {'step': int, 'certainty': float, 'bits': int, 'guarded': bool}}``.
        history: one entry per decision point: ``step``, ``log10_size``, ``num_decided``,
            ``certainty`` (per decision, in ``space.decisions`` order) and ``fixed`` labels.
        repaired: True once :meth:`finalize` had to repair an over-budget result.
    """

    space: SearchSpace
    constraints: list[Constraint]
    config: DeciderConfig
    decided: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    repaired: bool = False

    def __post_init__(self):
        check_reachable(self.constraints, *self._masks())

    # -- state -------------------------------------------------------------------------------

    def _masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.space.masks("w"), self.space.masks("a")

    def feasible(self, masks_w: torch.Tensor, masks_a: torch.Tensor) -> bool:
        """Whether every budget stays reachable with the allowed candidates (bool ``(L, n)`` masks)."""
        return all(c.cost.cheapest(masks_w, masks_a) <= c.target * (1 + _TOL) for c in self.constraints)

    def probs(self) -> torch.Tensor:
        """Per-decision probabilities ``(2L, n_max)`` in ``space.decisions`` order (no grad)."""
        with torch.no_grad():
            pw, pa = self.space.probs("w").cpu(), self.space.probs("a").cpu()
        width = max(pw.shape[1], pa.shape[1])
        pad = torch.nn.functional.pad
        # decisions are (layer, 'w'), (layer, 'a') for layer 0, 1, ...: interleave the two slots' rows
        return torch.stack([pad(pw, (0, width - pw.shape[1])), pad(pa, (0, width - pa.shape[1]))], 1).reshape(-1, width)

    def certainties(self) -> torch.Tensor:
        """``(2L,)`` certainty of every decision (1.0 for decided ones)."""
        return certainty(self.probs(), self.config.measure)

    def required(self, step: int) -> int:
        """How many decisions the schedule wants made by ``step``.

        Linear from ``schedule_start`` (a fraction of the steps after warm-up; before it only the
        threshold decides, so the logits have time to move, docs/algorithm.md §3.2) to all
        decisions at ``total_steps``.
        """
        cfg, total = self.config, self.space.num_decisions
        if cfg.schedule == "none":
            return 0
        span = cfg.total_steps - cfg.warmup_steps
        start = cfg.schedule_start * span
        progress = max(step - cfg.warmup_steps - start, 0) / max(span - start, 1e-9)
        return min(total, math.ceil(total * progress - _TOL))

    @property
    def done(self) -> bool:
        return self.space.num_decided == self.space.num_decisions

    def is_due(self, step: int) -> bool:
        """True every ``interval`` steps after warm-up, and at ``total_steps`` so the schedule ends on time."""
        cfg = self.config
        return step > cfg.warmup_steps and (
            (step - cfg.warmup_steps) % cfg.interval == 0 or step == cfg.total_steps
        )

    # -- decisions ---------------------------------------------------------------------------

    def _fix(self, index: int, probs_row: torch.Tensor, step: int, cert: float, by: str = "schedule") -> str:
        layer, slot = self.space.decisions[index]
        masks = {"w": None, "a": None}
        masks["w"], masks["a"] = self._masks()
        order = probs_row[: len(self.space.candidates[slot])].argsort(descending=True).tolist()
        allowed = masks[slot][layer].clone()
        chosen, guarded = None, False
        for rank, k in enumerate(order):
            if not allowed[k]:
                continue
            trial = {s: m.clone() for s, m in masks.items()}
            trial[slot][layer] = False
            trial[slot][layer, k] = True
            if not self.config.guard or self.feasible(trial["w"], trial["a"]):
                chosen, guarded = k, rank > 0
                break
        if chosen is None:  # only a non-monotone cost can get here; finalize repairs it
            chosen = order[0]
        self.space.fix(layer, slot, chosen)
        label = self.space.label(layer, slot)
        self.decided[label] = {
            "step": int(step), "certainty": float(cert),
            "bits": self.space.candidates[slot][chosen], "guarded": guarded, "by": by,
        }
        return label

    def _prune(self, probs: torch.Tensor) -> None:
        eps = self.config.prune_epsilon
        for index, (layer, slot) in enumerate(self.space.decisions):
            if self.space.fixed_index(layer, slot) >= 0:
                continue
            masks_w, masks_a = self._masks()
            masks = {"w": masks_w, "a": masks_a}
            n = len(self.space.candidates[slot])
            keep = masks[slot][layer] & (probs[index, :n] >= eps)
            if not keep.any():
                continue
            masks[slot][layer] = keep
            if self.feasible(masks["w"], masks["a"]):
                self.space.cell(layer).set_mask(slot, keep)

    def _record_implicit(self, step: int) -> None:
        # a decision left with one candidate by pruning counts as decided here
        for layer, slot in self.space.decisions:
            label = self.space.label(layer, slot)
            k = self.space.fixed_index(layer, slot)
            if k >= 0 and label not in self.decided:
                self.decided[label] = {
                    "step": int(step), "certainty": 1.0,
                    "bits": self.space.candidates[slot][k], "guarded": False, "by": "prune",
                }

    def decide(self, step: int, force_all: bool = False) -> list[str]:
        """Run one decision point at ``step``; returns the labels fixed now.

        Fixes every open decision with certainty >= threshold, then the most certain ones
        until ``required(step)`` (or all, with ``force_all``) are decided.
        """
        if self.config.prune_epsilon is not None:
            self._prune(self.probs())
        self._record_implicit(step)
        probs = self.probs()
        cert = certainty(probs, self.config.measure)
        open_idx = [i for i, (l, s) in enumerate(self.space.decisions) if self.space.fixed_index(l, s) < 0]
        open_idx.sort(key=lambda i: -float(cert[i]))
        need = self.space.num_decisions if force_all else self.required(step)
        fixed = []
        for i in open_idx:
            by_threshold = self.config.threshold is not None and float(cert[i]) >= self.config.threshold
            if not by_threshold and self.space.num_decided >= need:
                break
            by = "threshold" if by_threshold else "final" if force_all else "schedule"
            fixed.append(self._fix(i, probs[i], step, float(cert[i]), by))
        if fixed:  # the fixed rows are one-hot now
            cert = certainty(self.probs(), self.config.measure)
        self.history.append({
            "step": int(step),
            "log10_size": self.space.log10_size(),
            "num_decided": self.space.num_decided,
            "certainty": [round(c, 6) for c in cert.tolist()],
            "fixed": fixed,
        })
        return fixed

    def only_feasible(self) -> dict[tuple[int, str], int] | None:
        """``{(layer, slot): index}`` if every open decision has one feasible candidate (one that keeps
        every budget reachable with the cheapest completion of the others, §6) and they fit, else None."""
        space = self.space
        masks = {s: space.masks(s) for s in SLOTS}
        only = {}
        for layer, slot in space.decisions:
            if space.fixed_index(layer, slot) >= 0:
                continue
            feasible = []
            for k in torch.nonzero(masks[slot][layer]).flatten().tolist():
                trial = {s: m.clone() for s, m in masks.items()}
                trial[slot][layer] = False
                trial[slot][layer, k] = True
                if self.feasible(trial["w"], trial["a"]):
                    feasible.append(k)
                    if len(feasible) > 1:
                        return None
            if len(feasible) != 1:
                return None
            only[(layer, slot)] = feasible[0]
        trial = {s: m.clone() for s, m in masks.items()}
        for (layer, slot), k in only.items():
            trial[slot][layer] = False
            trial[slot][layer, k] = True
        return only if self.feasible(trial["w"], trial["a"]) else None

    def record_only(self, step: int) -> None:
        """Record every fixed decision not yet recorded as the only feasible one (``by: "only"``)."""
        for layer, slot in self.space.decisions:
            label = self.space.label(layer, slot)
            self.decided.setdefault(label, {
                "step": int(step), "certainty": 1.0,
                "bits": self.space.candidates[slot][self.space.fixed_index(layer, slot)],
                "guarded": False, "by": "only"})

    def maybe_decide(self, step: int) -> list[str]:
        """:meth:`decide` if ``step`` is a decision point, else nothing."""
        return self.decide(step) if self.is_due(step) and not self.done else []

    def finalize(self, step: int) -> list[str]:
        """Fix every open decision, then repair if over a budget; returns labels fixed now."""
        fixed = self.decide(step, force_all=True) if not self.done else []
        self._repair()
        return fixed

    def fill(self, costs: dict[str, SpaceCost], tables: list, gains: dict[str, torch.Tensor], step: int) -> dict:
        """Raise bits where ``gains`` are largest per unit of cost until no raise fits (§5); record each.

        Call when every decision is made. A raise is recorded (``by: "fill"`` at ``step`` if it was
        not recorded) with the bits it had as ``filled_from``.

        Args:
            costs: ``{name: SpaceCost}`` of the budgets, for the report. tables: per budget
                ``(table (L, n_w, n_a), limit)`` (§4). gains: ``{slot: (L, n)}`` loss-increase estimates.

        Returns:
            ``{'before': {cost: value}, 'after': {...}, 'raises': [{'layer', 'slot', 'from', 'to'}]}``
            (costs in their units, bits in ``from`` / ``to``).
        """
        from .solver import budget_fill

        space = self.space
        before = {n: c.of_bits(space.bits()) for n, c in costs.items()}
        w_idx = [space.fixed_index(l, "w") for l in range(len(space.searched))]
        a_idx = [space.fixed_index(l, "a") for l in range(len(space.searched))]
        w_new, a_new, raises = budget_fill(w_idx, a_idx, tables, gains["w"], gains["a"])
        for l, (w, a) in enumerate(zip(w_new, a_new)):
            for slot, k in (("w", w), ("a", a)):
                if k != space.fixed_index(l, slot):
                    info = self.decided.setdefault(space.label(l, slot), {"step": step, "certainty": 0.0, "by": "fill"})
                    info["filled_from"] = info.get("bits")
                    info["bits"] = space.candidates[slot][k]
                    space.fix(l, slot, k)
        after = {n: c.of_bits(space.bits()) for n, c in costs.items()}
        readable = [{"layer": space.searched[r["layer"]], "slot": r["slot"],
                     "from": space.candidates[r["slot"]][r["from"]], "to": space.candidates[r["slot"]][r["to"]]}
                    for r in raises]
        return {"before": before, "after": after, "raises": readable}

    def _repair(self) -> None:
        """Greedily lower bits, least certainty lost per unit of cost saved first (§6)."""
        with torch.no_grad():
            raw = {s: torch.softmax(self.space.sampler.logits[s].detach().cpu().double(), -1) for s in SLOTS}
        while True:
            masks_w, masks_a = self._masks()
            over = [c for c in self.constraints if c.cost.cheapest(masks_w, masks_a) > c.target * (1 + _TOL)]
            if not over:
                return
            best = None
            for layer, slot in self.space.decisions:
                k = self.space.fixed_index(layer, slot)
                for lower in range(k):
                    trial = {"w": masks_w.clone(), "a": masks_a.clone()}
                    trial[slot][layer] = False
                    trial[slot][layer, lower] = True
                    saved = sum(
                        (c.cost.cheapest(masks_w, masks_a) - c.cost.cheapest(trial["w"], trial["a"])) / c.target
                        for c in over
                    )
                    if saved <= 0:
                        continue
                    lost = float(raw[slot][layer, k] - raw[slot][layer, lower])
                    score = lost / saved
                    if best is None or score < best[0]:
                        best = (score, layer, slot, lower)
            if best is None:
                raise BudgetError("no policy within the budget exists among the allowed candidates")
            _, layer, slot, lower = best
            self.space.fix(layer, slot, lower)
            label = self.space.label(layer, slot)
            self.decided.setdefault(label, {"step": -1, "certainty": 0.0, "guarded": False, "by": "repair"})
            self.decided[label].update(bits=self.space.candidates[slot][lower], repaired=True)
            self.repaired = True

    # -- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain-type state (decisions, history, repaired); masks live in the space."""
        return {"decided": {k: dict(v) for k, v in self.decided.items()},
                "history": [dict(h) for h in self.history], "repaired": self.repaired}

    def load_state_dict(self, state: dict) -> None:
        self.decided = {k: dict(v) for k, v in state["decided"].items()}
        self.history = [dict(h) for h in state["history"]]
        self.repaired = bool(state["repaired"])
