"""A search stopped by a signal keeps its work: SIGINT (Ctrl-C) and SIGTERM (schedulers).

Slurm, Kubernetes and most schedulers send SIGTERM before a kill or on pre-emption; a user
presses Ctrl-C. Either way :class:`GracefulStop` lets the current training step finish, saves a
checkpoint of that iteration (``iter_N.pth`` through ``runner.save_checkpoint``, named by
``last_checkpoint``, as mmengine's ``CheckpointHook`` would), writes the search's partial policy
(``policy.partial.json``) and raises :class:`Interrupted`, on which ``ssps search`` prints the
resume line and exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). A second signal
stops at once (after a checkpoint save in progress, which is never cut). Before training starts
(building the runner, calibrating) there is no step to finish: the first signal stops at once.
``ssps train`` stops the same way; it has no ``SSPSHook``, so no policy is written
(:mod:`ssps_nni.cli.train_resume`).

``--resume`` from a checkpoint saved mid-epoch continues at the next iteration: mmengine's
epoch loop restarts the epoch, so :meth:`GracefulStop._skip_trained` loads its batches that were
trained before the checkpoint again (the same sampler order and data-worker random streams) and
skips them, and the search ends with the policy of an uninterrupted run.

Signals reach the dataloader workers too (a terminal and Slurm signal the whole process group).
The workers must live on so that the main process can finish its step: they inherit the SIGINT
handler, which ignores the signal outside the main process, and ignore SIGTERM
(:class:`IgnoreSigterm` around the loaders' ``worker_init_fn``; torch's own worker handler would
end them). They still end with the main process (torch's watchdog) or by SIGKILL.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

#: Runner hooks under which mmengine's CheckpointHook saves (by iteration, by epoch, best).
SAVE_POINTS = frozenset({'after_train_iter', 'after_train_epoch', 'after_val_epoch'})
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by ``signum``; ``exit_status`` is ``128 + signum`` (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int, checkpoint: str | None = None, iteration: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_status = 128 + signum
        self.checkpoint = checkpoint  # the checkpoint to resume from (None: none yet)
        self.iteration = iteration  # training iterations done


class IgnoreSigterm:
    """A dataloader ``worker_init_fn`` that makes the worker ignore SIGTERM, then runs ``inner``.

    (A class, not a closure, so that it pickles for the ``spawn`` start method.)
    """

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


def _keep_workers_alive(runner) -> None:
    """The train (and val) loaders' workers ignore SIGTERM (:class:`IgnoreSigterm`)."""
    for name in ('train_loop', 'val_loop'):
        loop = getattr(runner, name, None)  # both built before before_train
        loader = getattr(loop, 'dataloader', None)
        init = getattr(loader, 'worker_init_fn', None)
        if loader is not None and getattr(loader, 'num_workers', 0) and not isinstance(init, IgnoreSigterm):
            loader.worker_init_fn = IgnoreSigterm(init)


def _last_checkpoint(runner) -> str:
    pointer = Path(runner.work_dir) / 'last_checkpoint'
    try:
        return pointer.read_text().strip()
    except OSError:
        return ''


class GracefulStop:
    """SIGINT/SIGTERM handlers for one run; a context manager (handlers restored on exit).

    Args:
        prog: the command, for the one-line notice of the first signal.

    Use: ``with GracefulStop(prog) as stop: ...; stop.attach(runner); runner.train()``.
    Outside the main thread (where handlers cannot be set) it does nothing.
    """

    def __init__(self, prog: str = 'ssps search'):
        self.prog = prog
        self.requested: int | None = None  # the first signal, to act on at the end of the step
        self.abort: int | None = None  # a second signal during a save
        self.saving = False
        self.training = False
        self.runner = None
        self.saved_iter = 0  # iterations done at the last checkpoint
        self.owner = os.getpid()
        self.previous = {}

    # -- signals -----------------------------------------------------------------------------

    def __enter__(self) -> 'GracefulStop':
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.owner:
            return  # a forked dataloader worker: the main process decides
        if self.requested is None and self.training:
            self.requested = signum
            # os.write: a print here could re-enter a stream the main thread is writing
            os.write(2, (f'{self.prog}: {signal.Signals(signum).name} received: finishing the current step, then '
                         'saving a checkpoint and stopping (send it again to stop at once)\n').encode())
            return
        if self.saving:
            self.abort = signum
            return
        raise Interrupted(signum)

    # -- the runner --------------------------------------------------------------------------

    def attach(self, runner) -> None:
        """Act on signals at ``runner``'s step boundaries (wraps ``runner.call_hook``)."""
        self.runner = runner
        call_hook = runner.call_hook

        def guarded(fn_name: str, **kwargs):
            if self.requested is not None and fn_name == 'before_train_iter':
                self._stop(completed=runner.iter, epoch=runner.epoch)  # before this step's hooks
            if fn_name not in SAVE_POINTS:
                result = call_hook(fn_name, **kwargs)
            else:
                before = _last_checkpoint(runner)
                self.saving = True
                try:
                    result = call_hook(fn_name, **kwargs)
                finally:
                    self.saving = False
                if self.abort is not None:
                    raise Interrupted(self.abort, _last_checkpoint(runner) or None)
                if _last_checkpoint(runner) != before:  # a checkpoint of this point was saved
                    self.saved_iter = runner.iter + (fn_name == 'after_train_iter')
            if fn_name == 'before_train':
                self.saved_iter = runner.iter  # the checkpoint resumed from (or none: iteration 0)
                self._skip_trained(runner)
                _keep_workers_alive(runner)
                self.training = True
            elif self.requested is not None and fn_name == 'after_train_iter':
                self._stop(completed=runner.iter + 1, epoch=runner.epoch)
            elif self.requested is not None and fn_name == 'after_train_epoch':
                self._stop(completed=runner.iter, epoch=runner.epoch + 1)
            return result

        runner.call_hook = guarded

    def _stop(self, completed: int, epoch: int) -> None:
        """Save the checkpoint of ``completed`` iterations (unless just saved), the partial policy; raise.

        Args:
            completed: training iterations done; epoch: epochs begun (the iteration's own) or,
                at an epoch's end, done: the checkpoint's ``meta`` for mmengine's resume.

        Raises:
            Interrupted: always.
        """
        runner = self.runner
        checkpoint = _last_checkpoint(runner) or None
        if completed != self.saved_iter:
            self.saving = True
            try:
                name = f'iter_{completed}.pth'
                runner.save_checkpoint(runner.work_dir, name, meta=dict(epoch=epoch, iter=completed))
                checkpoint = str(Path(runner.work_dir) / name)
                from ssps_nni.files import atomic_write

                atomic_write(Path(runner.work_dir) / 'last_checkpoint', checkpoint)
                runner.logger.info(f'Saved checkpoint {checkpoint} of iteration {completed} on '
                                   f'{signal.Signals(self.requested).name}')
            finally:
                self.saving = False
        for hook in runner.hooks:
            if type(hook).__name__ == 'SSPSHook' and getattr(hook, 'search', None) is not None:
                hook.write_policy(runner, final=False)  # policy.partial.json of this step
        raise Interrupted(self.requested, checkpoint, completed)

    def _skip_trained(self, runner) -> None:
        """Resumed mid-epoch: skip the batches of this epoch trained before the checkpoint.

        mmengine's ``EpochBasedTrainLoop`` runs a resumed epoch from its first batch; the
        batches are loaded (so the sampler order and the workers' random augmentations go on as
        in the interrupted run) and not trained.
        """
        from mmengine.runner import EpochBasedTrainLoop

        loop = runner.train_loop
        if not isinstance(loop, EpochBasedTrainLoop):
            return  # the iteration loop skips trained batches itself
        skip = loop.iter - loop.epoch * len(loop.dataloader)
        if skip <= 0:
            return
        runner.logger.info(f'Resumed in epoch {loop.epoch + 1} after iteration {loop.iter}: its first {skip} batches '
                           'are loaded again and skipped (trained before the checkpoint)')
        run_iter = loop.run_iter

        def resumed_run_iter(idx, data_batch):
            if idx < skip:
                return None
            del loop.run_iter  # the loop's own method from here on
            return run_iter(idx, data_batch)

        loop.run_iter = resumed_run_iter
