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

__all__ = ["SCORE_KINDS", "CALIBRATIONS", "calibration_factors", "calibrated", "scores_of_kind", "calibrate_search"]

#: ``SearchConfig.score_calibration``: ``'none'`` (the running scores as they are), ``'measured'``
#: or ``'adapted'`` (scaled per operand by :func:`calibrate_search` before the first step).
from .search_config import CALIBRATIONS  # noqa: E402  (SearchConfig.score_calibration's values; defined there)

#: What the sensitivity method can minimise: ``fisher`` (the squared score, §10), ``measured``
#: (the measured loss increase), ``calibrated`` (the squared score times the factors below) or
#: ``adapted`` (the squared score times the factors of :func:`ssps_nni.adapted.adapted_factors`).
SCORE_KINDS = ("fisher", "measured", "calibrated", "adapted")


def calibration_factors(predicted: dict, measured: dict, candidates: dict, per_bit: bool = False) -> dict[str, torch.Tensor]:
    """Per operand, ``sum measured / sum predicted`` over the searched layers and bit-widths.

    Args:
        predicted: ``{slot: (L, n)}`` squared scores (loss squared). measured: ``{slot: (L, n)}``
            measured loss increases (loss units). candidates: ``{slot: bits}``.
        per_bit: one factor per operand *and candidate* (``sum_l measured / sum_l predicted``)
            instead of one per operand. The measured increase of 5 to 8 bits is mostly noise
            (about +-0.005 on 512 images, :func:`ssps_nni.proxy.measured_increase`), so the
            default pools the bit-widths, where 2 and 3 bits weigh most.

    Returns:
        ``{slot: (n,)}`` float64 factors (loss per loss squared; the same value in every entry
        unless ``per_bit``). With ``per_bit``, a bit-width whose measured sum is not positive
        (noise around zero, for example 8-bit activations) gets 0: quantizing it costs nothing
        measurable; a bit-width scored 0 (32 bits) gets the operand's pooled factor.

    Raises:
        ValueError: an operand whose scores or measurements are all zero or negative (nothing to fit).
    """
    out = {}
    for slot in SLOTS:
        pred = predicted[slot].double().clamp_min(0).sum(0)
        meas = measured[slot].double().sum(0)
        usable = torch.tensor([b < FLOAT_BITS for b in candidates[slot]]) & (pred > 0)
        pooled_pred = float(pred[usable].sum())
        pooled_meas = max(float(meas[usable].sum()), 0.0)
        if pooled_pred <= 0 or pooled_meas <= 0:
            raise ValueError(f"cannot calibrate the {slot} scores: predicted sum {pooled_pred:.3g}, "
                             f"measured sum {pooled_meas:.3g} (both must be positive)")
        factors = torch.full_like(pred, pooled_meas / pooled_pred)
        if per_bit:
            factors[usable] = meas[usable].clamp_min(0) / pred[usable]
        out[slot] = factors
    return out


def calibrated(predicted: dict, factors: dict) -> dict[str, torch.Tensor]:
    """``{slot: predicted * factors}`` (factors broadcast over layers), float64."""
    return {s: predicted[s].double() * factors[s].double().to(predicted[s].device) for s in SLOTS}


def scores_of_kind(kind: str, fisher: dict, measured: dict | None, candidates: dict,
                   adapted: dict | None = None) -> dict[str, torch.Tensor]:
    """The sensitivity method's scores of ``kind`` (:data:`SCORE_KINDS`).

    Args:
        adapted: ``{'w': float, 'a': float}`` of :func:`ssps_nni.adapted.adapted_increase` (kind ``adapted``).

    Raises:
        ValueError: unknown kind, or ``measured`` / ``adapted`` missing for a kind that needs it.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown scores {kind!r}; accepted: {', '.join(SCORE_KINDS)}")
    if kind == "fisher":
        return {s: fisher[s].double() for s in SLOTS}
    if kind == "adapted":
        from .adapted import adapted_factors

        if adapted is None:
            raise ValueError("scores 'adapted' need the loss increase after adaptation")
        return calibrated(fisher, adapted_factors(fisher, adapted, candidates))
    if measured is None:
        raise ValueError(f"scores {kind!r} need the measured loss increase")
    if kind == "measured":
        return {s: measured[s].double() for s in SLOTS}
    return calibrated(fisher, calibration_factors(fisher, measured, candidates))


def calibrate_search(search, loss_fn, score_batches: list, measure_batches: list, mode: str = "measured",
                     train_batches: list | None = None, steps: int = 100) -> dict:
    """Fit the per-operand factors on the float model and scale the search's running scores (§10.2).

    Call after :meth:`~ssps_nni.search.SSPSSearch.prepare` and before the first step. The squared
    scores of ``score_batches`` and, for ``mode='measured'``, the loss increase measured on
    ``measure_batches`` (one forward per layer, operand, candidate and batch) give
    :func:`calibration_factors`; for ``mode='adapted'``, the loss increase on ``measure_batches``
    after ``steps`` QAT steps on ``train_batches`` per operand
    (:func:`ssps_nni.adapted.adapted_increase`) gives :func:`ssps_nni.adapted.adapted_factors`.
    The running estimate ``D`` of every later step is multiplied by them
    (:meth:`~ssps_nni.scores.ScoreAverage.set_scale`), so the search's step cost does not change.
    Nothing else of the search or the model changes.

    Returns:
        ``{'factors': {slot: [...]}, 'seconds': s, 'forwards': n, 'backwards': m}``.

    Raises:
        ValueError: an unknown mode, or ``'adapted'`` without ``train_batches``.
    """
    import time

    from .sensitivity import first_order_scores

    if mode not in CALIBRATIONS[1:]:
        raise ValueError(f"unknown calibration mode {mode!r}; accepted: {', '.join(CALIBRATIONS[1:])}")
    start = time.perf_counter()
    first = first_order_scores(search, loss_fn, score_batches, len(score_batches))
    if mode == "measured":
        from .proxy import measured_increase

        truth = measured_increase(search, loss_fn, measure_batches, "float")
        factors = calibration_factors(first["squared"], truth, search.space.candidates)
        forwards, backwards = truth["forwards"] + len(score_batches), len(score_batches)
    else:
        from .adapted import adapted_factors, adapted_increase

        if not train_batches:
            raise ValueError("calibration 'adapted' needs training batches to adapt on")
        adapted = adapted_increase(search, loss_fn, train_batches, measure_batches, steps=steps)
        factors = adapted_factors(first["squared"], adapted, search.space.candidates)
        forwards = len(score_batches) + 3 * len(measure_batches) + 2 * steps
        backwards = len(score_batches) + 2 * steps
    search.scores.set_scale(factors)
    return {"factors": {s: [float(v) for v in f] for s, f in factors.items()},
            "seconds": time.perf_counter() - start, "forwards": forwards, "backwards": backwards}
