"""One SSPS search, independent of any training framework (docs/algorithm.md §3-§8).

Both drivers (the NNI strategy and the mmengine hook) map their events onto this object::

    search = SSPSSearch(model, SearchConfig(budget="bitops=W4A4", total_steps=1000))
    search.prepare(lambda: model(example), num_samples=len(example))  # profile, calibrate, check budget
    for step, batch in enumerate(loader):
        search.begin_step(step)                 # temperature, warm-up
        loss = task_loss(model(batch))
        search.check_loss(loss, locate=lambda: model(batch))  # NaN/inf: SearchDivergedError
        extra, details = search.loss_term(loss)  # constraint loss (§5)
        (loss + extra).backward(); weight_optimizer.step()
        search.step_logits()                     # Adam on the logits (§7)
        search.end_step(step + 1)                # sequential determination (§6)
        if search.done: break
    policy = search.finish(step + 1)         # policy.meta['final'] is True

Before the loop, :meth:`SSPSSearch.single_policy` says whether there is anything to search (one
candidate per decision, or budgets that leave one feasible policy); :meth:`SSPSSearch.settle`
then fixes that policy without training.

The options and their validation are :class:`SearchConfig` (``search_config.py``). The search is
made of parts with explicit inputs, to which its methods of the same names delegate: ``objective``
(:class:`~ssps_nni.objective.LogitsObjective`: the logits' objective, natural gradient and
Lagrange price, §3.1, §7), ``guard`` (:class:`~ssps_nni.divergence.DivergenceGuard`:
:meth:`SSPSSearch.check_loss`, §7) and ``decider`` (:class:`~ssps_nni.decider.SequentialDecider`,
§6). ``SearchConfig`` and ``first_nonfinite_output`` are re-exported here.
"""
from __future__ import annotations

from typing import Callable

import torch

from .cell import CELL_TYPES
from .convert import SearchSpace, convert_checked
from .constraints import build_constraints, cost_models
from .cost import SpaceCost, profile_layers
from .decider import SequentialDecider
from .divergence import DivergenceGuard, first_nonfinite_output
from .objective import LogitsObjective, constraint_tables
from .policy import Policy
from .sampler import SLOTS, TemperatureSchedule
from .scores import ScoreAverage
from .search_config import SearchConfig

__all__ = ["SSPSSearch", "SearchConfig", "first_nonfinite_output"]


class SSPSSearch:
    """Converts ``model`` in place and runs the search around the caller's training loop.

    Args:
        model: plain float model; converted in place (``self.space.model is model``).
        config: :class:`SearchConfig` or a dict of its fields.
        space: a :class:`~ssps_nni.convert.SearchSpace` over ``model`` that a driver already
            built (e.g. NNI's mutation hooks made the cells); then ``model`` is not converted and
            the config's candidates, include, exclude and pinned options are not used.

    Raises (before any training step):
        CandidateError, NoQuantizableLayersError, BudgetError, UnknownCostError, ValueError.
        :meth:`prepare` raises ``BudgetError`` for an unreachable budget.
    """

    def __init__(self, model: torch.nn.Module, config: SearchConfig | dict, space: SearchSpace | None = None):
        self.config = config if isinstance(config, SearchConfig) else SearchConfig.from_dict(dict(config))
        cfg = self.config
        self.cost_models = cost_models(cfg)
        if space is None:
            space = convert_checked(  # the config checked the candidates
                model, cfg.candidates, cfg.activation_candidates, include=cfg.include, exclude=cfg.exclude,
                pinned=cfg.pinned, pinned_bits=cfg.pinned_bits, tau=cfg.tau_max, seed=cfg.seed,
            )
        elif space.model is not model:
            raise ValueError("space.model must be the model given to SSPSSearch")
        self.space = space
        space.sampler.signal = cfg.signal
        space.sampler.score_fraction = float(cfg.score_fraction)
        self.scores = ScoreAverage({s: tuple(space.sampler.logits[s].shape) for s in SLOTS}, cfg.score, cfg.score_ema)
        self.fill_info: dict | None = None
        self.excluded = [n for n, m in model.named_modules() if n and type(m) in CELL_TYPES]
        self.temperature = TemperatureSchedule(cfg.tau_max, cfg.tau_min, cfg.total_steps - cfg.warmup_steps)
        self.logits_optimizer = torch.optim.Adam(
            self.space.sampler.parameters(), lr=cfg.effective_logits_lr, betas=tuple(cfg.logits_betas),
            weight_decay=cfg.logits_weight_decay,
        )
        self.objective = LogitsObjective(space, self.scores, self.logits_optimizer, cfg.signal, cfg.constraint_loss,
                                         self.diverged)
        self.guard = DivergenceGuard(space, cfg.total_steps)
        self.profiles = None
        self.costs: dict[str, SpaceCost] = {}
        self.targets: dict[str, float] = {}
        self.decider: SequentialDecider | None = None
        self.step = 0
        self.finished = False  # finish() ran: the policy is the search's result (§8 ``final``)
        self.settled: str | None = None  # why there was nothing to search (settle())

    @property
    def model(self) -> torch.nn.Module:
        return self.space.model

    # -- set-up ------------------------------------------------------------------------------

    def prepare(self, forward_fn: Callable[[], object], num_samples: int, calibrate: bool = True,
                reduce_fn=None) -> None:
        """Profile the layers, initialise step sizes and check the budget.

        Args:
            forward_fn: runs float forward passes on representative data (no grad is used).
            num_samples: input samples processed by one call of ``forward_fn``.
            calibrate: initialise step sizes from this data (False when resuming).
            reduce_fn: see :meth:`SearchSpace.calibrate`.

        Raises:
            BudgetError: a budget below the all-minimum cost (the message gives the range).
        """
        space = self.space
        was_training = space.model.training
        space.model.eval()
        try:
            if calibrate:
                box = {}
                space.calibrate(lambda: box.setdefault("p", profile_layers(space.model, space.cells, forward_fn, num_samples)),
                                reduce_fn)
                self.profiles = box["p"]
            else:
                for cell in space.cells.values():
                    cell.calibrating = True
                try:
                    self.profiles = profile_layers(space.model, space.cells, forward_fn, num_samples)
                finally:
                    for cell in space.cells.values():
                        cell.calibrating = False
        finally:
            space.model.train(was_training)
        self.build_constraints()

    def build_constraints(self) -> None:
        """Costs, targets and a fresh decider (§4, §6): :func:`ssps_nni.constraints.build_constraints`."""
        space, w_a = self.space, (self.space.candidates["w"], self.space.candidates["a"])
        built = build_constraints(self.config, self.profiles, space.searched, space.pinned, *w_a, self.cost_models)
        self.costs, self.targets = built.costs, built.targets
        self.decider = SequentialDecider(space, built.constraints, self.config.decider)

    def require_prepared(self) -> None:
        """Raise ``RuntimeError`` unless :meth:`prepare` ran (the costs, targets and decider exist)."""
        if self.decider is None:
            raise RuntimeError("call SSPSSearch.prepare(forward_fn, num_samples) before searching")

    # -- per step ----------------------------------------------------------------------------

    @property
    def in_warmup(self) -> bool:
        return self.step < self.config.warmup_steps

    def begin_step(self, step: int) -> None:
        """Set the temperature and warm-up sampling for optimizer step ``step`` (0-based)."""
        self.step = int(step)
        sampler = self.space.sampler
        self.guard.mark_step()  # to replay this step's paths (check_loss)
        sampler.uniform = self.in_warmup
        sampler.tau = self.temperature(max(self.step - self.config.warmup_steps, 0))
        sampler.take_scores()  # scores of an earlier backward (e.g. a bi-level weight step) do not count

    def expected_costs(self) -> dict[str, torch.Tensor]:
        """``{cost: E[C]}`` under the current distribution (0-dim float64, differentiable)."""
        self.require_prepared()
        pw, pa = self.space.probs("w"), self.space.probs("a")
        return {name: cost.expected(pw, pa) for name, cost in self.costs.items()}

    def loss_term(self, task_loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The constraint term to add to ``task_loss`` (§5) and its details for logging.

        Zero (no graph) during warm-up, when the logits are frozen, and with the dense signal,
        whose logits take the budget in :meth:`step_logits` instead (``scores.py``).
        """
        expected = self.expected_costs()
        if self.in_warmup or self.config.signal == "dense":
            details = {f"ratio/{k}": float(v.detach()) / self.targets[k] for k, v in expected.items()}
            return torch.zeros((), device=task_loss.device), details
        return self.config.constraint_loss.extra(task_loss, expected, self.targets)

    def constraints(self) -> list[tuple[torch.Tensor, float]]:
        """Per budget, ``(table (L, n_w, n_a), limit)``: what the searched layers may cost (§4)."""
        return constraint_tables(self.costs, self.targets)

    # -- the parts' methods, on this search's step and budgets -------------------------------

    def check_loss(self, loss: torch.Tensor, locate: Callable[[], object] | None = None, where: str = "",
                   hint: str = "") -> None:
        """:meth:`DivergenceGuard.check_loss` at this step: raises ``SearchDivergedError`` for a NaN/inf loss."""
        self.guard.check_loss(self.step, loss, locate, where, hint)

    def diverged(self, what: str, layer: str | None = None, where: str = "", hint: str = ""):
        """:meth:`DivergenceGuard.diverged` at this step: the ``SearchDivergedError`` to raise."""
        return self.guard.diverged(self.step, what, layer, where, hint)

    def locate_nonfinite(self, run: Callable[[], object]) -> str | None:
        """:meth:`DivergenceGuard.locate_nonfinite`: the first non-finite layer output of ``run``."""
        return self.guard.locate_nonfinite(run)

    def step_logits(self) -> None:
        """:meth:`LogitsObjective.step`: one Adam step on the logits (skipped in warm-up, §7)."""
        self.objective.step(self.in_warmup, self.costs, self.targets)

    def logits_objective(self, probs: dict, masks: dict) -> torch.Tensor:
        """:meth:`LogitsObjective.value`: ``J(p)`` at this search's budgets (``{slot: (L, n)}`` inputs)."""
        return self.objective.value(probs, masks, self.costs, self.targets)

    def logits_grads(self) -> list[torch.Tensor | None]:
        return self.objective.grads()

    @property
    def mu(self) -> list[float]:
        """The Lagrange multipliers of the last logits step, one per budget (§5)."""
        return self.objective.mu

    def end_step(self, step: int) -> list[str]:
        """Run the decider if ``step`` (steps completed) is a decision point; returns new labels."""
        self.require_prepared()
        self.step = int(step)
        return self.decider.maybe_decide(step)

    @property
    def done(self) -> bool:
        return self.decider is not None and self.decider.done

    def finish(self, step: int | None = None) -> Policy:
        """Fix every open decision (guarded, repaired if needed), fill, and return the final policy.

        The policy has ``meta['final']`` True when it is within every budget (§8).
        """
        self.require_prepared()
        self.decider.finalize(self.step if step is None else step)
        self.conclude(self.budget_fill() if self.config.fill and self.fill_info is None else None)
        return self.policy()

    def conclude(self, fill_info: dict | None = None) -> None:
        """Take the current policy as the search's result (§8 ``final``; a one-shot method's).

        ``fill_info``: the report of a :meth:`budget_fill` that ran, if one did.
        """
        if fill_info is not None:
            self.fill_info = fill_info
        self.finished = True

    def reopen(self) -> None:
        """Forget the result (no fill, not finished), e.g. after pointing the search at another budget."""
        self.fill_info, self.finished = None, False

    def within_budget(self) -> bool:
        """Whether the current bits (argmax for open decisions) meet every budget (relative slack 1e-9)."""
        self.require_prepared()
        bits = self.space.bits()
        return all(self.costs[n].of_bits(bits) <= t * (1 + 1e-9) for n, t in self.targets.items())

    def open_decisions(self) -> list[str]:
        """Labels of the decisions still open (``<layer>.w_bits`` / ``<layer>.a_bits``)."""
        space = self.space
        return [space.label(l, s) for l, s in space.decisions if space.fixed_index(l, s) < 0]

    # -- nothing to search -------------------------------------------------------------------

    def single_policy(self) -> str | None:
        """Why there is nothing to search, or None (call after :meth:`prepare`).

        Nothing to search: every decision has one candidate, or the budgets leave one feasible
        policy (:meth:`SequentialDecider.only_feasible`). None once the search has started (a
        step taken, a decision recorded, or :meth:`finish` run).
        """
        self.require_prepared()
        space = self.space
        if self.step > 0 or self.decider.decided or self.finished:
            return None  # the search has started (or was restored from a checkpoint of one)
        if space.num_decided == space.num_decisions:
            return (f"every decision has one candidate (weights {list(space.candidates['w'])}, activations "
                    f"{list(space.candidates['a'])})")
        if self.decider.only_feasible() is None:
            return None
        specs = ", ".join(b.spec for b in self.config.budgets)
        return (f"the budget {specs} leaves one feasible policy: every other candidate of each open decision "
                "would break it")

    def settle(self, step: int = 0) -> Policy:
        """Fix the one policy :meth:`single_policy` found, record it (``by: "only"``) and finish.

        Raises:
            ValueError: :meth:`single_policy` is None (there is something to search).
        """
        reason = self.single_policy()
        if reason is None:
            raise ValueError("settle() needs a space with one feasible policy; single_policy() is None")
        space = self.space
        for (layer, slot), k in (self.decider.only_feasible() or {}).items():
            space.fix(layer, slot, k)
        self.decider.record_only(step)
        self.settled = reason
        return self.finish(step)

    def budget_fill(self, gains: dict | None = None) -> dict:
        """Raise bits where the scores gain most per unit of cost until no candidate fits (§5).

        Call when every decision is made. Gains are the running loss-increase estimates ``D``
        (squared form for the dense signal; each slot's candidate order breaks ties when no
        score was measured). Returns :meth:`SequentialDecider.fill`'s report.
        """
        if gains is None:
            gains = {s: self.scores.value(s) for s in SLOTS}
            if self.scores.form == "signed":
                gains = {s: g.abs() for s, g in gains.items()}
        return self.decider.fill(self.costs, self.constraints(), gains, self.step)

    def stats(self) -> dict[str, float]:
        """Scalars to log: expected cost / target per budget, decided, search-space size, tau."""
        with torch.no_grad():
            expected = self.expected_costs()
        out = {}
        for name, value in expected.items():
            out[f"expected/{name}"] = float(value)
            out[f"target/{name}"] = self.targets[name]
            out[f"ratio/{name}"] = float(value) / self.targets[name]
        for name, mu in zip(self.costs, self.mu):
            out[f"mu/{name}"] = mu
        out.update(num_decided=self.space.num_decided, num_decisions=self.space.num_decisions,
                   log10_space=self.space.log10_size(), tau=self.space.sampler.tau)
        return out

    # -- result ------------------------------------------------------------------------------

    def policy(self, final: bool | None = None) -> Policy:
        """The current policy (decided bits, argmax for open ones) with totals (§8).

        Args:
            final: mark the policy as the search's result; default: :meth:`finish` has run. A
                policy with open decisions or over a budget is never final. ``meta['open']``
                lists the open decisions.
        """
        self.require_prepared()
        space = self.space
        bits = space.bits()
        layers = space.layer_table(bits, self.decider.decided, self.excluded)
        with torch.no_grad():
            expected = self.expected_costs()
        totals = {name: {"policy": cost.of_bits(dict(bits)), "expected": float(expected[name]),
                         "target": self.targets[name], "unit": cost.model.unit, "references": cost.references()}
                  for name, cost in self.costs.items()}
        final = (self.finished if final is None else bool(final)) and space.num_decided == space.num_decisions
        meta = {
            "final": bool(final and self.within_budget()),
            "open": self.open_decisions(),
            "method": "ssps",
            "cost_model": self.config.budgets[0].cost,
            "budgets": [{"cost": b.cost, "spec": b.spec, "target": self.targets[b.cost]} for b in self.config.budgets],
            "totals": totals,
            "repaired": self.decider.repaired,
            "fill": self.fill_info,
            "decisions": {label: dict(info) for label, info in self.decider.decided.items()},
            "num_decided": space.num_decided,
            "num_decisions": space.num_decisions,
            "step": self.step,
        }
        if self.settled:
            meta["settled"] = self.settled
        return Policy(layers=layers, candidates={s: list(space.candidates[s]) for s in SLOTS}, meta=meta)

    # -- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the model weights: logits, masks, sampler, decider, Adam, step; and what it
        is searched with (budget texts, candidates), which a resume checks (``searched_with_other``)."""
        self.require_prepared()
        return {
            "budgets": [b.spec.strip() for b in self.config.budgets],
            "candidates": {slot: list(self.space.candidates[slot]) for slot in SLOTS},
            "space": self.space.state_dict(),
            "decider": self.decider.state_dict(),
            "logits_optimizer": self.logits_optimizer.state_dict(),
            "scores": self.scores.state_dict(),
            "fill": self.fill_info,
            "step": self.step,
            "finished": self.finished,
            "settled": self.settled,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (call after :meth:`prepare`)."""
        self.require_prepared()
        self.space.load_state_dict(state["space"])
        self.decider.load_state_dict(state["decider"])
        self.logits_optimizer.load_state_dict(state["logits_optimizer"])
        if "scores" in state:
            self.scores.load_state_dict(state["scores"])
        self.fill_info = state.get("fill")
        self.step = int(state["step"])
        self.finished = bool(state.get("finished", False))
        self.settled = state.get("settled")
