"""Turn a plain model into an NNI ``ModelSpace`` of mixed-precision ops (docs/algorithm.md §1).

:func:`quantization_space` applies the core's layer selection
(:func:`ssps_nni.convert.select_layers`: include / exclude / pinned, with its precedence rule)
and swaps, inside the space's ``__init__`` (where NNI allows mutables to be created):

- searched layers -> :class:`~ssps_nni.nni.ops.MixedPrecisionConv2d` /
  :class:`~ssps_nni.nni.ops.MixedPrecisionLinear` with ``nni.choice`` bit-widths labelled
  ``'<layer>.w_bits'`` / ``'<layer>.a_bits'`` (``<layer>`` is the path in the plain model);
- pinned layers -> :class:`~ssps_nni.nni.ops.FixedQuantConv2d` / ``FixedQuantLinear``;
- excluded layers stay float.

The plain model lives at ``space.model``, so parameter names gain the prefix ``model.``.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from nni.nas.nn.pytorch import ModelSpace
from torch import nn

from ..convert import DEFAULT_CANDIDATES, DEFAULT_PINNED_BITS, check_candidates, select_layers
from .ops import FIXED_OPS, MIXED_OPS, bits_choices, copy_weights, float_type, layer_kwargs
from .supermodule import QuantSuperNetModule


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


class QuantizationSpace(ModelSpace):
    """An NNI model space over the bit-widths of ``model``'s Conv2d/Linear layers.

    Args: see :func:`quantization_space`. The model is converted in place.

    Attributes:
        model: the plain model, its layers swapped for quantized ops.
        searched: searched layer names (paths in ``model``). pinned: ``{name: (w_bits, a_bits)}``.
        candidates: ``{'w': (...), 'a': (...)}``.
    """

    def __init__(self, model: nn.Module, candidates=DEFAULT_CANDIDATES, a_candidates=None,
                 include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                 pinned: str | Mapping | None = "default", pinned_bits=DEFAULT_PINNED_BITS):
        super().__init__()
        w_c = check_candidates(candidates, "weight")
        a_c = check_candidates(w_c if a_candidates is None else a_candidates, "activation")
        searched, pins = select_layers(model, include, exclude, pinned, pinned_bits)
        for name, layer in list(model.named_modules()):
            if name in pins or name in searched:
                kind = float_type(layer)
                if name in pins:
                    w, a = pins[name]
                    op = FIXED_OPS[kind](**layer_kwargs(layer), w_bits=w, a_bits=a)
                else:
                    op = MIXED_OPS[kind](**layer_kwargs(layer), **bits_choices(name, w_c, a_c))
                copy_weights(layer, op)
                op.train(layer.training)
                _replace(model, name, op)
        self.model = model
        self.searched = list(searched)
        self.pinned = dict(pins)
        self.candidates = {"w": w_c, "a": a_c}

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def extra_oneshot_hooks(self, strategy) -> list:
        """Mutation hooks for NNI's one-shot strategies other than SSPS (e.g. ``RandomOneShot``).

        They replace each mixed-precision op with a supernet module that samples its bits
        (:class:`~ssps_nni.nni.supermodule.QuantSuperNetModule`), before NNI's own default hooks
        could mistake the op for a plain ``Conv2d`` with mutable arguments. A strategy that
        declares that hook among its own (``default_mutation_hooks``, as SSPS does) gets no
        second copy.
        """
        own = strategy.default_mutation_hooks() if hasattr(strategy, "default_mutation_hooks") else []
        return [] if QuantSuperNetModule.mutate in own else [QuantSuperNetModule.mutate]


def quantization_space(model: nn.Module, candidates=DEFAULT_CANDIDATES, a_candidates=None, *,
                       include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                       pinned: str | Mapping | None = "default",
                       pinned_bits=DEFAULT_PINNED_BITS) -> QuantizationSpace:
    """Build the NNI model space of ``model``'s bit-widths (the model is converted in place).

    Args:
        model: any ``nn.Module`` with ``nn.Conv2d`` / ``nn.Linear`` layers (exact types).
        candidates, a_candidates: weight / activation bit-widths (activations default to the
            weight candidates); default ``(2, 3, 4, 5, 6, 8)``.
        include, exclude: shell globs on layer paths; pinned: ``'default'`` (first conv and last
            linear at ``pinned_bits``), ``'none'``, or ``{layer: 'W8A8'}``. See ``ssps_nni.convert``.

    Returns:
        A :class:`QuantizationSpace`; its mutables are ``'<layer>.w_bits'``, ``'<layer>.a_bits'``.

    Raises:
        CandidateError: bad candidates or pinned bits. NoQuantizableLayersError: nothing to search.
    """
    return QuantizationSpace(model, candidates, a_candidates, include=include, exclude=exclude,
                             pinned=pinned, pinned_bits=pinned_bits)
