"""Budgets and the FP32 start of the mmengine sections of ``ssps benchmark``.

The BitOPs of uniform policies (the quality budgets, the ``2.5-bit`` midpoint) and the
shipped FP32 checkpoint of ``--standard`` with the JSON beside it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..common import InputError
from .common import BUDGET_UNIFORMS, MIDPOINT, MIDPOINT_OF

def uniform_bitops(model, forward, pairs) -> tuple[dict[str, float], float]:
    """``({'WxAy': BitOPs of that uniform policy}, FP32 BitOPs)`` of ``model`` (converted in place).

    ``convert_model`` with its defaults (stem conv and classifier pinned at W8A8, as every search
    and retraining here), ``profile_layers`` during ``forward()`` (one sample, float passes:
    the cells calibrating), ``SpaceCost(BitOpsCost(), ...)``.
    """
    from ssps_nni.convert import convert_model, parse_bits_pair
    from ssps_nni.cost import BitOpsCost, SpaceCost, profile_layers

    space = convert_model(model)
    model.eval()
    for cell in space.cells.values():
        cell.calibrating = True
    try:
        profiles = profile_layers(model, space.cells, forward, 1)
    finally:
        for cell in space.cells.values():
            cell.calibrating = False
    cost = SpaceCost(BitOpsCost(), profiles, space.searched, space.pinned, space.candidates['w'],
                     space.candidates['a'])
    return {p: cost.uniform(*parse_bits_pair(p)) for p in pairs}, cost.references()['fp32']


def budget_table(config: str, budgets) -> dict:
    """Per budget label: the ``--budget`` argument, the target BitOPs and the BitOPs of its uniform
    options; ``fp32``: the FP32 BitOPs.

    Computed from ``ssps_nni.models.resnet20`` on one 1x3x32x32 input; the midpoint budget is
    ``(uniform(W2A2) + uniform(W3A3)) / 2``, given to the search as absolute ``bitops=<value>``.
    The same uniform costs are computed from the config's mmengine model (same layer MACs):
    a mismatch raises ``RuntimeError`` before any run.
    """
    import torch
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401  (registries)
    from ssps_nni.mmengine.qat import build_model_from_cfg
    from ssps_nni.models import resnet20

    pairs = sorted({p for b in budgets for p in (MIDPOINT_OF if b == MIDPOINT else (b,)) + uniform_options(b)})
    x = torch.zeros(1, 3, 32, 32)
    plain = resnet20(num_classes=10)
    costs, fp32 = uniform_bitops(plain, lambda: plain(x), pairs)
    mm = build_model_from_cfg(Config.fromfile(config))
    mm_costs, mm_fp32 = uniform_bitops(mm, lambda: mm(x, mode='tensor'), pairs)
    for key, value in [*costs.items(), ('FP32', fp32)]:
        other = mm_fp32 if key == 'FP32' else mm_costs[key]
        if abs(other - value) > 1e-9 * value:
            raise RuntimeError(f'uniform {key} BitOPs differ between ssps_nni.models.resnet20 ({value:.6g}) and '
                               f'the model of {config} ({other:.6g}): the budgets would not match the search')
    table = {'fp32': fp32}
    for b in budgets:
        target = (costs[MIDPOINT_OF[0]] + costs[MIDPOINT_OF[1]]) / 2 if b == MIDPOINT else costs[b]
        options = {p: costs[p] for p in uniform_options(b)}
        over = [p for p, v in options.items() if v > target * (1 + 1e-9)]
        if over:
            raise RuntimeError(f'uniform {over[0]} ({options[over[0]]:.6g} BitOPs) is over the {b} budget '
                               f'({target:.6g})')
        table[b] = {'arg': f'bitops={target!r}' if b == MIDPOINT else f'bitops={b}', 'target': target,
                    'uniform': options}
    return table


def uniform_options(budget: str) -> tuple[str, ...]:
    """The best uniform policies within ``budget`` (retrained; the better one is reported)."""
    return BUDGET_UNIFORMS.get(budget, (budget,))


def file_sha1(path: str) -> str:
    """SHA-1 (hex) of the file at ``path``."""
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def shipped_fp32(checkpoint: str, config: str) -> dict:
    """The FP32 start of the standard mode: ``checkpoint`` and the JSON beside it (``top1``, ``command``).

    Raises:
        InputError: the checkpoint or its JSON is missing or malformed, or the checkpoint does
            not hold the weights of the config's model.
    """
    import torch
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.mmengine.qat import build_model_from_cfg

    path = Path(checkpoint)
    meta = path.with_suffix('.json')
    if not path.is_file():
        raise InputError(f'--standard starts every run from the shipped FP32 checkpoint, and {str(path)!r} does '
                         'not exist. Train it once (ssps train on mmdet_configs/cifar10_resnet20_ssps_folder.py, '
                         'FP32 mode) and put it there with its JSON (top1, command), or give --fp32-checkpoint PTH; '
                         'this mode does not train FP32')
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f'the FP32 checkpoint {str(path)!r} needs {str(meta)!r} beside it, a JSON object with at '
                         f'least "top1" (a number) and "command" (a string); it could not be read ({err})') from None
    # {"top1": %, "command": str}; a copy of ssps train's train_result.json also works (its
    # metrics' accuracy/top1; the command is then unknown)
    top1 = info.get('top1', (info.get('metrics') or {}).get('accuracy/top1')) if isinstance(info, dict) else None
    command = info.get('command') if isinstance(info, dict) else None
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not isinstance(command, (str, type(None))):
        raise InputError(f'{str(meta)!r} must be a JSON object with "top1" (a number, top-1 %) and "command" '
                         '(a string: how the checkpoint was trained), or the train_result.json of its training')
    try:
        saved = torch.load(path, map_location='cpu')
    except Exception as err:  # noqa: BLE001  (any unpickling error: the message says which file)
        raise InputError(f'the FP32 checkpoint {str(path)!r} cannot be read: {err}') from None
    state = saved.get('state_dict', saved) if isinstance(saved, dict) else {}
    wanted = build_model_from_cfg(Config.fromfile(config)).state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise InputError(f'{str(path)!r} is not a checkpoint of the model of {config}: {len(missing)} of its '
                         f'{len(wanted)} weights are missing (e.g. {missing[0]!r}); give an mmengine checkpoint '
                         'saved by ssps train on that config')
    return {'top1': float(top1), 'command': command, 'checkpoint': str(path.resolve()),
            'sha1': file_sha1(str(path)), 'json': str(meta.resolve()), 'trained_here': False}
