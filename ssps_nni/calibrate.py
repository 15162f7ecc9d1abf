"""Step-size calibration of a fixed model's cells from data (LSQ init, docs/algorithm.md §2).

A checkpoint without step sizes (a float model's, see
:func:`ssps_nni.checkpoint.load_fixed_state`) leaves cells uncalibrated; export needs them
calibrated. :func:`calibrate_cells` runs a few batches through the model with the cells in
calibration mode and initialises their step sizes. (The mmengine driver's
``ssps_nni.calibration_data`` supplies batches from a runner's dataloader for the search.)
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .checkpoint import quant_cells
from .errors import ExportError

__all__ = ["calibrate_cells"]


@torch.no_grad()
def calibrate_cells(model: nn.Module, batches: Iterable[torch.Tensor], names: Sequence[str] | None = None) -> None:
    """Initialise the step sizes of a fixed model's cells from data (LSQ init, docs/algorithm.md §2).

    Args:
        model: a model with cells; run in eval mode here (flags restored).
        batches: iterable of input tensors, e.g. ``(N, 3, 32, 32)`` normalised images.
        names: cells to initialise (default: every cell).

    Raises:
        ExportError: ``batches`` was empty.
    """
    cells = quant_cells(model)
    chosen = [cells[n] for n in (names if names is not None else cells)]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for cell in chosen:
        cell.calibrating = True
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        for cell in chosen:
            cell.calibrating = False
        for m, mode in modes.items():
            m.training = mode
    if not seen:
        raise ExportError("calibration got no batch")
    for cell in chosen:
        cell.init_scales()
