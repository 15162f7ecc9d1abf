"""``ssps search --resume`` and ``ssps train --resume``: a whole checkpoint to resume from.

A kill during a checkpoint save can leave a truncated ``epoch_N.pth`` that ``last_checkpoint``
names; :func:`resume_from` detects it and takes the previous whole one (docs/algorithm.md §8).
Stopping on SIGINT/SIGTERM with a checkpoint of the current iteration: :mod:`ssps_nni.cli.stop`.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

from .common import InputError

#: The checkpoints mmengine's CheckpointHook writes in the work dir.
CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def resume_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (missing, truncated, not a checkpoint), or None.

    Beyond :func:`ssps_nni.checkpoint.checkpoint_problem` (a zip archive or a pickle), the
    archive's members are read and their CRCs checked: a file cut short or damaged while it was
    written is refused here rather than as a traceback inside mmengine's ``resume``.
    """
    from ssps_nni.checkpoint import checkpoint_problem

    problem = checkpoint_problem(path)
    if problem:
        return f'{problem}; a kill while it was saved leaves it truncated'
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            return f'{path} is a damaged checkpoint archive ({err})'
        if bad is not None:
            return f'{path} is a damaged checkpoint archive (member {bad} fails its CRC check)'
    return None


def _checkpoint_number(path: Path) -> int:
    return int(CHECKPOINT_NAME.match(path.name).group(2))


def resume_from(work_dir: str, warn=None, what: str = 'search') -> str:
    """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names if it is whole.

    Args:
        work_dir: the interrupted run's work dir.
        warn: called with a one-line warning when an earlier checkpoint is taken instead.
        what: the run, in the messages (``'search'``; ``ssps train``: ``'training run'``).

    Returns:
        The path of a checkpoint that :func:`resume_problem` accepts: the one named by
        ``WORK_DIR/last_checkpoint``, or else the newest readable ``epoch_N.pth`` / ``iter_N.pth``
        of the work dir saved before it.

    Raises:
        InputError: no ``last_checkpoint`` file; or the checkpoint it names is truncated,
            unreadable or missing and no earlier one is readable (the message names the file).
    """
    work = Path(work_dir)
    pointer = work / 'last_checkpoint'
    if not pointer.is_file():
        raise InputError(f'--resume found no checkpoint of an earlier {what} in {work_dir} '
                         '(no last_checkpoint file); give the --work-dir of the interrupted run, '
                         f'or leave out --resume to start a new {what}')
    try:
        named = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        named, problem = '', f'{pointer} cannot be read ({err})'
    else:
        problem = None if named else f'{pointer} is empty'
    latest = Path(named) if named else None
    if latest is not None and not latest.is_file() and (work / latest.name).is_file():
        latest = work / latest.name  # the work dir was moved or given by another relative path
    if latest is not None:
        problem = resume_problem(latest)
        if problem is None:
            return str(latest)
    earlier = sorted((p for p in work.iterdir() if CHECKPOINT_NAME.match(p.name)
                      and (latest is None or p.resolve() != latest.resolve())),
                     key=lambda p: (_checkpoint_number(p), p.stat().st_mtime), reverse=True)
    if latest is not None and CHECKPOINT_NAME.match(latest.name):
        kind = CHECKPOINT_NAME.match(latest.name).group(1)
        earlier = [p for p in earlier if p.name.startswith(kind + '_')
                   and _checkpoint_number(p) < _checkpoint_number(latest)]
    for candidate in earlier:
        if resume_problem(candidate) is None:
            if warn is not None:
                warn(f'the latest checkpoint cannot be resumed: {problem}; resuming from the previous one, '
                     f'{candidate} (the steps after it are trained again)')
            return str(candidate)
    raise InputError(f'--resume cannot continue the {what} in {work_dir}: {problem} (named by {pointer}), and no '
                     'earlier epoch_N.pth or iter_N.pth there is readable. Give --load-from PTH with a whole '
                     f'checkpoint of this {what}, or leave out --resume to start a new {what}')


def check_resume(cfg, args, warn=None, what: str = 'search', config=None) -> None:
    """``--resume`` has a whole checkpoint to continue from (``load_from`` or the work dir's latest).

    With ``--resume`` and no ``--load-from``, ``cfg.load_from`` is set to the checkpoint of
    :func:`resume_from` (mmengine resumes from ``load_from`` when ``resume`` is set), so a
    truncated latest checkpoint is never handed to mmengine.

    ``what``: the run, in the messages; any other than ``'search'`` (``ssps train``) skips the
    check for the SSPS search state (the caller checks its own kind of checkpoint).
    ``config``: the search's :class:`~ssps_nni.search_config.SearchConfig`; when given, the
    checkpoint's search must have been searched with its budgets and candidates
    (:func:`~ssps_nni.search_config.searched_with_other`; the checkpoint is read once).

    Raises:
        InputError: no checkpoint to resume from, or none that is whole (names the file); no search
            state in it; another budget or other candidates than the checkpoint's search.
    """
    if not args.resume:
        return
    if cfg.get('load_from') is None:
        cfg.load_from = resume_from(cfg.work_dir, warn, what)
        cfg.resume = True
    else:
        problem = resume_problem(cfg.load_from)
        if problem:
            raise InputError(f'--resume --load-from: {problem}; give a whole checkpoint of this {what}')
    if what != 'search' or getattr(args, 'method', 'ssps') != 'ssps':
        return
    state = search_state(cfg.load_from)
    if state is None:
        raise InputError(f'--resume: {cfg.load_from} holds no SSPS search state (a retraining or FP32 '
                         'checkpoint, e.g. of ssps train in the same work dir); resume from a checkpoint of '
                         'this search (--load-from PTH), or start a new search without --resume')
    from ssps_nni.search_config import searched_with_other

    other = None if config is None else searched_with_other(state, config)
    if other is not None:
        raise InputError(f'--resume: {cfg.load_from} was searched with {other}; give the --budget and '
                         '--candidates it was searched with to resume it, or a new --work-dir to start a new search')


def search_state(path) -> dict | None:
    """``checkpoint['ssps']`` of the mmengine checkpoint ``path`` (what ``SSPSHook`` saves), or None.

    The tensors are memory-mapped, not read (zip checkpoints), so this costs little even for a
    large model; a legacy (non-zip) checkpoint is read whole.
    """
    import torch

    kwargs = {'mmap': True} if zipfile.is_zipfile(path) else {}
    checkpoint = torch.load(path, map_location='cpu', weights_only=False, **kwargs)
    state = checkpoint.get('ssps') if isinstance(checkpoint, dict) else None
    return state if isinstance(state, dict) else None
