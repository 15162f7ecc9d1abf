"""SSPS as an NNI one-shot strategy: arguments and wiring only (no tensor math here).

The search itself is the core's :class:`~ssps_nni.search.SSPSSearch`; the supernet modules
are :class:`~ssps_nni.nni.supermodule.QuantSuperNetModule`; the training loop is
:class:`~ssps_nni.nni.lightning.SSPSLightningModule`. This file maps NNI's strategy protocol
onto them:

1. ``mutate_model``: the mutation hook swaps every mixed-precision op for a supernet module
   holding a core cell; the cells, the pinned fixed ops and one core ``PathSampler`` form the
   core ``SearchSpace``.
2. ``mutate_evaluator``: the search length is resolved (epochs or steps), the core search is
   created and prepared on one training batch (profiling, LSQ calibration, budget check), so a
   bad budget fails before any training step; then the evaluator's module is wrapped.
   With nothing to search (one candidate per decision, or budgets that leave one feasible
   policy) the policy is fixed there, one log line says why, and the evaluator only validates
   the fixed model (no training step).
3. Lightning runs the search; :meth:`SSPS.policy` / :meth:`SSPS.save_policy` give the core
   ``Policy`` (``"final": true`` once the search is finished); ``export_top_models`` gives the
   decided ``{label: bits}`` sample. A NaN or inf loss stops the search with
   :class:`~ssps_nni.errors.SearchDivergedError` on its step.
"""
from __future__ import annotations

import nni.nas.strategy  # noqa: F401  (first: otherwise NNI's built-in strategies become placeholders)
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy, no_default_hook
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ..cell import QuantCellMixin
from ..convert import DEFAULT_CANDIDATES, DEFAULT_PINNED_BITS, SearchSpace, check_candidates
from ..driver_config import SCHEDULE_OPTIONS, config_or_options
from ..errors import NoQuantizableLayersError, SSPSError
from ..policy import Policy
from ..sampler import SLOTS, PathSampler
from ..search import SSPSSearch
from ..search_config import DEFAULT_BUDGET, SearchConfig
from .lightning import SSPSLightningModule
from .space import QuantizationSpace
from .supermodule import QuantSuperNetModule

SCHEDULE_FIELDS = SCHEDULE_OPTIONS
#: ``SSPS``'s own keyword arguments (no SearchConfig field), named in an unknown-option message.
STRATEGY_OPTIONS = ("config", "unit", "total", "warmup", "interval", "bilevel", "input_fn", "gradient_clip_val",
                    "log_every_n_steps", "mutation_hooks")
#: SearchConfig fields that the NNI space decides (``quantization_space``), not SSPS's options.
SPACE_FIELDS = frozenset({"candidates", "a_candidates", "include", "exclude", "pinned", "pinned_bits"})
#: Their defaults as a constructed ``SearchConfig`` holds them (candidates sorted).
SPACE_DEFAULTS = dict(candidates=tuple(sorted(set(DEFAULT_CANDIDATES))), a_candidates=None, include=None,
                      exclude=None, pinned="default", pinned_bits=DEFAULT_PINNED_BITS)


class SSPS(OneShotStrategy):
    """Sequential Single Path Search for mixed-precision bit-widths (docs/algorithm.md).

    Args:
        budget: ``'bitops=W4A4'``, ``'size=1.5MB'``, ... (see ``ssps_nni.cost.BUDGET_FORMS``),
            or a :class:`~ssps_nni.search_config.SearchConfig` (also as ``config=``) instead of
            ``budget`` and ``**options``. Its candidate and layer fields must keep their
            defaults (the space sets them) and its search length is replaced by
            ``total`` / ``warmup`` / ``interval``.
        unit: ``'epoch'`` or ``'step'``: the unit of ``total``, ``warmup`` and ``interval``.
        total: search length; default: the trainer's ``max_epochs`` (all decided by then).
        warmup: warm-up length (logits frozen, uniform paths). interval: decision interval.
        bilevel: logits on the validation loader, weights on the training loader (first order).
        input_fn: ``batch -> model input`` for profiling and calibration; default: the first
            element of a tuple/list batch, the batch itself otherwise.
        gradient_clip_val, log_every_n_steps: see :class:`~ssps_nni.nni.lightning.SSPSLightningModule`.
        mutation_hooks: extra NNI mutation hooks, run before SSPS's own.
        **options: any other :class:`~ssps_nni.search.SearchConfig` field (``penalty``,
            ``lam``, ``threshold``, ``tau_max``, ``seed``, ...). Candidates, include, exclude
            and pinned layers come from the space.

    The typed config is built once, here (:func:`ssps_nni.driver_config.config_or_options`, as
    the mmengine hook): the budget text is parsed and the options checked only then;
    ``mutate_evaluator`` sets the search length with :meth:`SearchConfig.with_schedule`, which
    checks neither again.

    Raises:
        BudgetError, CandidateError (at construction): as :class:`SearchConfig`.
        ValueError (``SSPSError``): unknown option, bad schedule, bad budget (at construction),
        unreachable budget or a space without mixed-precision ops (at initialisation, before
        any training step).
    """

    def __init__(self, budget=DEFAULT_BUDGET, *, config: SearchConfig | None = None, unit: str = "epoch",
                 total: int | None = None, warmup: int = 0, interval: int = 1, bilevel: bool = False, input_fn=None,
                 gradient_clip_val: float | None = None, log_every_n_steps: int = 10,
                 mutation_hooks=None, **options):
        super().__init__(mutation_hooks=mutation_hooks)
        if unit not in ("epoch", "step"):
            raise SSPSError(f"unit must be 'epoch' or 'step', got {unit!r}")
        if isinstance(budget, SearchConfig):
            budget, config = DEFAULT_BUDGET, budget if config is None else config
        bad = sorted(set(options) & (SPACE_FIELDS | set(SCHEDULE_FIELDS)))
        if bad:
            raise SSPSError(f"{bad} are set by the space or by total/warmup/interval, not by SSPS options")
        given = sorted(options) + (["budget"] if budget is not DEFAULT_BUDGET else [])
        # the search length is the trainer's, known in mutate_evaluator (with_schedule there)
        checked = config_or_options("SSPS", config, dict(options, budget=budget), given, own=STRATEGY_OPTIONS)
        if config is not None:
            set_by_space = sorted(f for f in SPACE_FIELDS if getattr(config, f) != SPACE_DEFAULTS[f])
            if set_by_space:
                raise SSPSError(f"{set_by_space} are set by the space (quantization_space(model, candidates=...)), "
                                "not by the SearchConfig given to SSPS")
        self.config = checked
        self.unit, self.total, self.warmup, self.interval = unit, total, int(warmup), int(interval)
        self.bilevel = bilevel
        self.input_fn = input_fn or _first_input
        self.gradient_clip_val = gradient_clip_val
        self.log_every_n_steps = log_every_n_steps
        self.search: SSPSSearch | None = None
        self._space: SearchSpace | None = None

    # -- NNI protocol ----------------------------------------------------------------------------

    def default_mutation_hooks(self) -> list:
        return [QuantSuperNetModule.mutate, no_default_hook]

    def mutate_model(self, model):
        model = super().mutate_model(model)
        self._space = build_search_space(model, tau=self.config.tau_max, seed=self.config.seed)
        return model

    def mutate_evaluator(self, evaluator):
        loader = evaluator.train_dataloaders
        if loader is None:
            raise SSPSError("SSPS needs train_dataloaders in the evaluator (a datamodule is not supported yet)")
        self.search = SSPSSearch(self._space.model, self._search_config(evaluator.trainer, loader), self._space)
        batch = next(iter(loader))
        inputs = self.input_fn(batch)
        self.search.prepare(lambda: self._space.model(inputs), num_samples=len(inputs))
        reason = self.search.single_policy()
        if reason is None:
            return super().mutate_evaluator(evaluator)
        self.search.settle()
        rank_zero_info(f"SSPS: nothing to search, {reason}; the policy is final now and no training step runs "
                       "(the fixed model is only validated)")
        lightning = super().mutate_evaluator(evaluator)
        lightning.train_dataloaders = None  # Lightning.evaluate then runs trainer.validate, not fit
        return lightning

    def configure_oneshot_module(self, training_module) -> SSPSLightningModule:
        return SSPSLightningModule(training_module, self.search, bilevel=self.bilevel,
                                   gradient_clip_val=self.gradient_clip_val,
                                   log_every_n_steps=self.log_every_n_steps)

    def train_dataloader(self, train_dataloader_fn, val_dataloader_fn):
        if self.bilevel:
            return {"train": train_dataloader_fn(), "val": val_dataloader_fn()}
        return train_dataloader_fn()

    # -- configuration ---------------------------------------------------------------------------

    def _search_config(self, trainer, loader) -> SearchConfig:
        """The core config with the schedule converted to optimizer steps (= batches)."""
        per_epoch = len(loader)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            per_epoch = min(per_epoch, limit)
        elif isinstance(limit, float) and limit < 1.0:
            per_epoch = max(int(per_epoch * limit), 1)
        per_unit = per_epoch if self.unit == "epoch" else 1
        if self.total is not None:
            total = self.total * per_unit
        elif trainer.max_steps is not None and trainer.max_steps > 0:
            total = trainer.max_steps
        elif trainer.max_epochs is not None and trainer.max_epochs > 0:
            total = trainer.max_epochs * per_epoch
        else:
            raise SSPSError("the search length is unknown: set SSPS(total=...) or the trainer's max_epochs")
        return self.config.with_schedule(total, self.warmup * per_unit, self.interval * per_unit)

    # -- results ---------------------------------------------------------------------------------

    def policy(self) -> Policy:
        """The core ``Policy`` of the search (layer names are paths in the plain model)."""
        if self.search is None:
            raise RuntimeError("SSPS has not been initialised: run it (NasExperiment.run) first")
        return self.search.policy()

    def save_policy(self, path) -> Policy:
        """Write :meth:`policy` as policy JSON (``ssps_nni.policy`` format) and return it.

        Before the search is finished the file is a snapshot (``"final": false``, its open
        decisions listed), which retraining tools refuse; a warning says so.
        """
        policy = self.policy()
        policy.save(path)
        if not policy.final:
            rank_zero_warn(f"SSPS.save_policy: {path} is not final, the search is not finished ({policy.status()})")
        return policy


def _first_input(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def build_search_space(supernet: nn.Module, tau: float = 5.0, seed: int = 0) -> SearchSpace:
    """The core ``SearchSpace`` over a mutated supernet's cells (see the module docstring).

    Layer names are relative to ``supernet.model`` for a
    :class:`~ssps_nni.nni.space.QuantizationSpace`, else to the supernet.

    Raises:
        NoQuantizableLayersError: no mixed-precision op. SSPSError: ops with different
            candidate lists, or two ops sharing a label.
    """
    root = supernet.model if isinstance(supernet, QuantizationSpace) else supernet
    cells, searched, pinned, candidates = {}, [], {}, set()
    for name, module in root.named_modules():
        if isinstance(module, QuantSuperNetModule):
            cells[name] = module.cell
            searched.append(name)
            candidates.add((module.cell.w_candidates, module.cell.a_candidates))
        elif isinstance(module, QuantCellMixin) and not any(name.startswith(f"{n}.") for n in cells):
            cells[name] = module
            pinned[name] = (module.w_candidates[0], module.a_candidates[0])
    if not searched:
        raise NoQuantizableLayersError(
            f"{type(supernet).__name__} has no MixedPrecisionConv2d/MixedPrecisionLinear op, so SSPS has nothing "
            "to search; accepted: a space from ssps_nni.nni.quantization_space(model), or a ModelSpace using "
            "MixedPrecisionConv2d/MixedPrecisionLinear with nni.choice bit-widths"
        )
    if len(candidates) > 1:
        raise SSPSError(f"SSPS needs the same candidate bit-widths in every searched op, got {sorted(candidates)}")
    _check_labels(root, searched)
    w_c, a_c = next(iter(candidates))
    check_candidates(w_c, "weight"), check_candidates(a_c, "activation")
    sampler = PathSampler(len(searched), w_c, a_c, tau=tau, seed=seed)
    for layer, name in enumerate(searched):
        cells[name].attach(sampler, layer)
    return SearchSpace(root, cells, searched, pinned, w_c, a_c, sampler)


def _check_labels(root: nn.Module, searched: list) -> None:
    labels = [root.get_submodule(n).labels[s] for n in searched for s in SLOTS]
    if len(set(labels)) != len(labels):
        raise SSPSError("SSPS needs one label per op and slot; two ops share a label (shared decisions "
                        "are not supported)")


__all__ = ["SSPS", "build_search_space"]
