"""Scores that price each bit-width right: measured or calibrated (docs/algorithm.md §10.1, §10.2).

The squared first-order score (§3.1) ranks layers well within one operand and bit-width, but
its scale differs between weights and activations and between bit-widths (on the FP32
ResNet-20: 2-bit activations at 0.75 x the price of 2-bit weights, relative to the measured
loss increase). Two remedies, both from the measurement of :mod:`ssps_nni.proxy`:

- ``measured``: the measured loss increase itself is the score (AIMET's phase 1);
- ``calibrated``: the squared score times a factor per operand and bit-width,
  ``c[slot, j] = sum_l M[l, j] / sum_l S[l, j]``, fitted once on the float model, so that each
  group's scores sum to its measured loss increase. The layers' ranking stays the score's; only
  the prices between operands and bit-widths change. The search applies the same factors to its
  running scores (:meth:`ssps_nni.scores.ScoreAverage.set_scale`), so its step cost does not change.
"""
from __future__ import annotations

import torch

from .quant import FLOAT_BITS
from .sampler import SLOTS

__all__ = ["SCORE_KINDS", "calibration_factors", "calibrated", "scores_of_kind"]

#: What the sensitivity method can minimise: ``fisher`` (the squared score, §10), ``measured``
#: (the measured loss increase) or ``calibrated`` (the squared score times the factors below).
SCORE_KINDS = ("fisher", "measured", "calibrated")


def calibration_factors(predicted: dict, measured: dict, candidates: dict) -> dict[str, torch.Tensor]:
    """Per operand and candidate, ``sum_l measured / sum_l predicted`` over the searched layers.

    Args:
        predicted: ``{slot: (L, n)}`` squared scores (loss squared). measured: ``{slot: (L, n)}``
            measured loss increases (loss units). candidates: ``{slot: bits}``.

    Returns:
        ``{slot: (n,)}`` float64 factors (loss per loss squared). A bit-width whose measured sum
        is not positive (noise around zero, for example 8-bit activations) gets 0: quantizing it
        costs nothing measurable. A bit-width scored 0 (32 bits) gets the operand's pooled factor.

    Raises:
        ValueError: an operand whose scores or measurements are all zero or negative (nothing to fit).
    """
    out = {}
    for slot in SLOTS:
        pred = predicted[slot].double().clamp_min(0).sum(0)
        meas = measured[slot].double().sum(0)
        usable = torch.tensor([b < FLOAT_BITS for b in candidates[slot]]) & (pred > 0)
        pooled_pred = float(pred[usable].sum())
        pooled_meas = float(meas[usable].clamp_min(0).sum())
        if pooled_pred <= 0 or pooled_meas <= 0:
            raise ValueError(f"cannot calibrate the {slot} scores: predicted sum {pooled_pred:.3g}, "
                             f"measured sum {pooled_meas:.3g} (both must be positive)")
        factors = torch.full_like(pred, pooled_meas / pooled_pred)
        factors[usable] = meas[usable].clamp_min(0) / pred[usable]
        out[slot] = factors
    return out


def calibrated(predicted: dict, factors: dict) -> dict[str, torch.Tensor]:
    """``{slot: predicted * factors}`` (factors broadcast over layers), float64."""
    return {s: predicted[s].double() * factors[s].double().to(predicted[s].device) for s in SLOTS}


def scores_of_kind(kind: str, fisher: dict, measured: dict | None, candidates: dict) -> dict[str, torch.Tensor]:
    """The sensitivity method's scores of ``kind`` (:data:`SCORE_KINDS`).

    Raises:
        ValueError: unknown kind, or ``measured`` missing for a kind that needs it.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown scores {kind!r}; accepted: {', '.join(SCORE_KINDS)}")
    if kind == "fisher":
        return {s: fisher[s].double() for s in SLOTS}
    if measured is None:
        raise ValueError(f"scores {kind!r} need the measured loss increase")
    if kind == "measured":
        return {s: measured[s].double() for s in SLOTS}
    return calibrated(fisher, calibration_factors(fisher, measured, candidates))
