"""One SSPS search, independent of any training framework (SSPS_SPEC.md §3-§8).

Both drivers (the NNI strategy and the mmengine hook) map their events onto this object::

    search = SSPSSearch(model, SearchConfig(budget="bitops=W4A4", total_steps=1000))
    search.prepare(lambda: model(example), num_samples=len(example))  # profile, calibrate, check budget
    for step, batch in enumerate(loader):
        search.begin_step(step)                 # temperature, warm-up
        loss = task_loss(model(batch))
        extra, details = search.loss_term(loss)  # constraint loss (§5)
        (loss + extra).backward(); weight_optimizer.step()
        search.step_logits()                     # Adam on the logits (§7)
        search.end_step(step + 1)                # sequential determination (§6)
        if search.done: break
    policy = search.finish(step + 1)
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from .cell import CELL_TYPES
from .convert import DEFAULT_CANDIDATES, DEFAULT_PINNED_BITS, SearchSpace, convert_model
from .cost import SpaceCost, build_cost_model, parse_budgets, profile_layers
from .decider import Constraint, DeciderConfig, SequentialDecider
from .penalty import ConstraintLoss
from .policy import Policy
from .sampler import SLOTS, TemperatureSchedule


@dataclass
class SearchConfig:
    """Every option of a search, with the defaults of SSPS_SPEC.md.

    Attributes:
        budget: ``'bitops=W4A4'``, ``'size=1.5MB,bitops=2e9'``, a list or a dict (§4).
        candidates / a_candidates: weight / activation bit-widths (§1); activations default
            to the weight candidates.
        include, exclude, pinned, pinned_bits: which layers (``convert.py``).
        cost_options: ``{cost name: kwargs}``, e.g. ``{'lut': {'path': 'lut.json'}}``.
        penalty, lam, beta: constraint loss form and weights (§5).
        tau_max, tau_min: temperature schedule (§3).
        total_steps, warmup_steps, interval: the search length, warm-up and decision interval,
            in optimizer steps (§6).
        threshold, certainty, schedule, prune_epsilon, guard: sequential determination (§6).
        logits_lr, logits_betas, logits_weight_decay: Adam on the logits (§7).
        seed: seed of the path sampler.

    Raises:
        ValueError: unknown keyword (from ``from_dict``) or a value out of range.
    """

    budget: object = "bitops=W4A4"
    candidates: tuple = DEFAULT_CANDIDATES
    a_candidates: tuple | None = None
    include: list | None = None
    exclude: list | None = None
    pinned: object = "default"
    pinned_bits: object = DEFAULT_PINNED_BITS
    cost_options: dict = field(default_factory=dict)
    penalty: str = "abs"
    lam: float = 1.0
    beta: float = 0.6
    tau_max: float = 5.0
    tau_min: float = 0.5
    total_steps: int = 1000
    warmup_steps: int = 0
    interval: int = 1
    threshold: float | None = 0.9
    certainty: str = "max_prob"
    schedule: str = "linear"
    prune_epsilon: float | None = None
    guard: bool = True
    logits_lr: float = 3e-3
    logits_betas: tuple = (0.5, 0.999)
    logits_weight_decay: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        self.budgets = parse_budgets(self.budget)
        self.decider = DeciderConfig(
            total_steps=int(self.total_steps), warmup_steps=int(self.warmup_steps), interval=int(self.interval),
            threshold=self.threshold, measure=self.certainty, schedule=self.schedule,
            prune_epsilon=self.prune_epsilon, guard=bool(self.guard),
        )
        self.constraint_loss = ConstraintLoss(self.penalty, self.lam, self.beta)
        unknown = set(self.cost_options) - {b.cost for b in self.budgets}
        if unknown:
            raise ValueError(f"cost_options for {sorted(unknown)} but no budget on those costs")

    @classmethod
    def from_dict(cls, options: dict) -> "SearchConfig":
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            raise ValueError(f"unknown SSPS option(s) {bad}; accepted: {', '.join(sorted(known))}")
        return cls(**options)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        self.cost_models = {b.cost: build_cost_model(b.cost, **cfg.cost_options.get(b.cost, {})) for b in cfg.budgets}
        if space is None:
            space = convert_model(
                model, cfg.candidates, cfg.a_candidates, include=cfg.include, exclude=cfg.exclude,
                pinned=cfg.pinned, pinned_bits=cfg.pinned_bits, tau=cfg.tau_max, seed=cfg.seed,
            )
        elif space.model is not model:
            raise ValueError("space.model must be the model given to SSPSSearch")
        self.space = space
        self.excluded = [n for n, m in model.named_modules() if n and type(m) in CELL_TYPES]
        self.temperature = TemperatureSchedule(cfg.tau_max, cfg.tau_min, cfg.total_steps - cfg.warmup_steps)
        self.logits_optimizer = torch.optim.Adam(
            self.space.sampler.parameters(), lr=cfg.logits_lr, betas=tuple(cfg.logits_betas),
            weight_decay=cfg.logits_weight_decay,
        )
        self.profiles = None
        self.costs: dict[str, SpaceCost] = {}
        self.targets: dict[str, float] = {}
        self.decider: SequentialDecider | None = None
        self.step = 0

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
        self._build_constraints()

    def _build_constraints(self) -> None:
        space = self.space
        self.costs = {
            name: SpaceCost(model, self.profiles, space.searched, space.pinned, space.candidates["w"], space.candidates["a"])
            for name, model in self.cost_models.items()
        }
        self.targets = {b.cost: b.target(self.costs[b.cost]) for b in self.config.budgets}
        constraints = [Constraint(self.costs[b.cost], self.targets[b.cost], b.spec) for b in self.config.budgets]
        self.decider = SequentialDecider(space, constraints, self.config.decider)

    def _require_prepared(self):
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
        sampler.uniform = self.in_warmup
        sampler.tau = self.temperature(max(self.step - self.config.warmup_steps, 0))

    def expected_costs(self) -> dict[str, torch.Tensor]:
        """``{cost: E[C]}`` under the current distribution (0-dim float64, differentiable)."""
        self._require_prepared()
        pw, pa = self.space.probs("w"), self.space.probs("a")
        return {name: cost.expected(pw, pa) for name, cost in self.costs.items()}

    def loss_term(self, task_loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The constraint term to add to ``task_loss`` (§5) and its details for logging.

        Zero (no graph) during warm-up, when the logits are frozen.
        """
        expected = self.expected_costs()
        if self.in_warmup:
            details = {f"ratio/{k}": float(v.detach()) / self.targets[k] for k, v in expected.items()}
            return torch.zeros((), device=task_loss.device), details
        return self.config.constraint_loss.extra(task_loss, expected, self.targets)

    def logits_grads(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self.space.sampler.parameters()]

    def step_logits(self) -> None:
        """One Adam step on the logits (skipped in warm-up), then clear their gradients."""
        if not self.in_warmup:
            self.logits_optimizer.step()
        self.logits_optimizer.zero_grad(set_to_none=True)

    def end_step(self, step: int) -> list[str]:
        """Run the decider if ``step`` (steps completed) is a decision point; returns new labels."""
        self._require_prepared()
        self.step = int(step)
        return self.decider.maybe_decide(step)

    @property
    def done(self) -> bool:
        return self.decider is not None and self.decider.done

    def finish(self, step: int | None = None) -> Policy:
        """Fix every open decision (guarded, repaired if needed) and return the policy."""
        self._require_prepared()
        self.decider.finalize(self.step if step is None else step)
        return self.policy()

    def stats(self) -> dict[str, float]:
        """Scalars to log: expected cost / target per budget, decided, search-space size, tau."""
        with torch.no_grad():
            expected = self.expected_costs()
        out = {}
        for name, value in expected.items():
            out[f"expected/{name}"] = float(value)
            out[f"target/{name}"] = self.targets[name]
            out[f"ratio/{name}"] = float(value) / self.targets[name]
        out.update(num_decided=self.space.num_decided, num_decisions=self.space.num_decisions,
                   log10_space=self.space.log10_size(), tau=self.space.sampler.tau)
        return out

    # -- result ------------------------------------------------------------------------------

    def policy(self) -> Policy:
        """The current policy (decided bits, argmax for open ones) with totals (§8)."""
        self._require_prepared()
        space, decided = self.space, self.decider.decided
        bits = space.bits()
        layers = {}
        for name, _ in space.model.named_modules():
            if name in space.cells:
                entry = {"w_bits": bits[name][0], "a_bits": bits[name][1], "pinned": name in space.pinned,
                         "certainty": None, "decided_at": None}
                if name not in space.pinned:
                    info = [decided.get(f"{name}.{s}_bits") for s in SLOTS]
                    if all(info):
                        entry["certainty"] = round(min(i["certainty"] for i in info), 6)
                        entry["decided_at"] = max(i["step"] for i in info)
                layers[name] = entry
            elif name in self.excluded:
                layers[name] = {"w_bits": 32, "a_bits": 32, "excluded": True}
        with torch.no_grad():
            expected = self.expected_costs()
        totals = {}
        for name, cost in self.costs.items():
            totals[name] = {
                "policy": cost.of_bits({n: b for n, b in bits.items()}),
                "expected": float(expected[name]),
                "target": self.targets[name],
                "unit": cost.model.unit,
                "references": cost.references(),
            }
        meta = {
            "cost_model": self.config.budgets[0].cost,
            "budgets": [{"cost": b.cost, "spec": b.spec, "target": self.targets[b.cost]} for b in self.config.budgets],
            "totals": totals,
            "repaired": self.decider.repaired,
            "num_decided": space.num_decided,
            "num_decisions": space.num_decisions,
            "step": self.step,
        }
        return Policy(layers=layers, candidates={s: list(space.candidates[s]) for s in SLOTS}, meta=meta)

    # -- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the model weights: logits, masks, sampler, decider, Adam, step."""
        self._require_prepared()
        return {
            "space": self.space.state_dict(),
            "decider": self.decider.state_dict(),
            "logits_optimizer": self.logits_optimizer.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (call after :meth:`prepare`)."""
        self._require_prepared()
        self.space.load_state_dict(state["space"])
        self.decider.load_state_dict(state["decider"])
        self.logits_optimizer.load_state_dict(state["logits_optimizer"])
        self.step = int(state["step"])
