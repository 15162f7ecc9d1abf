"""The options of one search and their validation (docs/algorithm.md §1, §3-§7).

:class:`SearchConfig` holds every option with the defaults of docs/algorithm.md and checks them
once, at construction: budgets are parsed into ``Budget`` objects (§4), the decider's options into
a :class:`~ssps_nni.decider.DeciderConfig` (§6) and the penalty into a
:class:`~ssps_nni.penalty.ConstraintLoss` (§5). ``from ssps_nni.search import SearchConfig``
keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .convert import DEFAULT_CANDIDATES, DEFAULT_PINNED_BITS
from .cost import parse_budgets
from .decider import DeciderConfig
from .penalty import PENALTY_FORMS, ConstraintLoss
from .scores import SCORE_FORMS


@dataclass
class SearchConfig:
    """Every option of a search, with the defaults of docs/algorithm.md.

    Attributes:
        budget: ``'bitops=W4A4'``, ``'size=1.5MB,bitops=2e9'``, a list or a dict (§4).
        candidates / a_candidates: weight / activation bit-widths (§1); activations default
            to the weight candidates.
        include, exclude, pinned, pinned_bits: which layers (``convert.py``).
        cost_options: ``{cost name: kwargs}``, e.g. ``{'lut': {'path': 'lut.json'}}``.
        signal: ``'dense'`` (default): the logits learn from every candidate's score, tapped in
            the one backward (§3.1); ``'sampled'``: only through the sampled path's residual (§3).
        score, score_ema: form of the dense scores (``'squared'`` Fisher-style or ``'signed'``)
            and the decay of their running average (0: each step alone), ``scores.py``.
        score_fraction: share of each batch the activation scores are computed on, in (0, 1]
            (their elementwise cost grows with the candidates; weights always use all).
        penalty, lam, beta: constraint form and weights (§5); ``'lagrange'`` (default, dense
            signal only) prices the budget with a multiplier found from the scores.
        fill: after the last decision, raise bits where the scores gain most per unit of cost
            until no candidate fits the budgets (§5).
        tau_max, tau_min: temperature schedule (§3).
        total_steps, warmup_steps, interval: the search length, warm-up and decision interval,
            in optimizer steps (§6).
        threshold, certainty, schedule, schedule_start, prune_epsilon, guard: sequential
            determination (§6); the schedule forces nothing before ``schedule_start`` (a fraction
            of the steps after warm-up).
        logits_lr, logits_betas, logits_weight_decay: Adam on the logits (§7). ``logits_lr=None``
            (default) follows the search length (§3.2): ``max(3e-3, logits_move / search_steps)``
            with ``search_steps = total_steps - warmup_steps``.
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
    signal: str = "dense"
    score: str = "squared"
    score_ema: float = 0.98
    score_fraction: float = 0.25
    penalty: str = "lagrange"
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
    schedule_start: float = 0.25
    prune_epsilon: float | None = None
    guard: bool = True
    fill: bool = True
    logits_lr: float | None = None
    logits_move: float = 20.0
    logits_betas: tuple = (0.5, 0.9)
    logits_weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        self.budgets = parse_budgets(self.budget)
        self.decider = DeciderConfig(
            total_steps=int(self.total_steps), warmup_steps=int(self.warmup_steps), interval=int(self.interval),
            threshold=self.threshold, measure=self.certainty, schedule=self.schedule,
            schedule_start=float(self.schedule_start), prune_epsilon=self.prune_epsilon, guard=bool(self.guard),
        )
        if self.signal not in ("dense", "sampled"):
            raise ValueError(f"unknown signal {self.signal!r}; accepted: dense, sampled")
        if self.score not in SCORE_FORMS:
            raise ValueError(f"unknown score form {self.score!r}; accepted: {', '.join(SCORE_FORMS)}")
        if not 0 < float(self.score_fraction) <= 1:
            raise ValueError(f"score_fraction must be in (0, 1], got {self.score_fraction}")
        if not 0 <= float(self.score_ema) < 1:
            raise ValueError(f"score_ema must be in [0, 1), got {self.score_ema}")
        if self.penalty == "lagrange":
            if self.signal != "dense":
                raise ValueError("penalty 'lagrange' needs signal='dense' (it prices the budget from the "
                                 f"dense scores); with signal='sampled' use one of {', '.join(PENALTY_FORMS)}")
            self.constraint_loss = None
        else:
            self.constraint_loss = ConstraintLoss(self.penalty, self.lam, self.beta)
        if self.logits_lr is not None and not float(self.logits_lr) > 0:
            raise ValueError(f"logits_lr must be > 0 or None (follow the search length), got {self.logits_lr}")
        if not float(self.logits_move) > 0:
            raise ValueError(f"logits_move must be > 0, got {self.logits_move}")
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

    @property
    def effective_logits_lr(self) -> float:
        """The logits' learning rate: ``logits_lr``, or ``max(3e-3, logits_move / search_steps)`` (§3.2)."""
        if self.logits_lr is not None:
            return float(self.logits_lr)
        return max(3e-3, float(self.logits_move) / max(int(self.total_steps) - int(self.warmup_steps), 1))

