"""The search's score calibration on a model's training batches (docs/algorithm.md §10.2).

``SSPSHook`` calls :func:`calibrate_scores` in ``before_train`` when its ``score_calibration``
option is ``'measured'`` or ``'adapted'``: a one-time measurement on random training batches (the
calibration loader's, with other seeds) before the first step; the running scores are then
scaled per operand (:func:`ssps_nni.score_calibration.calibrate_search`). A resumed search keeps the factors
of its checkpoint. The model follows mmengine's ``BaseModel`` protocol (``data_preprocessor``,
``parse_losses``, ``mode='loss'``); nothing here imports mmengine.
"""
from __future__ import annotations

import torch

from .calibration_data import calibration_loader, preserved_rng

__all__ = ['calibrate_scores', 'SCORE_BATCHES', 'MEASURE_BATCHES']

#: Batches of the float model's squared scores, and of the measured loss increase (each of those
#: costs one forward per searched layer, operand and candidate: 217 for ResNet-20 at 6 candidates).
SCORE_BATCHES, MEASURE_BATCHES = 16, 2
#: ``'adapted'``: QAT steps per operand (each on its own batch) and the batches the loss is read on.
ADAPT_STEPS, ADAPT_EVAL_BATCHES = 100, 4


def calibrate_scores(search, model, train_dataloader, log, score_batches: int = SCORE_BATCHES,
                     measure_batches: int = MEASURE_BATCHES, steps: int = ADAPT_STEPS) -> dict:
    """Fit and set the per-operand factors of ``search``'s running scores; log and return the result.

    Args:
        search: the prepared :class:`~ssps_nni.search.SSPSSearch`. model: its mmengine model.
        train_dataloader: the runner's train loader (its dataset and collate are used).
        log: ``log(text)``, e.g. ``runner.logger.info``.
    """
    from .score_calibration import calibrate_search

    mode = search.config.score_calibration
    if mode == 'adapted':
        measure_batches = max(measure_batches, ADAPT_EVAL_BATCHES)
    seed = search.config.seed + 1  # other samples than the step-size calibration's
    loader = calibration_loader(train_dataloader, score_batches + measure_batches, seed=seed)
    with preserved_rng(), torch.no_grad():
        batches = [model.data_preprocessor(batch, True) for batch in loader]

    def loss_fn(data):
        return model.parse_losses(model(**data, mode='loss'))[0]

    # a small training set gives fewer batches: a quarter (at least one) for the measurement
    m = min(measure_batches, max(1, len(batches) // 4))
    score, measure = (batches[:-m], batches[-m:]) if len(batches) > m else (batches, batches)
    train = None
    if mode == 'adapted':
        adapt = calibration_loader(train_dataloader, steps, seed=seed + 1)
        with preserved_rng(), torch.no_grad():
            train = [model.data_preprocessor(batch, True) for batch in adapt]
    with preserved_rng():
        try:
            info = calibrate_search(search, loss_fn, score, measure, mode=mode, train_batches=train, steps=steps)
        except ValueError as err:  # nothing measurable to calibrate against: search on the plain scores
            log(f'SSPS score calibration ({mode}) skipped: {err}')
            return {}
    factors = ', '.join(f'{slot} {values[0]:.4g}' for slot, values in info['factors'].items())
    log(f'SSPS score calibration ({mode}): factors per operand {factors} '
        f'(activations priced {info["factors"]["a"][0] / info["factors"]["w"][0]:.3f} x weights, relative to the '
        f'squared score); {info["backwards"]} backward and {info["forwards"]} forward passes in {info["seconds"]:.1f} s')
    return info
