"""The options of one search and their validation, the one owner of both (docs/algorithm.md §1, §3-§7).

:class:`SearchConfig` is a frozen, typed configuration with the defaults of docs/algorithm.md.
It checks everything once, at construction: budget text is parsed into a tuple of
:class:`~ssps_nni.cost.Budget` objects (§4), candidates are validated and sorted with the one
candidate rule (:func:`~ssps_nni.convert.check_candidates`, §1: weights 2..32, activations
1..32), the decider's options become a :class:`~ssps_nni.decider.DeciderConfig` (§6) and the
penalty a :class:`~ssps_nni.penalty.ConstraintLoss` (§5). Every driver builds it once and passes
it on: the mmengine hook and the NNI strategy in ``__init__`` (from a ``SearchConfig`` or from
the same plain options, :func:`ssps_nni.driver_config.config_or_options`), the command line in
``ssps_nni.cli.hook_config.search_config`` (and its run's hook takes that object);
:class:`~ssps_nni.search.SSPSSearch` takes it as is. A driver that learns the search length later (a runner, a trainer) builds it
with :meth:`SearchConfig.from_options` (drivers: :func:`ssps_nni.driver_config.driver_config`) and
then calls :meth:`SearchConfig.with_schedule` (``dataclasses.replace``), which neither parses nor
checks the budgets and candidates again. What needs the model (whether a budget is reachable, §4)
is checked where the model is known, on these ``Budget`` objects (:mod:`ssps_nni.constraints`).

Immutable in fact: the fields hold what was given (``budget``) or its checked form
(``candidates``, ``budgets``), each set once by the dataclass's own ``__init__`` (the checked
fields are descriptor-typed, :class:`Checked`); ``decider`` and ``constraint_loss`` are cached
properties computed from the fields. ``from ssps_nni.search import SearchConfig`` keeps working.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Callable, Mapping

from .convert import DEFAULT_CANDIDATES, DEFAULT_PINNED_BITS, check_candidates
from .cost import Budget, budget_items, parse_budgets
from .decider import DeciderConfig
from .errors import BudgetError, CostOptionsError, UnusedCostOptionsError
from .penalty import PENALTY_FORMS, ConstraintLoss
from .scores import SCORE_FORMS

#: The budget of a search that names none (§4): every searched layer at W4A4 BitOPs.
DEFAULT_BUDGET = "bitops=W4A4"
#: ``score_calibration`` values: none, or the measured / adapted loss increase (§10.2).
CALIBRATIONS = ("none", "measured", "adapted")
#: The search length a config is checked with before the real one is known (optimizer steps).
PLACEHOLDER_STEPS = 10**6


def step_count(value, name: str) -> int:
    """``int(value)``; raises ValueError naming the option ``name`` for what is no number (e.g. ``'abc'``)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number of optimizer steps, got {value!r}") from None


def resolve_steps(value, total: int, least: int = 0, name: str = "steps") -> int:
    """A step count, or a float in (0, 1) read as that fraction of ``total`` steps (at least ``least``);
    ValueError naming the option ``name`` for what is no number."""
    if isinstance(value, float) and 0 < value < 1:
        return max(int(round(value * total)), least)
    return step_count(value, name)


#: What ``cost_options`` holds, for the messages.
COST_OPTIONS_FORM = "a mapping {cost: {option: value}}, e.g. {'lut': {'path': 'lut.json'}}"


def check_cost_options(options) -> None:
    """``options`` is :data:`COST_OPTIONS_FORM` (a string would pass its characters as cost names).

    Raises:
        CostOptionsError: not a mapping, or a cost whose options are not a mapping (names what was given).
    """
    if not isinstance(options, Mapping):
        raise CostOptionsError(f"cost_options must be {COST_OPTIONS_FORM}; got a {type(options).__name__}: "
                         f"{str(options)[:80]!r}")
    for cost, value in options.items():
        if not isinstance(value, Mapping):
            raise CostOptionsError(f"cost_options[{cost!r}] must be a mapping {{option: value}} (cost_options is "
                             f"{COST_OPTIONS_FORM}); got a {type(value).__name__}: {str(value)[:80]!r}")


class Checked:
    """A field checked once, as the dataclass's ``__init__`` sets it (a descriptor-typed field).

    ``dataclasses`` passes a descriptor-typed field's value to :meth:`__set__`, also in a frozen
    class, whose ``__setattr__`` refuses every later write; the checked value is kept in the
    instance's ``__dict__`` under the field's own name (this descriptor's storage).

    Args:
        check: ``check(config, value) -> checked value`` (raises on bad input); it sees the
            fields declared before this one.
        default: the field's default, returned on the class.
        name: the field's name, for one given as ``field(default=Checked(...))`` (which Python
            does not announce to the descriptor).
    """

    def __init__(self, check: Callable, default, name: str | None = None):
        self.check, self.default, self.name = check, default, name

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, config, owner=None):
        return self.default if config is None else config.__dict__[self.name]

    def __set__(self, config, value) -> None:
        if value is self:  # the default of a field(default=Checked(...))
            value = self.default
        config.__dict__[self.name] = self.check(config, value)


def checked_bits(value, kind: str):
    """``value`` as sorted unique bit-widths (None stays None), checked with the one rule (§1).

    A plain tuple (it goes into checkpoints); :meth:`SearchConfig.with_schedule` passes the sorted
    tuple back, whose check is a range test of a few integers, not a parse.
    """
    return None if value is None else check_candidates(value, kind)


def parse_budget_field(budget, budgets) -> tuple:
    """``budgets`` when they are ``budget`` parsed (as :meth:`SearchConfig.with_schedule` passes
    them on), else ``budget`` parsed here (§4; ``Budget`` objects pass unparsed).

    Raises:
        BudgetError, UnknownCostError: as :func:`~ssps_nni.cost.parse_budgets`.
    """
    if budgets is not None and all(isinstance(b, Budget) for b in budgets):
        try:
            texts = [b.spec if isinstance(b, Budget) else b for b in budget_items(budget)]
        except BudgetError:
            texts = None  # parse_budgets gives the message
        if texts == [b.spec for b in budgets]:
            return tuple(budgets)
    return tuple(parse_budgets(budget))


@dataclass(frozen=True)
class SearchConfig:
    """Every option of a search, with the defaults of docs/algorithm.md; frozen once checked.

    Attributes:
        budget: ``'bitops=W4A4'``, ``'size=1.5MB,bitops=2e9'``, a list, a dict, a ``Budget``
            or a tuple of them (§4), kept as given (:attr:`budget_spec` gives the text back).
        budgets: (keyword only) the parsed ``budget``, a tuple of ``Budget`` objects, one per
            cost; parsed at construction unless the ``budgets`` given are ``budget`` parsed (as
            ``dataclasses.replace`` passes them on in :meth:`with_schedule`).
        candidates / a_candidates: weight / activation bit-widths (§1); activations default
            to the weight candidates (``a_candidates`` stays None, :attr:`activation_candidates`
            resolves it). Held as sorted unique tuples, checked with the one rule of
            :func:`~ssps_nni.convert.check_candidates` (weights 2..32, activations 1..32).
        include, exclude, pinned, pinned_bits: which layers (``convert.py``).
        cost_options: ``{cost name: kwargs}``, e.g. ``{'lut': {'path': 'lut.json'}}`` (a mapping of
            mappings; anything else raises ``CostOptionsError``).
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
        decider, constraint_loss (properties): the decider's options (§6) and the constraint
            loss of the penalty (§5; None for ``'lagrange'``), built from the fields.

    Raises:
        BudgetError, UnknownCostError: malformed budget text, unknown cost, two budgets on one
            cost (the message lists the accepted forms).
        CandidateError: empty candidates, not integers, or out of range.
        CostOptionsError: ``cost_options`` not a mapping of mappings, or for a cost with no budget.
        ValueError: unknown keyword (from ``from_dict``) or another value out of range.
    """

    budget: object = DEFAULT_BUDGET
    budgets: tuple = field(default=Checked(lambda config, value: parse_budget_field(config.budget, value), None,
                                           "budgets"), kw_only=True)  # THE parse of the budget text (§4)
    candidates: tuple = Checked(lambda config, value: checked_bits(value, "weight"), DEFAULT_CANDIDATES)
    a_candidates: tuple | None = Checked(lambda config, value: checked_bits(value, "activation"), None)
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
        # budget, budgets, candidates and a_candidates were checked as the fields were set (Checked)
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
        if self.penalty == "lagrange" and self.signal != "dense":
            raise ValueError("penalty 'lagrange' needs signal='dense' (it prices the budget from the "
                             f"dense scores); with signal='sampled' use one of {', '.join(PENALTY_FORMS)}")
        self.constraint_loss  # noqa: B018  (checks the penalty form and weights now)
        if self.logits_lr is not None and not float(self.logits_lr) > 0:
            raise ValueError(f"logits_lr must be > 0 or None (follow the search length), got {self.logits_lr}")
        if not float(self.logits_move) > 0:
            raise ValueError(f"logits_move must be > 0, got {self.logits_move}")
        if not 0 < float(self.tau_min) <= float(self.tau_max):  # the sampler's rule (§3), checked now
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={self.tau_min}, tau_max={self.tau_max}")
        try:
            operator.index(self.seed)  # an int (numpy's too); a float or text would fail in the sampler
        except TypeError:
            raise ValueError(f"seed must be an integer, got {self.seed!r}") from None
        for name in ("include", "exclude"):
            patterns = getattr(self, name)
            if not (patterns is None or isinstance(patterns, str)
                    or (isinstance(patterns, (list, tuple, set, frozenset)) and all(isinstance(p, str) for p in patterns))):
                raise ValueError(f"{name} must be a layer-name pattern or a list of them (e.g. ['backbone.*']), "
                                 f"got {patterns!r}")
        check_cost_options(self.cost_options)
        unknown = sorted(set(self.cost_options) - {b.cost for b in self.budgets})
        if unknown:
            raise UnusedCostOptionsError(f"cost_options for {unknown} but no budget on those costs", unknown)
        self.decider  # noqa: B018  (checks the schedule now)

    @cached_property
    def decider(self) -> DeciderConfig:
        """The decider's options (§6), which depend on the search length; raises ``ValueError`` out of range."""
        return DeciderConfig(
            total_steps=int(self.total_steps), warmup_steps=int(self.warmup_steps), interval=int(self.interval),
            threshold=self.threshold, measure=self.certainty, schedule=self.schedule,
            schedule_start=float(self.schedule_start), prune_epsilon=self.prune_epsilon, guard=bool(self.guard),
        )

    @cached_property
    def constraint_loss(self) -> ConstraintLoss | None:
        """The constraint loss of ``penalty`` (§5); None for ``'lagrange'``, which prices the budget instead."""
        return None if self.penalty == "lagrange" else ConstraintLoss(self.penalty, self.lam, self.beta)

    @property
    def budget_spec(self) -> str:
        """The budgets as the user wrote them, comma-joined (e.g. ``'bitops=W4A4'``)."""
        return ",".join(b.spec.strip() for b in self.budgets)

    @property
    def activation_candidates(self) -> tuple:
        """The activation bit-widths: ``a_candidates``, or the weight candidates when None (§1)."""
        return self.candidates if self.a_candidates is None else self.a_candidates

    def with_schedule(self, total_steps: int, warmup_steps: int | float = 0,
                      interval: int | float = 1) -> "SearchConfig":
        """This config for a search of ``total_steps`` optimizer steps; the budgets and candidates
        are not parsed or checked again (``dataclasses.replace`` passes their checked form on).

        Args:
            total_steps: the search length (optimizer steps).
            warmup_steps, interval: optimizer steps, or a float in (0, 1) as a fraction of
                ``total_steps`` (:func:`resolve_steps`; the interval is at least 1).

        Raises:
            ValueError: a schedule the decider refuses (§6).
        """
        total = step_count(total_steps, "total_steps")
        return replace(self, total_steps=total, warmup_steps=resolve_steps(warmup_steps, total, name="warmup_steps"),
                       interval=resolve_steps(interval, total, least=1, name="interval"))

    @classmethod
    def check_keys(cls, options: Mapping, also: tuple = ()) -> None:
        """Refuse keys that are no field of this class.

        Args:
            also: a driver's own options (e.g. the hook's ``calib_batches``), named among the accepted.

        Raises:
            ValueError: the unknown keys and the accepted ones (the options a user gives: every
                field but ``budgets``, the parsed ``budget``, and ``also``).
        """
        known = {f.name for f in fields(cls)}
        bad = sorted(set(options) - known)
        if bad:
            accepted = sorted((known - {'budgets'}) | set(also))
            raise ValueError(f"unknown SSPS option(s) {bad}; accepted: {', '.join(accepted)}")

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
        total = PLACEHOLDER_STEPS if total_steps is None else step_count(total_steps, "total_steps")
        return cls.from_dict(dict(options, total_steps=total,
                                  warmup_steps=resolve_steps(warmup_steps, total, name="warmup_steps"),
                                  interval=resolve_steps(interval, total, least=1, name="interval")))

    @classmethod
    def from_dict(cls, options: Mapping) -> "SearchConfig":
        """The config of ``options`` (field names); raises as the constructor, ValueError for an unknown key."""
        cls.check_keys(options)
        return cls(**options)

    def to_dict(self) -> dict:
        """Every field (``budget`` as given, ``budgets`` parsed); :meth:`from_dict` takes it back unparsed."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def effective_logits_lr(self) -> float:
        """The logits' learning rate: ``logits_lr``, or ``max(3e-3, logits_move / search_steps)`` (§3.2)."""
        if self.logits_lr is not None:
            return float(self.logits_lr)
        return max(3e-3, float(self.logits_move) / max(int(self.total_steps) - int(self.warmup_steps), 1))



def _candidates_text(w, a) -> str:
    text = ",".join(str(int(v)) for v in w)
    return text if tuple(w) == tuple(a) else f"{text} (weights), {','.join(str(int(v)) for v in a)} (activations)"


def searched_with_other(state: Mapping, config: SearchConfig) -> str | None:
    """What a saved search (``state``: :meth:`SSPSSearch.state_dict`, a checkpoint's ``'ssps'``)
    was searched with that ``config`` changes, its budgets or candidates; None when neither differs.

    A state saved before they were recorded (no ``'budgets'`` / ``'candidates'``): the numbers of
    candidates are read from its logits' shapes, its budgets are not compared.
    """
    found = []
    saved = state.get("budgets")
    if saved is not None:
        key = lambda budgets: sorted((b.cost, b.relative, b.value) for b in budgets)  # noqa: E731
        try:
            then = key(parse_budgets(list(saved)))
        except BudgetError:
            then = []
        now = key(config.budgets)
        same = len(then) == len(now) and all(a[:2] == b[:2] and (a[2] == b[2] or None not in (a[2], b[2])
                                                                  and math.isclose(a[2], b[2], rel_tol=1e-9))
                                             for a, b in zip(then, now))
        if not same:
            found.append(f"budget {','.join(str(s).strip() for s in saved)} (given now: {config.budget_spec})")
    now = {"w": tuple(config.candidates), "a": tuple(config.activation_candidates)}
    given = _candidates_text(now["w"], now["a"])
    cands = state.get("candidates")
    if cands is not None:
        then = {slot: tuple(int(v) for v in cands[slot]) for slot in ("w", "a")}
        if then != now:
            found.append(f"candidates {_candidates_text(then['w'], then['a'])} (given now: {given})")
        return "; ".join(found) or None
    logits = ((state.get("space") or {}).get("sampler") or {}).get("logits") or {}
    widths = {slot: int(logits[slot].shape[-1]) for slot in ("w", "a") if slot in logits}
    if any(widths[slot] != len(now[slot]) for slot in widths):
        then = " and ".join(f"{widths[s]} {'weight' if s == 'w' else 'activation'}" for s in widths)
        found.append(f"{then} candidates (given now: {given})")
    return "; ".join(found) or None
