"""The options of one search and their validation, the one owner of both (docs/algorithm.md §1, §3-§7).

:class:`SearchConfig` is a frozen, typed configuration with the defaults of docs/algorithm.md.
It checks everything once, at construction: budget text is parsed into a tuple of
:class:`~ssps_nni.cost.Budget` objects (§4), candidates are validated and sorted with the one
candidate rule (:func:`~ssps_nni.convert.check_candidates`, §1: weights 2..32, activations
1..32), the decider's options become a :class:`~ssps_nni.decider.DeciderConfig` (§6) and the
penalty a :class:`~ssps_nni.penalty.ConstraintLoss` (§5). Every driver builds it once and passes
it on: the mmengine hook and the NNI strategy in ``__init__`` (from a ``SearchConfig`` or from
the same plain options), the command line in ``validate()``; :class:`~ssps_nni.search.SSPSSearch`
takes it as is. A driver that learns the search length later (a runner, a trainer) builds it
with :meth:`SearchConfig.from_options` and then calls :meth:`SearchConfig.with_schedule`, which
neither parses nor checks the budgets and candidates again. What needs the model (whether a
budget is reachable, §4) is checked where the model is known, on these ``Budget`` objects.
``from ssps_nni.search import SearchConfig`` keeps working.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Mapping

from .convert import DEFAULT_CANDIDATES, DEFAULT_PINNED_BITS, check_candidates
from .cost import parse_budgets
from .decider import DeciderConfig
from .penalty import PENALTY_FORMS, ConstraintLoss
from .scores import SCORE_FORMS
from .score_calibration import CALIBRATIONS


#: The search length a config is checked with before the real one is known (optimizer steps).
PLACEHOLDER_STEPS = 10**6


def resolve_steps(value, total: int, least: int = 0) -> int:
    """A step count, or a float in (0, 1) read as that fraction of ``total`` steps (at least ``least``)."""
    if isinstance(value, float) and 0 < value < 1:
        return max(int(round(value * total)), least)
    return int(value)


#: What ``cost_options`` holds, for the messages.
COST_OPTIONS_FORM = "a mapping {cost: {option: value}}, e.g. {'lut': {'path': 'lut.json'}}"


def _check_cost_options(options) -> None:
    """``options`` is :data:`COST_OPTIONS_FORM` (a string would pass its characters as cost names).

    Raises:
        ValueError: not a mapping, or a cost whose options are not a mapping (names what was given).
    """
    if not isinstance(options, Mapping):
        raise ValueError(f"cost_options must be {COST_OPTIONS_FORM}; got a {type(options).__name__}: "
                         f"{str(options)[:80]!r}")
    for cost, value in options.items():
        if not isinstance(value, Mapping):
            raise ValueError(f"cost_options[{cost!r}] must be a mapping {{option: value}} (cost_options is "
                             f"{COST_OPTIONS_FORM}); got a {type(value).__name__}: {str(value)[:80]!r}")


@dataclass(frozen=True)
class SearchConfig:
    """Every option of a search, with the defaults of docs/algorithm.md; frozen once checked.

    Attributes:
        budget: ``'bitops=W4A4'``, ``'size=1.5MB,bitops=2e9'``, a list, a dict, a ``Budget``
            or a tuple of them (§4); after construction a tuple of parsed ``Budget`` objects
            (also :attr:`budgets`; :attr:`budget_spec` gives the text back).
        candidates / a_candidates: weight / activation bit-widths (§1); activations default
            to the weight candidates (``a_candidates`` stays None, :attr:`activation_candidates`
            resolves it). After construction sorted unique tuples, checked with the one rule
            of :func:`~ssps_nni.convert.check_candidates` (weights 2..32, activations 1..32).
        include, exclude, pinned, pinned_bits: which layers (``convert.py``).
        cost_options: ``{cost name: kwargs}``, e.g. ``{'lut': {'path': 'lut.json'}}`` (a mapping of
            mappings; anything else raises ``ValueError``).
        signal: ``'dense'`` (default): the logits learn from every candidate's score, tapped in
            the one backward (§3.1); ``'sampled'``: only through the sampled path's residual (§3).
        score, score_ema: form of the dense scores (``'squared'`` Fisher-style or ``'signed'``)
            and the decay of their running average (0: each step alone), ``scores.py``.
        score_fraction: share of each batch the activation scores are computed on, in (0, 1]
            (their elementwise cost grows with the candidates; weights always use all).
        score_calibration: ``'none'`` (default) or ``'measured'``: before the first step, the
            driver measures the float model's loss increase per layer, operand and candidate on
            a few batches and scales the running scores per operand so that they sum to it
            (:func:`ssps_nni.score_calibration.calibrate_search`, docs/algorithm.md §10.2).
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
        BudgetError, UnknownCostError: malformed budget text, unknown cost, two budgets on one
            cost (the message lists the accepted forms).
        CandidateError: empty candidates, not integers, or out of range.
        ValueError: unknown keyword (from ``from_dict``) or another value out of range.
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
    score_calibration: str = "none"
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
        budgets = tuple(parse_budgets(self.budget))  # Budget objects pass through unparsed
        candidates = check_candidates(self.candidates, "weight")
        a_candidates = None if self.a_candidates is None else check_candidates(self.a_candidates, "activation")
        _set(self, budget=budgets, candidates=candidates, a_candidates=a_candidates)
        if self.signal not in ("dense", "sampled"):
            raise ValueError(f"unknown signal {self.signal!r}; accepted: dense, sampled")
        if self.score not in SCORE_FORMS:
            raise ValueError(f"unknown score form {self.score!r}; accepted: {', '.join(SCORE_FORMS)}")
        if self.score_calibration not in CALIBRATIONS:
            raise ValueError(f"unknown score_calibration {self.score_calibration!r}; accepted: {', '.join(CALIBRATIONS)}")
        if not 0 < float(self.score_fraction) <= 1:
            raise ValueError(f"score_fraction must be in (0, 1], got {self.score_fraction}")
        if not 0 <= float(self.score_ema) < 1:
            raise ValueError(f"score_ema must be in [0, 1), got {self.score_ema}")
        if self.penalty == "lagrange":
            if self.signal != "dense":
                raise ValueError("penalty 'lagrange' needs signal='dense' (it prices the budget from the "
                                 f"dense scores); with signal='sampled' use one of {', '.join(PENALTY_FORMS)}")
            _set(self, constraint_loss=None)
        else:
            _set(self, constraint_loss=ConstraintLoss(self.penalty, self.lam, self.beta))
        if self.logits_lr is not None and not float(self.logits_lr) > 0:
            raise ValueError(f"logits_lr must be > 0 or None (follow the search length), got {self.logits_lr}")
        if not float(self.logits_move) > 0:
            raise ValueError(f"logits_move must be > 0, got {self.logits_move}")
        _check_cost_options(self.cost_options)
        unknown = set(self.cost_options) - {b.cost for b in budgets}
        if unknown:
            raise ValueError(f"cost_options for {sorted(unknown)} but no budget on those costs")
        self._check_schedule()

    def _check_schedule(self) -> None:
        """The decider's options (§6), which depend on the search length."""
        _set(self, decider=DeciderConfig(
            total_steps=int(self.total_steps), warmup_steps=int(self.warmup_steps), interval=int(self.interval),
            threshold=self.threshold, measure=self.certainty, schedule=self.schedule,
            schedule_start=float(self.schedule_start), prune_epsilon=self.prune_epsilon, guard=bool(self.guard),
        ))

    @property
    def budgets(self) -> tuple:
        """The parsed budgets, one ``Budget`` per cost (§4)."""
        return self.budget

    @property
    def budget_spec(self) -> str:
        """The budgets as the user wrote them, comma-joined (e.g. ``'bitops=W4A4'``)."""
        return ",".join(b.spec.strip() for b in self.budget)

    @property
    def activation_candidates(self) -> tuple:
        """The activation bit-widths: ``a_candidates``, or the weight candidates when None (§1)."""
        return self.candidates if self.a_candidates is None else self.a_candidates

    def with_schedule(self, total_steps: int, warmup_steps: int | float = 0,
                      interval: int | float = 1) -> "SearchConfig":
        """This config for a search of ``total_steps`` optimizer steps; nothing else is checked again.

        Args:
            total_steps: the search length (optimizer steps).
            warmup_steps, interval: optimizer steps, or a float in (0, 1) as a fraction of
                ``total_steps`` (:func:`resolve_steps`; the interval is at least 1).

        Raises:
            ValueError: a schedule the decider refuses (§6).
        """
        total = int(total_steps)
        new = copy.copy(self)
        _set(new, total_steps=total, warmup_steps=resolve_steps(warmup_steps, total),
             interval=resolve_steps(interval, total, least=1))
        new._check_schedule()
        return new

    @classmethod
    def check_keys(cls, options: Mapping) -> None:
        """Refuse keys that are no field of this class.

        Raises:
            ValueError: the unknown keys and the accepted ones.
        """
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            raise ValueError(f"unknown SSPS option(s) {bad}; accepted: {', '.join(sorted(known))}")

    @classmethod
    def from_options(cls, options: Mapping, total_steps: int | None = None, warmup_steps: int | float = 0,
                     interval: int | float = 1) -> "SearchConfig":
        """The config of a driver whose search length may be known only later.

        Args:
            options: fields of this class other than the schedule.
            total_steps: optimizer steps, or None when the length is not known yet
                (:data:`PLACEHOLDER_STEPS` then; :meth:`with_schedule` sets the real one).
            warmup_steps, interval: as in :meth:`with_schedule`.

        Raises:
            as the constructor; ValueError for an unknown option.
        """
        total = PLACEHOLDER_STEPS if total_steps is None else int(total_steps)
        return cls.from_dict(dict(options, total_steps=total, warmup_steps=resolve_steps(warmup_steps, total),
                                  interval=resolve_steps(interval, total, least=1)))

    @classmethod
    def from_dict(cls, options: Mapping) -> "SearchConfig":
        """The config of ``options`` (field names); raises as the constructor, ValueError for an unknown key."""
        cls.check_keys(options)
        return cls(**options)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def effective_logits_lr(self) -> float:
        """The logits' learning rate: ``logits_lr``, or ``max(3e-3, logits_move / search_steps)`` (§3.2)."""
        if self.logits_lr is not None:
            return float(self.logits_lr)
        return max(3e-3, float(self.logits_move) / max(int(self.total_steps) - int(self.warmup_steps), 1))



def _set(config: SearchConfig, **values) -> None:
    """Set attributes of a frozen config (its own normalisation, before anyone else sees it)."""
    for name, value in values.items():
        object.__setattr__(config, name, value)
