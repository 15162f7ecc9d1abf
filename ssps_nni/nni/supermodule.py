"""The supernet module that replaces a mixed-precision op during a one-shot search.

:class:`QuantSuperNetModule` is NNI's ``BaseSuperNetModule`` around one core search cell
(:class:`~ssps_nni.cell.QuantConv2d` / :class:`~ssps_nni.cell.QuantLinear` holding every
candidate). How the path is picked is not decided here (docs/algorithm.md §3, like NNI's
``MixedOperationSamplingPolicy``):

- under the SSPS strategy the cell is attached to the core
  :class:`~ssps_nni.sampler.PathSampler` and draws its own single path in ``forward``;
  :meth:`resample` does nothing;
- under any other one-shot strategy (``RandomOneShot``) :meth:`resample` draws the bits at
  random (or takes them from the memo) and fixes the cell to them.

A decided slot (one candidate left in the cell's mask) is exported as decided, and its
probabilities are one-hot.
"""
from __future__ import annotations

from typing import Any

import torch
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import nn

from ..cell import CELL_TYPES, QuantCellMixin
from ..sampler import SLOTS
from .ops import FIXED_OPS, MIXED_PRECISION_OPS, copy_weights, float_type, layer_kwargs, slot_choice


class QuantSuperNetModule(BaseSuperNetModule):
    """One searched layer of the supernet: a core cell plus its two NNI choices.

    Args:
        cell: the core search cell (every candidate); it owns ``weight``, ``bias`` and step sizes.
        choices: ``{'w': Categorical, 'a': Categorical}`` of the op it replaces; the cell's
            candidates are their values, in the same order.

    Input and output: those of the wrapped ``Conv2d`` / ``Linear``.
    """

    def __init__(self, cell: QuantCellMixin, choices: dict):
        super().__init__()
        self.cell = cell
        self.choices = {slot: self.add_mutable(choices[slot]) for slot in SLOTS}
        self.labels = {slot: str(choices[slot].label) for slot in SLOTS}

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict, mutate_kwargs: dict) -> "QuantSuperNetModule | None":
        """Mutation hook: replace a ``MixedPrecisionConv2d`` / ``MixedPrecisionLinear``, else None."""
        if not isinstance(module, MIXED_PRECISION_OPS):
            return None
        choices = {slot: slot_choice(module, slot) for slot in SLOTS}
        cell = CELL_TYPES[float_type(module)].from_float(
            module, [int(v) for v in choices["w"].values], [int(v) for v in choices["a"].values])
        return cls(cell, choices)

    # -- state ---------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self.cell.attachment is not None

    def _value(self, slot: str, index: int) -> Any:
        return self.choices[slot].values[index]

    def current(self, slot: str) -> Any:
        """The decided value of ``slot``, or (open) the most probable one (SSPS) or None."""
        k = self.cell.fixed_index(slot)
        if k >= 0:
            return self._value(slot, k)
        if not self.attached:
            return None
        sampler, layer = self.cell.attachment
        return self._value(slot, sampler.argmax(slot, layer, self.cell.mask(slot)))

    # -- NNI supernet protocol -------------------------------------------------------------------

    def resample(self, memo: dict) -> dict:
        """SSPS: nothing (the cell samples in forward). Otherwise fix random bits (memo wins)."""
        if self.attached:
            return {}
        out = {}
        for slot in SLOTS:
            label, choice = self.labels[slot], self.choices[slot]
            value = memo[label] if label in memo else choice.random()
            self.cell.fix(slot, list(choice.values).index(value))
            out[label] = value
        return out

    def export(self, memo: dict) -> dict:
        """``{label: bits}`` for labels not in ``memo``: decided, else most probable, else sampled."""
        out = {}
        for slot in SLOTS:
            label = self.labels[slot]
            if label in memo:
                continue
            value = self.current(slot)
            out[label] = self.choices[slot].random() if value is None else value
        return out

    def export_probs(self, memo: dict) -> dict:
        """``{label: {bits: probability}}``; probabilities are 0-dim tensors with gradient (SSPS)."""
        out = {}
        for slot in SLOTS:
            label = self.labels[slot]
            if label in memo:
                continue
            out[label] = dict(zip(self.choices[slot].values, self._probs(slot)))
        return out

    def _probs(self, slot: str) -> list:
        mask = self.cell.mask(slot)
        if self.attached:
            sampler, layer = self.cell.attachment
            return list(sampler.probs(slot, mask[None].expand(sampler.logits[slot].shape[0], -1))[layer])
        return list(mask.double() / mask.sum())

    def arch_parameters(self) -> list[nn.Parameter]:
        """The sampler's logits this cell reads (shared by all cells), or none."""
        return self.cell.attachment[0].parameters() if self.attached else []

    def freeze(self, sample: dict) -> nn.Module:
        """The fixed op at the sampled bits, with this cell's weights and step sizes."""
        w, a = (sample[self.labels[slot]] for slot in SLOTS)
        fixed = FIXED_OPS[float_type(self.cell)](**layer_kwargs(self.cell), w_bits=int(w), a_bits=int(a))
        idx = [list(self.choices[slot].values).index(v) for slot, v in zip(SLOTS, (w, a))]
        copy_weights(self.cell, fixed, *idx)
        fixed.train(self.training)
        return fixed

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.cell(*args, **kwargs)
