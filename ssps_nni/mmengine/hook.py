"""``SSPSHook``: an SSPS mixed-precision search inside any mmengine training run.

Shaped like mmengine's ``EMAHook``: it builds its helper (:class:`ssps_nni.search.SSPSSearch`)
in ``before_run``, works in ``after_train_iter``, and keeps its state in the checkpoint. All
SSPS math is the core's; this file maps runner events onto it:

============================  ===============================================================
``before_run``                convert the inner model (cells keep parameter names, so
                              ``load_from`` an FP checkpoint loads); step sizes join the task
                              optimizer; constraint-loss forward hook; re-wrap DDP
``after_load_checkpoint``     restore logits and masks (``checkpoint['ssps']``)
``before_train``              profile + calibrate on a few training batches (skipped for
                              layers restored from a checkpoint); budget check; search state;
                              nothing to search (one candidate per decision, or one feasible
                              policy): fix it and stop before the first iteration
``before_train_iter``         temperature / warm-up; read the AMP loss scale
forward (``mode='loss'``)     NaN/inf loss: ``SearchDivergedError`` before the backward (the
                              weights and checkpoints stay as they were); ``loss_ssps`` added
                              to the loss dict, fp32, autocast off
``after_train_iter``          on optimizer steps: reduce + unscale logit grads, Adam, decide;
                              log; write ``policy.partial.json`` (``"final": false``) at each
                              decision; once all are decided: budget fill, and stop there
                              (checkpoint ``iter_N.pth``, ``loops.py``), then ``policy.json``
``after_train``               if not done yet: fix what is left, fill, write ``policy.json`` /
                              ``policy.png`` (``"final": true``), remove the partial snapshot
``before_save_checkpoint``    ``checkpoint['ssps'] = SSPSSearch.state_dict()``
============================  ===============================================================

A search that diverges (NaN or inf loss) raises :class:`ssps_nni.errors.SearchDivergedError`
out of ``runner.train()`` on the step it happens: mmengine then saves no checkpoint, so the
work dir's last checkpoint is the last good state, and no ``policy.json`` is written.

Config::

    custom_imports = dict(imports=['ssps_nni.mmengine'], allow_failed_imports=False)
    custom_hooks = [dict(type='SSPSHook', budget='bitops=W4A4', candidates=(2, 3, 4, 5, 6, 8))]

or, in Python, ``SSPSHook(config=SearchConfig(budget='bitops=W4A4'), calib_batches=8)``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from mmengine import dist
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS

from ..convert import DEFAULT_CANDIDATES
from ..driver_config import HOOK_OPTIONS, config_or_options
from ..errors import SSPSError
from ..calibration_data import calibration_loader, forward_fn, preserved_rng
from ..policy import PARTIAL_POLICY_JSON, POLICY_JSON
from ..search import SSPSSearch
from ..search_config import DEFAULT_BUDGET, SearchConfig, searched_with_other
from ..search_outputs import divergence_hint, move_earlier_policy, task_loss, write_policy_files
from .loops import late_stop, stop_training
from .optim import add_param_group, find_optim_wrapper, loss_scale, reduce_logit_grads
from ..cost_report import cost_lines, reference_text

__all__ = ['SSPSHook', 'HOOK_OPTIONS']  # HOOK_OPTIONS: ssps_nni.driver_config's, the one list


@HOOKS.register_module()
class SSPSHook(Hook):
    """Search a mixed-precision quantization policy during training (docs/algorithm.md).

    Args:
        budget: ``'bitops=W4A4'``, ``'size=1.5MB,bitops=2e9'``, a list or a dict (§4).
        candidates: weight bit-widths (activations too unless ``a_candidates`` is given).
        total_steps: search length in optimizer steps; defaults to the train loop's
            ``max_iters`` divided by the optimizer wrapper's ``accumulative_counts``.
        warmup_steps, interval: in optimizer steps, or a float in (0, 1) as a fraction of
            ``total_steps``.
        calib_batches: training batches used to profile layers and initialise step sizes.
        calib_batch_size: their batch size; defaults to the train loader's.
        stop_when_done: end training right after the step of the last decision, with its
            checkpoint ``iter_N.pth``, then ``policy.json`` (§6 "Stopping"; the budget fill is
            at that step in any case). False: the filled policy trains on to the end.
        plot_interval_s: the snapshot ``policy.partial.json`` (``"final": false``, the open
            decisions listed) is written at every decision point that fixes something,
            ``policy.partial.png`` at most once per this many seconds (drawing costs about a
            second on a CPU); ``policy.json`` / ``policy.png`` (``"final": true``) only at the
            end, when the search is done and within budget.
        config: a :class:`~ssps_nni.search_config.SearchConfig` instead of ``budget``,
            ``candidates`` and ``**options`` (giving both is refused). Its search length is
            replaced by this hook's ``total_steps`` / ``warmup_steps`` / ``interval``.
        **options: any other :class:`ssps_nni.search_config.SearchConfig` field (``penalty``,
            ``lam``, ``tau_max``, ``threshold``, ``pinned``, ``exclude``, ``seed``...).

    The typed config is built once, here (:func:`ssps_nni.driver_config.config_or_options`): the
    budget text is parsed and the candidates checked only then, or not at all when ``ssps
    search`` shares the config it built from the same options (``driver_config.shared``);
    ``before_run`` sets the runner's search length with :meth:`SearchConfig.with_schedule`,
    which checks neither again.

    Raises (at construction, so before training):
        CandidateError, BudgetError, UnknownCostError, ValueError: bad options; the message
        names the accepted forms. An unreachable budget raises ``BudgetError`` in
        ``before_train``, before the first training step. A NaN or inf training loss raises
        ``SearchDivergedError`` during training, on the step it happens.
    """

    priority = 'VERY_HIGH'

    def __init__(self, budget=DEFAULT_BUDGET, candidates=DEFAULT_CANDIDATES, total_steps: int | None = None,
                 warmup_steps: int | float = 0, interval: int | float = 1, calib_batches: int = 4,
                 calib_batch_size: int | None = None, stop_when_done: bool = True,
                 plot_interval_s: float = 30.0, config: SearchConfig | None = None, **options):
        given = sorted(options) + [k for k, v, d in (('budget', budget, DEFAULT_BUDGET),
                                                     ('candidates', candidates, DEFAULT_CANDIDATES)) if v is not d]
        self.config = config_or_options('SSPSHook', config, dict(options, budget=budget, candidates=candidates),
                                        given, total_steps, warmup_steps, interval)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.interval = interval
        self.calib_batches = int(calib_batches)
        self.calib_batch_size = calib_batch_size
        self.stop_when_done = bool(stop_when_done)
        self.plot_interval_s = float(plot_interval_s)
        self._last_plot = None
        if self.calib_batches < 1:
            raise ValueError(f'calib_batches must be >= 1, got {calib_batches}')
        self.search: SSPSSearch | None = None
        self.optim_wrapper: OptimWrapper | None = None
        self._inner = None
        self._pending: dict | None = None
        self._scale = 1.0
        self._handle = None
        self._runner = None
        self._locating = False
        self._checked = False  # this iteration's loss was checked in the forward hook
        self._final_written = False  # policy.json of this run written

    def search_config(self, total_steps: int) -> SearchConfig:
        """The hook's :class:`SearchConfig` for a search of ``total_steps`` optimizer steps (not re-parsed)."""
        return self.config.with_schedule(total_steps, self.warmup_steps, self.interval)

    # -- set-up ------------------------------------------------------------------------------

    def _search_length(self, runner) -> int:
        if self.total_steps is not None:
            return int(self.total_steps)
        if not isinstance(runner.optim_wrapper, (OptimWrapper, OptimWrapperDict)):
            return 1 + (self.warmup_steps if isinstance(self.warmup_steps, int) else 0)  # val/test only
        accumulate = int(runner.cfg.get('optim_wrapper', {}).get('accumulative_counts', 1))
        return max(runner.train_loop.max_iters // accumulate, 1)

    def before_run(self, runner) -> None:
        """Convert the model, add step sizes to the optimizer, hook the loss, re-wrap DDP."""
        if self.search is not None:
            return  # converted by an earlier run of this runner (``train()`` then ``test()``)
        wrapped = is_model_wrapper(runner.model)
        inner = runner.model.module if wrapped else runner.model
        self._inner = inner
        self._runner = runner
        self.search = SSPSSearch(inner, self.search_config(self._search_length(runner)))
        cells = self.search.space.cells.values()
        step_sizes = [p for cell in cells for p in (cell.w_scale, cell.a_scale)]
        self.optim_wrapper = find_optim_wrapper(runner.optim_wrapper, next(iter(cells)).weight)
        if self.optim_wrapper is not None:
            add_param_group(self.optim_wrapper, step_sizes, runner.param_schedulers)
        self._handle = inner.register_forward_hook(self._add_loss, with_kwargs=True)
        if wrapped:
            runner.model = runner.wrap_model(runner.cfg.get('model_wrapper_cfg'), inner)
        space = self.search.space
        runner.logger.info(
            f'SSPS: {len(space.cells)} layers converted ({len(space.searched)} searched, '
            f'{len(space.pinned)} pinned, {len(self.search.excluded)} excluded); '
            f'{space.num_decisions} decisions over {self.search.config.total_steps} optimizer steps')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Restore logits and masks now (validation needs them); the rest in ``before_train``."""
        state = checkpoint.get('ssps')
        if state is None or self.search is None:
            return  # a full-precision checkpoint: nothing to restore
        other = searched_with_other(state, self.search.config)
        if other is not None:
            raise SSPSError(f'SSPSHook: the checkpoint\'s search was searched with {other}; give this hook the '
                            'budget and candidates of that search to resume it, or start a new search in another '
                            'work dir without resume')
        self.search.space.load_state_dict(state['space'])
        self._pending = state

    def before_train(self, runner) -> None:
        """Profile and calibrate on a few training batches, check the budget, restore state."""
        search = self.search
        calibrate = not all(int(cell.initialized) for cell in search.space.cells.values())
        loader = calibration_loader(runner.train_dataloader, self.calib_batches, self.calib_batch_size,
                                    seed=search.config.seed)
        run, num_samples = forward_fn(self._inner, loader)
        with preserved_rng():
            search.prepare(run, num_samples, calibrate=calibrate)
        if self._pending is not None:
            search.load_state_dict(self._pending)
            self._pending = None
            runner.logger.info(f'SSPS: search state restored at step {search.step} '
                               f'({search.space.num_decided}/{search.space.num_decisions} decided)')
        stats = search.stats()
        for name, target in search.targets.items():
            refs = search.costs[name].references()
            fmt = search.costs[name].model.format
            runner.logger.info(  # a LUT need not price FP32 or W8A8 (SpaceCost.references)
                f'SSPS budget {name}: target {fmt(target)}; {reference_text(refs, fmt)}; '
                f'expected now {fmt(stats[f"expected/{name}"])}'
                + (' (calibrated)' if calibrate else ' (step sizes from checkpoint)'))
        reason = search.single_policy()
        if reason is not None:
            search.settle(search.step)
            runner.logger.info(f'SSPS: nothing to search, {reason}; the policy is written now and no training '
                               'step runs')
            runner.train_loop.stop_training = True
        elif search.done and self.stop_when_done:  # resumed from the checkpoint of a finished search
            runner.logger.info(f'SSPS: the search was done at step {search.step} (every decision made); '
                               'no training step runs')
            runner.train_loop.stop_training = True
        elif not search.done:
            self._move_earlier_policy(runner)
            if search.config.score_calibration != 'none' and search.step == 0 and search.scores.scale is None:
                from ..calibrate_scores import calibrate_scores  # §10.2; a resumed search keeps its factors

                calibrate_scores(search, self._inner, runner.train_dataloader, runner.logger.info)
        if self.stop_when_done and late_stop(runner.train_loop):
            runner.logger.warning(f'SSPS: {late_stop(runner.train_loop)}')

    def _move_earlier_policy(self, runner) -> None:
        """A ``policy.json`` already in the work dir is an earlier search's: move it aside.

        Otherwise a search interrupted in a reused work dir would leave a final-looking policy
        that is not its own.
        """
        if not is_main_process():
            return
        moved = move_earlier_policy(runner.work_dir)
        if moved:
            runner.logger.info(f'SSPS: this work dir held an earlier search\'s result; moved {", ".join(moved)} '
                               f'(this search writes {POLICY_JSON} when it ends)')

    # -- per step ----------------------------------------------------------------------------

    def _add_loss(self, module, args, kwargs, output):
        """Forward hook on the inner model: ``output['loss_ssps']`` in ``mode='loss'``."""
        if kwargs.get('mode') != 'loss' or not isinstance(output, dict) or not module.training:
            return None
        if self.search is None or self.search.decider is None or self._locating:
            return None
        task = task_loss(output)
        with torch.autocast(device_type=task.device.type, enabled=False):
            term, _ = self.search.loss_term(task.float())
        self._check_loss(task.detach().float() + term.detach(), module, args, kwargs)
        output['loss_ssps'] = term
        return output

    def _check_loss(self, loss: torch.Tensor, module, args, kwargs) -> None:
        """Raise ``SearchDivergedError`` before the backward when this step's loss is NaN or inf.

        Under data parallelism every rank stops together (a MAX all-reduce of the flag).
        """
        bad = torch.logical_not(torch.isfinite(loss)).any().to(torch.int32).reshape(1)
        if dist.get_world_size() > 1:
            dist.all_reduce(bad, op='max')
        if not int(bad.item()):
            self._checked = True
            return
        local = not bool(torch.isfinite(loss).all())

        def locate():
            self._locating = True
            try:
                module(*args, **kwargs)
            finally:
                self._locating = False

        runner = self._runner
        where = f'iteration {runner.iter + 1}, epoch {runner.epoch + 1}' if runner is not None else ''
        if not local:
            where += ', on another rank'
        if local:
            self.search.check_loss(loss, locate=locate, where=where, hint=self._divergence_hint())
        raise self.search.diverged('the training loss is not finite', None, where, self._divergence_hint())

    def _divergence_hint(self) -> str:
        """What to do after a divergence (:func:`~ssps_nni.search_outputs.divergence_hint`)."""
        return divergence_hint(self.optim_wrapper, None if self._runner is None else self._runner.work_dir)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._checked = False
        self._scale = loss_scale(self.optim_wrapper)
        self.search.begin_step(self.search.step)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """On optimizer steps: update the logits, run the decider, log, stop when done."""
        loss = outputs.get('loss') if isinstance(outputs, dict) and not self._checked else None
        if loss is not None and not bool(torch.isfinite(torch.as_tensor(loss)).all()):
            # a loss the forward hook did not see (a train_step that bypasses forward(mode='loss'))
            self.search.check_loss(torch.as_tensor(loss), where=f'iteration {runner.iter + 1}, epoch '
                                   f'{runner.epoch + 1}; this step already updated the weights',
                                   hint=self._divergence_hint())
        search = self.search
        if search.finished or self.optim_wrapper is not None and not self.optim_wrapper.should_update():
            return  # finished: the policy is final, the steps after it are plain QAT
        params = search.space.sampler.grad_tensors()  # logits and dense-score probes
        finite = reduce_logit_grads(params, self._scale)
        if finite and loss_scale(self.optim_wrapper) >= self._scale:
            search.step_logits()
        else:  # AMP overflow: the task optimizer skipped this step, so do the logits
            search.logits_optimizer.zero_grad(set_to_none=True)
            search.space.sampler.take_scores()
        fixed = search.end_step(search.step + 1)
        self._log_scalars(runner)
        if fixed:
            space = search.space
            runner.logger.info(
                f'SSPS step {search.step}: fixed {len(fixed)} decision(s), {space.num_decided}/'
                f'{space.num_decisions} decided, log10 search space {space.log10_size():.2f}')
            self.write_policy(runner, final=False)
        if search.done and not search.finished:
            search.finish()  # the fill now: no step trains a policy that the fill then changes
            if self.stop_when_done and stop_training(runner, f'SSPS: every decision made at step {search.step}'):
                self._finish(runner)  # policy.json once a checkpoint holds the finished search (else after_train)

    def _log_scalars(self, runner) -> None:
        """Expected cost, target, ratio, decided, log10 search space, temperature."""
        hub = runner.message_hub
        for key, value in self.search.stats().items():
            if not key.startswith('target/') and key != 'num_decisions':  # constants: logged once
                hub.update_scalar(f'train/ssps/{key}', value)

    # -- result ------------------------------------------------------------------------------

    def after_train(self, runner) -> None:
        """Fix every open decision and write the final policy, unless that was done at the last decision."""
        if not self._final_written:
            self._finish(runner)

    def _finish(self, runner) -> None:
        """Fix every open decision, fill the budget (§5) and write the final policy.

        Raises:
            SSPSError: the finished policy is over a budget (not written as ``policy.json``).
        """
        policy = self.search.finish()
        if not policy.final:
            self.write_policy(runner, final=False)
            raise SSPSError(f'SSPS: the finished policy is over its budget ({policy.status()}); it is not written '
                            f'as {POLICY_JSON} (snapshot: {Path(runner.work_dir) / PARTIAL_POLICY_JSON})')
        self.write_policy(runner, final=True)
        self._final_written = True
        runner.logger.info('SSPS policy:\n' + policy.table())
        for line in cost_lines(policy):
            runner.logger.info(f'SSPS {line}')
        runner.logger.info(f'SSPS: wrote {Path(runner.work_dir) / POLICY_JSON}')

    def write_policy(self, runner, final: bool) -> None:
        """The policy and its figure in ``work_dir`` (atomic writes, rank 0 only; ``cli/stop.py``
        writes the snapshot of an interrupted step with it).

        ``final``: ``policy.json`` / ``policy.png``, and the partial snapshot is removed; else
        the snapshot ``policy.partial.json`` / ``policy.partial.png`` (``"final": false``), its
        figure at most once per ``plot_interval_s``.
        """
        if not is_main_process():
            return
        now = time.monotonic()
        plot = self._last_plot is None or now - self._last_plot >= self.plot_interval_s
        write_policy_files(self.search.policy(), self.search.decider.history, runner.work_dir, final, plot)
        if final or plot:
            self._last_plot = now

    # -- checkpoint --------------------------------------------------------------------------

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """``checkpoint['ssps']``: logits, masks, sampler, decider, logits Adam, step."""
        if self.search is not None and self.search.decider is not None:
            checkpoint['ssps'] = self.search.state_dict()

    def after_run(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
