"""Checkpoints of a fixed mixed-precision model: a cheap file check and loading (docs/algorithm.md §8).

- :func:`checkpoint_problem`: why a path cannot be a ``torch.save`` checkpoint (the tools
  refuse a ``load_from`` that is not one before building a run on it).
- :func:`load_fixed_state`: a checkpoint's ``state_dict`` (of the fixed model, of a float
  model or of a search supernet) into a fixed model (every cell decided, e.g. by
  :func:`ssps_nni.apply_policy.apply_policy`); it names the cells left without step sizes, which
  :func:`ssps_nni.calibrate.calibrate_cells` then initialises from data.
- :func:`take_candidate_rows`: in a search supernet's ``state_dict``, each fixed cell's step
  sizes of its own bit-widths (the QAT that continues a search starts from them).
- :func:`quant_cells`: the quantization cells of a model, by name (used by the export, the
  calibration and the NNI config list too).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .cell import QuantCellMixin
from .errors import ExportError
from .quant import FLOAT_BITS

__all__ = ["QUANT_STATE_KEYS", "checkpoint_problem", "load_fixed_state", "quant_cells", "take_candidate_rows"]


def quant_cells(model: nn.Module) -> dict[str, QuantCellMixin]:
    """``{name: cell}`` of every quantization cell of ``model``, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantCellMixin)}


#: State of a cell that is not a parameter of the float layer.
QUANT_STATE_KEYS = ("w_scale", "a_scale", "w_mask", "a_mask", "a_signed", "initialized")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` checkpoint, or None if it can (a cheap check).

    ``torch.save`` writes a zip archive (or, in the legacy format, a pickle starting with
    protocol byte 0x80); anything else (a text file, an image, a truncated download) is refused
    before a training run is built on it.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path} is not a local file"
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as err:
        return f"{path} cannot be read ({err})"
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return None
    return f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive or a pickle)"


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def take_candidate_rows(state: dict, cells: Mapping[str, QuantCellMixin], candidates: Mapping) -> list[str]:
    """Reduce a search supernet's per-candidate step sizes in ``state`` to each fixed cell's own row (in place).

    A supernet cell keeps one step size per candidate (``w_scale`` ``(len(B_w), C_out)``,
    ``a_scale`` ``(len(B_a),)``, masks ``(n,)``; docs/algorithm.md §2); a fixed cell keeps one
    (``(1, C_out)``, ``(1,)``). For every slot of ``cells`` whose entry in ``state`` has one row
    per candidate of ``candidates`` (sorted), the row of the cell's bit-width is kept and its
    mask becomes ``[1]``. Entries that already fit, or whose row count or bits do not match the
    candidates, are left as they are.

    Args:
        state: ``{key: tensor}`` with the model's keys (``<cell name>.w_scale``, ...).
        cells: ``{name: fixed cell}`` (one candidate per slot).
        candidates: ``{'w': [...], 'a': [...]}``: the search's candidate lists (a policy's).

    Returns:
        Names of the cells for which both slots now fit (taken from a supernet row or already one row).
    """
    fits = []
    for name, cell in cells.items():
        ok = True
        for slot, key in (("w", "w_scale"), ("a", "a_scale")):
            full = f"{name}.{key}"
            value = state.get(full)
            if value is None:
                ok = False
                continue
            if value.shape[0] == 1:
                continue
            cands = sorted({int(b) for b in candidates.get(slot, ())})
            bits = cell.candidates(slot)[0]
            if value.shape[0] != len(cands) or bits not in cands:
                ok = False
                continue
            state[full] = value[cands.index(bits)].unsqueeze(0).clone()
            state[f"{name}.{slot}_mask"] = torch.ones(1, dtype=torch.uint8, device=value.device)
        if ok:
            fits.append(name)
    return fits


def load_fixed_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], policy=None) -> list[str]:
    """Load a checkpoint's ``state_dict`` into a fixed model; report cells left uncalibrated.

    Accepts the ``state_dict`` of the fixed model itself (``w_scale`` ``(1, C_out)``), of a
    float model (no quantizer state: those cells stay uncalibrated) or of a search supernet
    (``w_scale`` ``(len(B_w), C_out)``, ``a_scale`` ``(len(B_a),)``): then the row of the
    policy's bit-width is taken, its index in the sorted candidate list of ``policy``.
    A ``module.`` prefix (DataParallel) is removed.

    Args:
        model: the fixed model (:func:`ssps_nni.apply_policy.apply_policy` applied).
        state_dict: ``{key: tensor}``.
        policy: the :class:`~ssps_nni.policy.Policy`; needed for a supernet checkpoint.

    Returns:
        Names of the quantized cells the checkpoint held no step sizes for (``initialized`` 0):
        calibrate them (:func:`ssps_nni.calibrate.calibrate_cells`) before exporting.

    Raises:
        ExportError: a float parameter is missing, a key is unexpected, or a shape does not fit
            (names the keys).
    """
    state = _strip_prefix(state_dict, "module.")
    cells = quant_cells(model)
    for name, cell in cells.items():
        for slot, key in (("w", "w_scale"), ("a", "a_scale")):
            full = f"{name}.{key}"
            value = state.get(full)
            if value is None or value.shape[0] == 1:
                continue
            if policy is None:
                raise ExportError(f"{full} has {value.shape[0]} rows (a supernet checkpoint); pass the policy")
            cands = sorted(int(b) for b in policy.candidates[slot])
            if value.shape[0] != len(cands):
                raise ExportError(
                    f"{full} has {value.shape[0]} rows but the policy lists {len(cands)} {slot} candidates {cands}"
                )
            bits = cell.candidates(slot)[0]
            state[full] = value[cands.index(bits)].unsqueeze(0)
            state[f"{name}.{slot}_mask"] = torch.ones(1, dtype=torch.uint8)
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ExportError("checkpoint shapes do not fit the model of this policy: " + "; ".join(bad[:5]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ExportError(f"checkpoint has keys the model lacks: {', '.join(unexpected[:8])}"
                          f"{' ...' if len(unexpected) > 8 else ''}")
    float_missing = [k for k in missing if k.rsplit(".", 1)[-1] not in QUANT_STATE_KEYS]
    if float_missing:
        raise ExportError(f"checkpoint lacks parameters of the model: {', '.join(float_missing[:8])}"
                          f"{' ...' if len(float_missing) > 8 else ''}")
    return [name for name, cell in cells.items()
            if not int(cell.initialized) and min(cell.bits()) < FLOAT_BITS]
