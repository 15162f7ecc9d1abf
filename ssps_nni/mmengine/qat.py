"""``QuantPolicyHook``: quantization-aware retraining of a fixed policy in any mmengine run.

The retraining half of docs/algorithm.md §8: the model trains with the core's quantizers at the
policy's bits (one candidate per slot, no sampler, no constraint loss). Shaped like
:class:`~ssps_nni.mmengine.SSPSHook`, with the same event map minus the search:

============================  ===============================================================
``before_run``                convert the inner model with :func:`ssps_nni.convert.fixed_model`
                              (parameter names kept, so ``load_from`` an FP checkpoint loads);
                              step sizes join the task optimizer; re-wrap DDP
``after_load_checkpoint``     from a search supernet's per-candidate step sizes keep the row of
                              each layer's bits (the search trained them); drop quantizer state
                              that still does not fit: those layers recalibrate
``before_train``              calibrate step sizes on a few training batches (LSQ init),
                              except for layers whose step sizes came from a checkpoint
============================  ===============================================================

Config (``tools/train.py`` writes this for ``--policy`` / ``--uniform``)::

    custom_imports = dict(imports=['ssps_nni.mmengine'], allow_failed_imports=False)
    custom_hooks = [dict(type='QuantPolicyHook', policy='work_dirs/search/policy.json')]
    custom_hooks = [dict(type='QuantPolicyHook', uniform='W4A4')]   # stem/classifier at W8A8
"""
from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..cell import CELL_TYPES, QuantCellMixin
from ..checkpoint import take_candidate_rows
from ..convert import DEFAULT_PINNED_BITS, fixed_model, parse_bits_pair, select_layers
from ..cost import BitOpsCost, SizeCost, profile_layers
from ..errors import CandidateError, PolicyError
from ..policy import Policy, load_policy, require_final
from ..quant import FLOAT_BITS
from ..calibration_data import calibration_loader, forward_fn, preserved_rng
from .optim import add_param_group, find_optim_wrapper

__all__ = ['QuantPolicyHook', 'model_costs', 'build_model_from_cfg']

QAT_POLICY_JSON = 'qat_policy.json'
#: Quantizer state of a cell (``state_dict`` suffixes), dropped together when it does not fit.
QUANT_KEYS = ('w_scale', 'a_scale', 'w_mask', 'a_mask', 'a_signed', 'initialized')


def parse_uniform(value) -> tuple[int, int]:
    """``'W4A4'`` -> ``(4, 4)``; raises ``CandidateError`` (weights need 2..32 bits)."""
    try:
        w, a = parse_bits_pair(value)
    except CandidateError as err:
        raise CandidateError(f'uniform={value!r}: {err}; accepted: WxAy with x in 2..32, y in 1..32') from None
    if w < 2:
        raise CandidateError(f'uniform={value!r}: weights need 2..32 bits (a symmetric range), got {w}')
    return w, a


@HOOKS.register_module()
class QuantPolicyHook(Hook):
    """Train the model quantized at fixed bits: a searched policy, or uniform ``WxAy``.

    Args:
        policy: a ``policy.json`` path, a policy dict or a :class:`~ssps_nni.policy.Policy`;
            it must list every ``Conv2d``/``Linear`` of the model (checked in ``before_run``).
            Layer names may be another route's (``layer1.0.conv1`` for
            ``backbone.layer1.0.conv1``): they are matched by dotted suffix and the mapping is
            logged (:meth:`ssps_nni.policy.Policy.match_model`).
        uniform: ``'WxAy'``: every layer the search would search at ``x``/``y`` bits, the
            pinned layers at their pinned bits, excluded layers float. Give ``policy`` or
            ``uniform``, not both.
        include, exclude, pinned, pinned_bits: which layers ``uniform`` covers, as for
            :class:`~ssps_nni.mmengine.SSPSHook` (:func:`ssps_nni.convert.select_layers`).
        calib_batches, calib_batch_size: training batches that initialise the step sizes.
        seed: seed of the calibration samples.
        allow_partial: accept a search's interim snapshot (``"final": false``), with a warning
            naming its cost against the budget; by default it is refused.

    Raises (at construction): PolicyError (unreadable, not JSON or malformed policy),
    PolicyNotFinalError (a non-final policy without ``allow_partial``), CandidateError
    (malformed ``uniform``), ValueError. In ``before_run``: PolicyError naming the first layer
    missing from, or extra to, the model, or matching several of its layers.
    """

    priority = 'VERY_HIGH'  # before EMAHook copies the model, like SSPSHook

    def __init__(self, policy=None, uniform=None, include=None, exclude=None, pinned='default',
                 pinned_bits=DEFAULT_PINNED_BITS, calib_batches: int = 4, calib_batch_size: int | None = None,
                 seed: int = 0, allow_partial: bool = False):
        if (policy is None) == (uniform is None):
            raise ValueError("QuantPolicyHook needs exactly one of policy='policy.json' or uniform='W4A4'")
        if isinstance(policy, Policy):
            self.policy = policy
        elif isinstance(policy, Mapping):
            self.policy = Policy.from_dict(policy)
        elif policy is not None:
            self.policy = load_policy(policy)
        else:
            self.policy = None
        self.partial_warning = None
        if self.policy is not None:
            source = str(policy) if isinstance(policy, (str, bytes)) or hasattr(policy, '__fspath__') else 'policy'
            self.partial_warning = require_final(self.policy, source, allow=bool(allow_partial),
                                                 allow_option='QuantPolicyHook(allow_partial=True)')
        self.renamed: str | None = None  # how policy layer names were matched, if not exactly
        self.uniform = None if uniform is None else parse_uniform(uniform)
        self.select = dict(include=include, exclude=exclude, pinned=pinned, pinned_bits=pinned_bits)
        self.calib_batches = int(calib_batches)
        self.calib_batch_size = calib_batch_size
        self.seed = int(seed)
        if self.calib_batches < 1:
            raise ValueError(f'calib_batches must be >= 1, got {calib_batches}')
        self.cells: dict[str, QuantCellMixin] = {}
        self._converted = False
        self._inner = None

    def resolve(self, model: torch.nn.Module) -> Policy:
        """The policy this hook trains ``model`` at (``uniform`` expanded over its layers).

        Raises:
            PolicyError: a layer missing from, or extra to, the policy; weight bits below 2.
        """
        if self.policy is not None:
            lines = []
            policy = self.policy.for_model(model, log=lines.append)
            self.renamed = lines[0] if lines else None
        else:
            searched, pins = select_layers(model, **self.select)
            layers = {}
            for name, module in model.named_modules():
                if name in pins or name in searched:
                    w, a = pins.get(name, self.uniform)
                    layers[name] = {'w_bits': w, 'a_bits': a, 'pinned': name in pins,
                                    'certainty': None, 'decided_at': None}
                elif name and type(module) in CELL_TYPES:
                    layers[name] = {'w_bits': FLOAT_BITS, 'a_bits': FLOAT_BITS, 'excluded': True}
            w, a = self.uniform
            policy = Policy(layers=layers, candidates={'w': [w], 'a': [a]}, meta={'uniform': f'W{w}A{a}'})
        for name, (w, _) in policy.bits().items():
            if w < 2:
                raise PolicyError(f'policy layer {name!r} has w_bits={w}; weights need 2..32 bits')
        return policy

    # -- set-up ------------------------------------------------------------------------------

    def before_run(self, runner) -> None:
        """Convert the model to the policy's fixed bits, add step sizes to the optimizer, re-wrap DDP."""
        if self._converted:
            return  # converted by an earlier run of this runner (``train()`` then ``test()``)
        wrapped = is_model_wrapper(runner.model)
        inner = runner.model.module if wrapped else runner.model
        self._inner = inner
        self.policy = self.resolve(inner)
        if self.renamed:
            runner.logger.info(f'QAT: {self.renamed}')
        if self.partial_warning:
            runner.logger.warning(f'QAT: {self.partial_warning}')
        self.cells = fixed_model(inner, self.policy.bits())
        self._converted = True
        step_sizes = []
        for cell in self.cells.values():  # a float slot's step size stays out (DDP: unused param)
            w_bits, a_bits = cell.bits()
            cell.w_scale.requires_grad_(w_bits < FLOAT_BITS)
            cell.a_scale.requires_grad_(a_bits < FLOAT_BITS)
            step_sizes += [p for p in (cell.w_scale, cell.a_scale) if p.requires_grad]
        if step_sizes:
            wrapper = find_optim_wrapper(runner.optim_wrapper, next(iter(self.cells.values())).weight)
            if wrapper is not None:
                add_param_group(wrapper, step_sizes, runner.param_schedulers)
        if wrapped:
            runner.model = runner.wrap_model(runner.cfg.get('model_wrapper_cfg'), inner)
        if is_main_process():
            self.policy.save(f'{runner.work_dir}/{QAT_POLICY_JSON}')
        quantized = sum(min(c.bits()) < FLOAT_BITS for c in self.cells.values())
        what = f'uniform {self.policy.meta["uniform"]}' if self.uniform else 'policy'
        runner.logger.info(f'QAT: {len(self.cells)} layers at the {what} bits ({quantized} quantized); '
                           f'{len(step_sizes)} step sizes in the task optimizer')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the search's step sizes for the policy's bits; drop what does not fit (recalibrated).

        A search checkpoint holds one step size per candidate bit-width and layer: each layer's
        row of its policy bits is kept (:func:`ssps_nni.checkpoint.take_candidate_rows`, the
        candidates being the policy's), so the QAT continues from the step sizes the search
        trained. Quantizer state that still does not fit the fixed model (another candidate
        list, ``uniform`` bits) is dropped: those layers are calibrated in ``before_train``.
        """
        state = checkpoint.get('state_dict', checkpoint)
        if not self.cells or not isinstance(state, dict):
            return
        supernet = [n for n in self.cells if getattr(state.get(f'{n}.w_scale'), 'shape', (1,))[0] != 1
                    or getattr(state.get(f'{n}.a_scale'), 'shape', (1,))[0] != 1]
        if supernet:
            taken = set(take_candidate_rows(state, {n: self.cells[n] for n in supernet}, self.policy.candidates))
            runner.logger.info(f'QAT: search checkpoint: the step sizes of the policy\'s bits taken for {len(taken)} '
                               f'of its {len(supernet)} per-candidate layers')
        own = self._inner.state_dict()
        dropped = []
        for name in self.cells:
            keys = [f'{name}.{k}' for k in QUANT_KEYS]
            if any(k in state and tuple(state[k].shape) != tuple(own[k].shape) for k in keys):
                for k in keys:
                    state.pop(k, None)
                dropped.append(name)
        if dropped:
            runner.logger.info(f'QAT: checkpoint step sizes of {len(dropped)} layers do not fit the fixed '
                               'model (another candidate list?); they are recalibrated')

    def before_train(self, runner) -> None:
        """LSQ-initialise the step sizes not loaded from a checkpoint, on a few training batches."""
        todo = [c for c in self.cells.values() if not int(c.initialized)]
        if not todo:
            runner.logger.info('QAT: step sizes from the checkpoint')
            return
        loader = calibration_loader(runner.train_dataloader, self.calib_batches, self.calib_batch_size,
                                    seed=self.seed)
        run, _ = forward_fn(self._inner, loader)
        with preserved_rng(), _float_forward(self._inner, todo):
            run()
        for cell in todo:
            cell.init_scales()
        runner.logger.info(f'QAT: calibrated the step sizes of {len(todo)} layers on {len(loader.dataset)} '
                           'training samples')


@contextlib.contextmanager
def _float_forward(model: torch.nn.Module, cells):
    """Eval mode, no grad, ``cells`` recording calibration statistics (their forward is float)."""
    modes = {m: m.training for m in model.modules()}
    cells = list(cells)
    model.eval()
    for cell in cells:
        cell.calibrating = True
    try:
        with torch.no_grad():
            yield
    finally:
        for cell in cells:
            cell.calibrating = False
        for m, mode in modes.items():
            m.training = mode


def model_costs(model: torch.nn.Module, run: Callable[[], None], num_samples: int) -> dict:
    """BitOPs and size of ``model`` as it is now, per input sample (docs/algorithm.md §4).

    Counts the quantization cells at their bits (excluded float layers are not counted, as in a
    search's policy totals); a model without cells counts every ``Conv2d``/``Linear`` at 32/32.

    Args:
        model: the (inner) model; run in eval mode with float forwards (nothing changes).
        run: one pass over a few samples, e.g. :func:`~ssps_nni.calibration_data.forward_fn`.
        num_samples: samples processed by ``run``.

    Returns:
        ``{'bitops': {'value', 'fp32', 'text', 'fp32_text', 'unit'}, 'size': {...}}``.
    """
    cells = {n: m for n, m in model.named_modules() if isinstance(m, QuantCellMixin)}
    if cells:
        layers, bits = cells, {n: c.bits() for n, c in cells.items()}
    else:
        layers = {n: m for n, m in model.named_modules() if n and type(m) in CELL_TYPES}
        bits = {n: (FLOAT_BITS, FLOAT_BITS) for n in layers}
    with preserved_rng(), _float_forward(model, cells.values()):
        profiles = profile_layers(model, layers, run, num_samples)
    for cell in cells.values():
        cell.clear_calibration()  # statistics of this pass are not a calibration
    out = {}
    for cost in (BitOpsCost(), SizeCost()):
        value = sum(cost.layer_cost(profiles[n], *bits[n]) for n in layers)
        fp32 = sum(cost.layer_cost(profiles[n], FLOAT_BITS, FLOAT_BITS) for n in layers)
        out[cost.name] = {'value': value, 'fp32': fp32, 'text': cost.format(value),
                          'fp32_text': cost.format(fp32), 'unit': cost.unit}
    return out


def build_model_from_cfg(cfg) -> torch.nn.Module:
    """Build ``cfg.model`` through the registries of ``cfg.default_scope``, as the Runner does
    (the top-level ``data_preprocessor`` is merged in); weights are not initialised."""
    import copy

    from mmengine.registry import MODELS, DefaultScope

    model_cfg = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor', None) is not None:
        model_cfg.setdefault('data_preprocessor', copy.deepcopy(cfg.data_preprocessor))
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', None)):
        return MODELS.build(model_cfg)
