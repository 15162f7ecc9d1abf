"""A train loop that stops after any iteration, and the checkpoint of that iteration.

mmengine's ``EpochBasedTrainLoop`` reads ``stop_training`` only between epochs, so a search
whose last decision falls early in an epoch would train on to the end of it for nothing
(docs/algorithm.md §6, "Stopping"). :class:`SSPSEpochBasedTrainLoop` is that loop, also
stopping after the iteration that set the flag; the SSPS configs use it and ``ssps search``
sets it in place of the default epoch loop (:data:`LOOP_TYPE`, ``ssps_nni.cli.train_loop``).
mmengine's ``IterBasedTrainLoop`` already reads the flag after every iteration.

:func:`save_stop_checkpoint` saves the checkpoint of the iteration a run stops at, as
mmengine's ``CheckpointHook`` would name and record an iteration's checkpoint (``iter_N.pth``
in its folder, ``last_checkpoint`` pointing at it), so ``--resume`` starts from there.
"""
from __future__ import annotations

import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

__all__ = ['SSPSEpochBasedTrainLoop', 'LOOP_TYPE', 'stops_mid_epoch', 'iterations_left', 'save_stop_checkpoint',
           'late_stop', 'stop_training']

#: The registered name of :class:`SSPSEpochBasedTrainLoop` (``train_cfg.type``).
LOOP_TYPE = 'SSPSEpochBasedTrainLoop'


@LOOPS.register_module(name=LOOP_TYPE)
class SSPSEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that also honours ``stop_training`` after every iteration.

    Same arguments and behaviour as mmengine's loop, except that a stop set during an epoch
    (by a hook's ``after_train_iter``) ends the run after that iteration: the rest of the
    epoch, its ``after_train_epoch`` hooks (an epoch checkpoint, epoch-based schedulers) and
    its validation are skipped, since the epoch is not complete, and ``after_train`` runs.
    Whoever stops saves the checkpoint of that iteration (:func:`save_stop_checkpoint`). A stop
    set at the last iteration of an epoch ends that epoch as usual.

    Args:
        max_iters: optional cap on the iterations in all (``max_epochs`` must cover it): the
            epoch in which it is reached ends there as a whole one (its ``after_train_epoch``
            hooks, e.g. the last checkpoint, run), and training ends. For a schedule counted in
            steps on an epoch-based config (``ssps benchmark time-to-model``).
        *args, **kwargs: those of mmengine's ``EpochBasedTrainLoop``.

    Raises:
        ValueError: ``max_iters`` below 1 or beyond ``max_epochs`` epochs.

    Attributes:
        stopped_mid_epoch: True once a stop ended an epoch early.
    """

    def __init__(self, *args, max_iters: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if max_iters is not None:
            if not 1 <= int(max_iters) <= self._max_iters:
                raise ValueError(f'train_cfg max_iters={max_iters} must be in 1..{self._max_iters} '
                                 f'(max_epochs={self._max_epochs} epochs of {len(self.dataloader)} iterations)')
            self._max_iters = int(max_iters)
        self.stopped_mid_epoch = False

    def run(self):
        """Launch training (mmengine's ``run``, ending at a mid-epoch stop without validation)."""
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and self._iter < self._max_iters and not self.stop_training:
            self.run_epoch()
            if self.stopped_mid_epoch:
                break
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0 or self._epoch == self._max_epochs)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self) -> None:
        """Iterate one epoch, or up to the iteration after which ``stop_training`` was set."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        last = len(self.dataloader) - 1
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
            if self._iter >= self._max_iters:
                break  # the cap: this epoch ends here as a whole one
            if self.stop_training and idx < last:
                self.stopped_mid_epoch = True
                return
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


def stops_mid_epoch(loop) -> bool:
    """Whether ``loop`` ends right after the iteration that sets ``stop_training``."""
    return isinstance(loop, (SSPSEpochBasedTrainLoop, IterBasedTrainLoop))


def iterations_left(runner) -> tuple[int, int]:
    """``(iterations not run, planned iterations)`` for a stop set in the current iteration.

    The loop of :func:`stops_mid_epoch` ends after this iteration; another epoch-based loop
    at the end of this epoch.
    """
    loop = runner.train_loop
    planned = int(loop.max_iters)
    if stops_mid_epoch(loop):
        run = runner.iter + 1
    else:
        run = (runner.epoch + 1) * len(loop.dataloader)
    return max(planned - run, 0), planned


def save_stop_checkpoint(runner) -> str:
    """Save the checkpoint of the current iteration as ``iter_N.pth`` and point ``last_checkpoint`` at it.

    Call from ``after_train_iter`` (``N = runner.iter + 1``, the iterations run). The folder and
    what is saved (optimizer, schedulers, extra arguments) follow the runner's
    ``CheckpointHook`` when it has one, else the work dir and everything; the checkpoint holds
    every hook's ``before_save_checkpoint`` state, as one that ``CheckpointHook`` saves.

    Returns:
        The checkpoint's path.
    """
    hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
    out_dir = getattr(hook, 'out_dir', None) or runner.work_dir
    filename = f'iter_{runner.iter + 1}.pth'
    options = {}
    if hook is not None:
        options = dict(hook.args, save_optimizer=hook.save_optimizer, save_param_scheduler=hook.save_param_scheduler,
                       file_client_args=hook.file_client_args, backend_args=hook.backend_args)
    runner.save_checkpoint(out_dir, filename, by_epoch=False, **options)
    join = hook.file_backend.join_path if hook is not None and hasattr(hook, 'file_backend') else osp.join
    path = join(out_dir, filename)
    if hook is not None:
        hook.last_ckpt = path  # what CheckpointHook publishes as the last checkpoint
    runner.message_hub.update_info('last_ckpt', path)
    if is_main_process():
        with open(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
            f.write(path)
    return path


def late_stop(loop) -> str | None:
    """Why ``loop`` would not stop right after the iteration that sets ``stop_training``, or None."""
    if stops_mid_epoch(loop):
        return None
    return (f'{type(loop).__name__} reads stop_training only between epochs, so the search trains on to the end '
            f'of the epoch of its last decision; train_cfg = dict(type={LOOP_TYPE!r}, ...) stops right after it')


def stop_training(runner, why: str) -> str | None:
    """Stop the run after the current iteration (call from ``after_train_iter``) and log what that saves.

    With a loop of :func:`stops_mid_epoch`, the run ends after this iteration and its
    checkpoint is saved (:func:`save_stop_checkpoint`); with another epoch-based loop, at the
    end of this epoch (its ``CheckpointHook`` saves as configured). Nothing is stopped at the
    last planned iteration, where the run ends anyway.

    Args:
        why: the start of the log line (what was reached, at which step); the line adds the
            checkpoint saved and how many of the planned iterations are not run.

    Returns:
        The path of the checkpoint saved, or None (nothing saved: another epoch loop, the last
        planned iteration, or a stop already set by someone else).
    """
    loop = runner.train_loop
    if loop.stop_training:
        return None
    left, planned = iterations_left(runner)
    if left == 0:
        runner.logger.info(f'{why}; this is the last planned iteration')
        return None
    loop.stop_training = True
    saved = f'{left} of {planned} planned iterations ({100 * left / planned:.0f} %) not run'
    if not stops_mid_epoch(loop):
        runner.logger.info(f'{why}; training stops at the end of this epoch ({type(loop).__name__} reads '
                           f'stop_training only between epochs): {saved}')
        return None
    path = save_stop_checkpoint(runner)
    runner.logger.info(f'{why}; checkpoint {path}; training stops now: {saved}')
    return path
