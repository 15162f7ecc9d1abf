"""``ssps train`` stopped and resumed: what ``--resume`` may continue, the line of a stopped run.

SIGINT (Ctrl-C) and SIGTERM stop ``ssps train`` as they stop ``ssps search``
(:class:`ssps_nni.cli.stop.GracefulStop`): the current iteration finishes, a checkpoint of it is
saved (``iter_N.pth``, named by ``last_checkpoint``), one line (:func:`interrupted_message`)
names the iteration reached and how to resume, and the exit status is 130 / 143.

``--resume`` continues from the work dir's own last checkpoint (:func:`check_train_resume`),
never from the search checkpoint that ``--policy WORK_DIR`` starts a new run from.
``QuantPolicyHook`` converts the model in ``before_run``, before mmengine loads the checkpoint, so
the quantized weights, step sizes and optimizer state load into the same parameters, and the
restored ``initialized`` buffers keep it from calibrating the step sizes again. Only the
standard library is imported here (torch when a checkpoint is read).
"""
from __future__ import annotations

import signal
import zipfile
from pathlib import Path

from .common import InputError
from .resume import check_resume

#: The run, in the messages of :mod:`ssps_nni.cli.resume`.
WHAT = 'training run'


def checkpoint_kind(path) -> str:
    """``'search'`` (an SSPS search's: ``checkpoint['ssps']``), ``'qat'`` (quantizer step sizes) or ``'fp32'``.

    The tensors of a zip checkpoint are memory-mapped, not read.
    """
    import torch

    kwargs = {'mmap': True} if zipfile.is_zipfile(path) else {}
    checkpoint = torch.load(path, map_location='cpu', weights_only=False, **kwargs)
    if not isinstance(checkpoint, dict):
        return 'fp32'
    if checkpoint.get('ssps') is not None:
        return 'search'
    state = checkpoint.get('state_dict', checkpoint)
    quantized = isinstance(state, dict) and any(str(k).endswith('.w_scale') for k in state)
    return 'qat' if quantized else 'fp32'


def check_train_resume(cfg, args, warn=None) -> None:
    """``--resume``: ``cfg.load_from`` becomes a whole checkpoint of an ``ssps train`` run of this mode.

    Raises:
        InputError: no checkpoint in the work dir, or none that is whole
            (:func:`ssps_nni.cli.resume.check_resume`); a search's checkpoint (its state is not a
            retraining's); a QAT checkpoint resumed as FP32 or an FP32 one with ``--policy`` /
            ``--uniform``.
    """
    if not getattr(args, 'resume', False):
        return
    check_resume(cfg, args, warn, what=WHAT)
    path = cfg.load_from
    kind = checkpoint_kind(path)
    if kind == 'search':
        raise InputError(f'--resume: {path} is a checkpoint of an SSPS search (it holds the search state), not of '
                         'ssps train; to retrain the search\'s policy leave out --resume (--policy SEARCH_WORK_DIR '
                         'starts from that checkpoint), or give the --work-dir of an interrupted ssps train')
    quant = args.policy is not None or args.uniform is not None
    if quant and kind == 'fp32':
        raise InputError(f'--resume: {path} is an FP32 checkpoint (no quantizer step sizes): resume it without '
                         '--policy / --uniform, as the interrupted run was started')
    if not quant and kind == 'qat':
        raise InputError(f'--resume: {path} is a quantization-aware (QAT) checkpoint: give the --policy or '
                         '--uniform of the interrupted run')


def check_same_policy(cfg, args, policy) -> None:
    """``--resume`` in the work dir of a QAT run: ``policy`` (resolved) has the bits that run trained.

    The interrupted run's bits are its ``WORK_DIR/qat_policy.json`` (``QuantPolicyHook`` writes
    it); nothing is checked without one or when the checkpoint is not the work dir's.

    Raises:
        InputError: a layer's bits differ (names the first one).
    """
    from ssps_nni.mmengine.qat import QAT_POLICY_JSON
    from ssps_nni.policy import load_policy

    saved = Path(cfg.work_dir) / QAT_POLICY_JSON
    if not getattr(args, 'resume', False) or policy is None or not saved.is_file() \
            or Path(cfg.load_from).resolve().parent != Path(cfg.work_dir).resolve():
        return
    before, now = load_policy(saved).bits(), policy.bits()
    differ = sorted(n for n in set(before) | set(now) if before.get(n) != now.get(n))
    if differ:
        name = differ[0]

        def bits(b):
            return 'none' if b is None else f'W{b[0]}A{b[1]}'

        raise InputError(f'--resume: the interrupted run trained other bits ({len(differ)} layers differ, first '
                         f'{name}: {bits(before.get(name))} then, {bits(now.get(name))} now; {saved}); give the '
                         '--policy or --uniform of the interrupted run')


def interrupted_message(cfg, args, err=None) -> str:
    """The one line of a stopped ``ssps train``: the iteration reached and how to resume.

    Args:
        err: the ``KeyboardInterrupt`` (a :class:`ssps_nni.cli.stop.Interrupted` names its signal
            and the iterations done).
    """
    signum = getattr(err, 'signum', None)
    what = 'interrupted' if signum in (None, signal.SIGINT) else f'stopped by {signal.Signals(signum).name}'
    runner = getattr(args, 'runner', None)
    if cfg is None or runner is None:
        return f'{what} before training started; nothing was trained (run the command again)'
    done = getattr(err, 'iteration', None)
    done = runner.iter if done is None else done
    try:
        total = runner.max_iters
    except (AttributeError, TypeError):  # stopped before the train loop was built
        total = '?'
    where = f'iteration {done} of {total} (epoch {runner.epoch + 1})'
    if done == total:  # the train loop has ended (its epoch counter too)
        where = f'after training (iteration {done} of {total}), before the evaluation ended'
    pointer = Path(cfg.work_dir) / 'last_checkpoint'
    last = pointer.read_text().strip() if pointer.is_file() else ''
    if not last:
        return (f'{what} at {where}, before the first checkpoint: nothing to resume; run the command again '
                'without --resume')
    return (f'{what} at {where}; resume with --resume (the same command and --work-dir {cfg.work_dir}, '
            f'from {last})')
