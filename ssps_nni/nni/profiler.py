"""A cost profiler NNI's own tools accept: the space's cost as an NNI expression (docs/algorithm.md §4).

:class:`QuantizationProfiler` is an ``nni.nas.profiler.ExpressionProfiler``. It profiles each
quantized op once with forward hooks on a dry run of the space (the core's
:func:`~ssps_nni.cost.profile_layers`: MACs, parameters, signature), and writes the cost as an
expression over the ops' ``nni.choice`` bit-widths:

- ``bitops``: ``sum_l macs_l * w_l * a_l``
- ``size``: ``sum_l weight_params_l * w_l + bias_params_l * 32``
- any other registered cost (``bitfusion``, ``lut``): a ``switch_case`` table per layer built
  from the core cost model.

Pinned ops count as constants; every term is a float (NNI pitfall: ``weighted_sum`` refuses a
mix of int and float). So NNI's ``RangeProfilerFilter`` (e.g. ``RandomOneShot(filter=...)``),
``SampleProfilerPenalty`` and ``ExpectationProfilerPenalty`` work on a quantization space.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from nni.mutable import MutableExpression
from nni.nas.profiler import ExpressionProfiler
from torch import nn

from ..cell import QuantCellMixin
from ..cost import CostModel, LayerProfile, build_cost_model, profile_layers
from ..sampler import SLOTS
from .ops import MIXED_PRECISION_OPS, slot_choice


def _quantized_ops(space: nn.Module) -> tuple[dict, dict]:
    """``({name: mixed op}, {name: fixed cell})`` of the space, outermost cells only."""
    mixed, fixed = {}, {}
    for name, module in space.named_modules():
        if isinstance(module, MIXED_PRECISION_OPS):
            mixed[name] = module
        elif isinstance(module, QuantCellMixin) and not any(name.startswith(f"{n}.") for n in {**mixed, **fixed}):
            fixed[name] = module
    return mixed, fixed


def layer_expression(model: CostModel, profile: LayerProfile, w, a) -> Any:
    """Cost of one layer as an expression over the choices ``w`` and ``a`` (floats throughout)."""
    if model.name == "bitops":
        return float(profile.macs) * w * a
    if model.name == "size":
        return float(profile.weight_params) * w + float(profile.bias_params * 32)
    table = {bw: MutableExpression.switch_case(a, {ba: float(model.layer_cost(profile, bw, ba)) for ba in a.values})
             for bw in w.values}
    return MutableExpression.switch_case(w, table)


class QuantizationProfiler(ExpressionProfiler):
    """The cost of a quantization space (before or instead of an SSPS search) as an NNI expression.

    Args:
        model_space: a space with :class:`~ssps_nni.nni.ops.MixedPrecisionConv2d` /
            ``MixedPrecisionLinear`` ops (e.g. from :func:`~ssps_nni.nni.quantization_space`).
        example_input: a tensor (or tuple of positional arguments) for one dry-run forward.
        cost: a registered cost name (``bitops``, ``size``, ``bitfusion``, ``lut``).
        cost_options: keyword arguments of the cost model (``{'path': 'lut.json'}`` for ``lut``).
        num_samples: samples in ``example_input``; default: its first dimension.

    Attributes:
        expression: the cost, in the cost model's unit (BitOPs, bits, ...), per input sample.
        profiles: ``{layer name in the space: LayerProfile}``. labels: the mutables' labels.

    Raises:
        TypeError: the space has no mixed-precision op.
    """

    def __init__(self, model_space: nn.Module, example_input, cost: str = "bitops",
                 cost_options: dict | None = None, num_samples: int | None = None):
        super().__init__(model_space)
        mixed, fixed = _quantized_ops(model_space)
        if not mixed:
            raise TypeError(
                f"{type(model_space).__name__} has no MixedPrecisionConv2d/MixedPrecisionLinear op to profile; "
                "build the space with ssps_nni.nni.quantization_space(model)"
            )
        self.cost_model = build_cost_model(cost, **(cost_options or {}))
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        n = num_samples or int(args[0].shape[0])
        self.profiles = _profile(model_space, {**mixed, **fixed}, lambda: model_space(*args), n)
        terms, self.labels = [], []
        for name, op in mixed.items():
            w, a = (slot_choice(op, slot) for slot in SLOTS)
            self.labels += [str(w.label), str(a.label)]
            terms.append(layer_expression(self.cost_model, self.profiles[name], w, a))
        constant = sum(self.cost_model.layer_cost(self.profiles[name], cell.w_candidates[0], cell.a_candidates[0])
                       for name, cell in fixed.items())
        self.expression = sum(terms[1:], terms[0]) + float(constant)

    def profile(self, sample: dict) -> float:
        """The cost of the model that ``sample`` (``{label: bits}``) picks."""
        return float(super().profile(sample))


def _profile(space: nn.Module, layers: dict, forward_fn: Callable[[], object], num_samples: int) -> dict:
    """:func:`profile_layers` with the ops in calibration mode (no quantizer runs, no state changes)."""
    was_training = space.training
    space.eval()
    for layer in layers.values():
        layer.calibrating = True
    try:
        with torch.no_grad():
            return profile_layers(space, layers, forward_fn, num_samples)
    finally:
        for layer in layers.values():
            layer.calibrating = False
            layer.clear_calibration()
        space.train(was_training)
