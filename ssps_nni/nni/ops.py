"""The mutable quantization op: ``nn.Conv2d`` / ``nn.Linear`` whose bit-widths are ``nni.choice``.

Two layers of classes:

- :class:`FixedQuantConv2d` / :class:`FixedQuantLinear`: the core cells
  (:class:`~ssps_nni.cell.QuantConv2d`, :class:`~ssps_nni.cell.QuantLinear`) with a single
  candidate per slot and a constructor that takes ``w_bits`` / ``a_bits`` as integers. This is
  what a frozen model contains.
- :class:`MixedPrecisionConv2d` / :class:`MixedPrecisionLinear`: NNI ``ParametrizedModule``\\ s,
  ``wraps=`` the fixed op, so ``w_bits`` / ``a_bits`` may be ``nni.choice`` mutables. Inside
  ``__init__`` the bits are the dry-run values (the first candidates); NNI's ``freeze`` and
  ``model_context`` build the fixed op, so any NNI strategy can sample or fix the bits.

Labels are ``'<layer>.w_bits'`` and ``'<layer>.a_bits'`` (:func:`bits_choices`), the same as
:meth:`ssps_nni.convert.SearchSpace.label`.
"""
from __future__ import annotations

from typing import Sequence

import nni
import torch
from nni.nas.nn.pytorch import ParametrizedModule
from torch import nn

from ..cell import QuantCellMixin, QuantConv2d, QuantLinear

SLOT_ARGS = {"w": "w_bits", "a": "a_bits"}


class FixedQuantConv2d(QuantConv2d):
    """A quantized ``nn.Conv2d`` at fixed ``w_bits`` / ``a_bits`` (a core cell with one candidate).

    Takes the arguments of ``nn.Conv2d`` plus ``w_bits`` and ``a_bits`` (integers; 32 = float).
    Input ``(N, C_in, H, W)``, output ``(N, C_out, H', W')``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", w_bits: int = 8, a_bits: int = 8):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode)
        self.init_cell((w_bits,), (a_bits,))


class FixedQuantLinear(QuantLinear):
    """A quantized ``nn.Linear`` at fixed ``w_bits`` / ``a_bits``. Input ``(N, *, in)``, output ``(N, *, out)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, w_bits: int = 8, a_bits: int = 8):
        super().__init__(in_features, out_features, bias=bias)
        self.init_cell((w_bits,), (a_bits,))


class MixedPrecisionConv2d(ParametrizedModule, FixedQuantConv2d, wraps=FixedQuantConv2d):
    """``FixedQuantConv2d`` whose ``w_bits`` / ``a_bits`` may be ``nni.choice`` mutables.

    >>> with nni.mutable.frozen_context():
    ...     op = MixedPrecisionConv2d(3, 8, 3, w_bits=nni.choice('c.w_bits', [2, 4]),
    ...                               a_bits=nni.choice('c.a_bits', [4, 8]))
    >>> type(op.freeze({'c.w_bits': 4, 'c.a_bits': 8})).__name__
    'FixedQuantConv2d'
    """

    def freeze(self, sample: dict) -> FixedQuantConv2d:
        """The fixed op at the sampled bits, keeping this op's weights (NNI's freeze drops them)."""
        frozen = super().freeze(sample)
        copy_weights(self, frozen)
        return frozen


class MixedPrecisionLinear(ParametrizedModule, FixedQuantLinear, wraps=FixedQuantLinear):
    """``FixedQuantLinear`` whose ``w_bits`` / ``a_bits`` may be ``nni.choice`` mutables."""

    def freeze(self, sample: dict) -> FixedQuantLinear:
        """The fixed op at the sampled bits, keeping this op's weights."""
        frozen = super().freeze(sample)
        copy_weights(self, frozen)
        return frozen


MIXED_PRECISION_OPS = (MixedPrecisionConv2d, MixedPrecisionLinear)
FIXED_OPS = {nn.Conv2d: FixedQuantConv2d, nn.Linear: FixedQuantLinear}
MIXED_OPS = {nn.Conv2d: MixedPrecisionConv2d, nn.Linear: MixedPrecisionLinear}


def bits_choices(name: str, w_candidates: Sequence[int], a_candidates: Sequence[int]) -> dict:
    """``{'w_bits': nni.choice('<name>.w_bits', ...), 'a_bits': nni.choice('<name>.a_bits', ...)}``."""
    return {arg: nni.choice(f"{name}.{arg}", list(cands))
            for arg, cands in (("w_bits", w_candidates), ("a_bits", a_candidates))}


def layer_kwargs(layer: nn.Module) -> dict:
    """The constructor arguments of a plain ``nn.Conv2d`` / ``nn.Linear`` (or of a cell)."""
    if isinstance(layer, nn.Conv2d):
        return dict(in_channels=layer.in_channels, out_channels=layer.out_channels,
                    kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None,
                    padding_mode=layer.padding_mode)
    return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)


def float_type(layer: nn.Module) -> type:
    """``nn.Conv2d`` or ``nn.Linear``: the float layer type behind a cell or op."""
    return nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear


def slot_choice(op: ParametrizedModule, slot: str):
    """The ``nni.choice`` given to ``op`` for ``slot`` (``'w'`` / ``'a'``); TypeError if it is not one."""
    value = op.args.get(SLOT_ARGS[slot])
    if not isinstance(value, nni.mutable.Categorical):
        raise TypeError(
            f"{type(op).__name__} needs {SLOT_ARGS[slot]}=nni.choice(label, bit-widths) to be searched, "
            f"got {value!r}; use FixedQuantConv2d/FixedQuantLinear for a layer at fixed bits"
        )
    return value


@torch.no_grad()
def copy_weights(src: nn.Module, dst: QuantCellMixin, w_index: int | None = None, a_index: int | None = None) -> None:
    """Copy ``weight``/``bias`` and, if set, the step sizes of one candidate from ``src`` into ``dst``.

    Args:
        src: a float layer or a cell. dst: a cell with a single candidate per slot.
        w_index, a_index: candidate of ``src`` whose step sizes to copy (``src`` a cell with
            initialised step sizes); None leaves ``dst`` to initialise its own from data.
    """
    dst.to(src.weight.device)
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)
    if w_index is None or a_index is None or not int(getattr(src, "initialized", 0)):
        return
    dst.w_scale[0].copy_(src.w_scale[w_index])
    dst.a_scale[0].copy_(src.a_scale[a_index])
    dst.a_signed.copy_(src.a_signed)
    dst.initialized.fill_(1)


def fixed_op(layer: nn.Module, w_bits: int, a_bits: int) -> FixedQuantConv2d | FixedQuantLinear:
    """A fixed-bit op of ``layer`` (``nn.Conv2d`` / ``nn.Linear``, or a cell) with its weights.

    Returns a :class:`FixedQuantConv2d` or :class:`FixedQuantLinear` with ``layer``'s
    constructor arguments, at ``w_bits`` / ``a_bits``, holding a copy of ``layer``'s
    ``weight`` and ``bias`` on ``layer``'s device; its step sizes initialise from the first
    batch it sees (as a fresh cell's do). Each call builds a new op with its own weights, e.g.
    one candidate of an NNI ``LayerChoice`` over bit-widths.
    """
    op = FIXED_OPS[float_type(layer)](**layer_kwargs(layer), w_bits=int(w_bits), a_bits=int(a_bits))
    copy_weights(layer, op)
    return op
