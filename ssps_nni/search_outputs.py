"""What a search driver keeps in its run's work dir, and what it tells after a divergence.

The mmengine ``SSPSHook``'s helpers that need no mmengine (so they live in the core: importing
them loads no OpenMMLab package). Plain functions of their inputs (a work dir, a policy, an
optimizer wrapper), no hook state:
the policy files (docs/algorithm.md §8: ``policy.json`` / ``policy.png`` when final, the
snapshot ``policy.partial.json`` / ``.png`` before), an earlier search's result moved aside, and
the hint of :class:`~ssps_nni.errors.SearchDivergedError` (the learning rate, the last checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .plots import plot_policy
from .policy import PARTIAL_POLICY_JSON, PARTIAL_POLICY_PNG, POLICY_JSON, POLICY_PNG, Policy

#: Where an earlier search's ``policy.json`` goes when a new search starts in its work dir.
EARLIER_POLICY_JSON, EARLIER_POLICY_PNG = 'policy.earlier.json', 'policy.earlier.png'


def task_loss(losses: dict) -> torch.Tensor:
    """The sum ``parse_losses`` will form from the task's entries of a loss dict (for the ``mul`` form).

    Raises:
        ValueError: no entry whose key contains ``'loss'``.
    """
    terms = []
    for key, value in losses.items():
        if 'loss' not in key:
            continue
        if isinstance(value, torch.Tensor):
            terms.append(value.mean())
        elif isinstance(value, (list, tuple)):
            terms.extend(v.mean() for v in value if isinstance(v, torch.Tensor))
    if not terms:
        raise ValueError(f'SSPSHook found no loss entry in the loss dict (keys: {list(losses)})')
    return sum(terms)


def move_earlier_policy(work_dir) -> list[str]:
    """Move a ``policy.json`` / ``policy.png`` already in ``work_dir`` (an earlier search's) aside.

    Otherwise a search interrupted in a reused work dir would leave a final-looking policy that
    is not its own.

    Returns:
        ``['policy.json -> policy.earlier.json', ...]``: what was moved.
    """
    work_dir = Path(work_dir)
    moved = []
    for name, earlier in ((POLICY_JSON, EARLIER_POLICY_JSON), (POLICY_PNG, EARLIER_POLICY_PNG)):
        if (work_dir / name).is_file():
            (work_dir / name).replace(work_dir / earlier)
            moved.append(f'{name} -> {earlier}')
    return moved


def write_policy_files(policy: Policy, history: list, work_dir, final: bool, plot: bool) -> None:
    """The policy (atomic write) and, when ``plot`` or ``final``, its figure in ``work_dir``.

    Args:
        history: the decider's history (the figure's curves).
        final: ``policy.json`` / ``policy.png``, and the partial snapshot is removed; else the
            snapshot ``policy.partial.json`` / ``policy.partial.png`` (``"final": false``).
    """
    work_dir = Path(work_dir)
    json_name, png_name = (POLICY_JSON, POLICY_PNG) if final else (PARTIAL_POLICY_JSON, PARTIAL_POLICY_PNG)
    policy.save(work_dir / json_name)
    if final or plot:
        plot_policy(policy, history, work_dir / png_name)
    if final:
        for name in (PARTIAL_POLICY_JSON, PARTIAL_POLICY_PNG):
            (work_dir / name).unlink(missing_ok=True)


def divergence_hint(optim_wrapper, work_dir) -> str:
    """What to do after a divergence: the learning rate now, and the last good checkpoint.

    Args:
        optim_wrapper: the task's optimizer wrapper, or None. work_dir: the run's, or None.
    """
    lr = ''
    if optim_wrapper is not None:
        lr = f' (optim_wrapper.optimizer.lr is {optim_wrapper.param_groups[0]["lr"]:g} at this step)'
    checkpoint = 'no checkpoint was saved before this step'
    if work_dir is not None:
        last = Path(work_dir) / 'last_checkpoint'
        if last.is_file() and last.read_text().strip():
            checkpoint = f'the last checkpoint, saved before this step, is {last.read_text().strip()}'
    return (f'Lower the learning rate{lr}, or check the cost LUT and the mixed-precision (fp16) settings, '
            f'then start the search again; {checkpoint}.')
