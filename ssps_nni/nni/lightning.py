"""The SSPS search loop as an NNI one-shot Lightning module (docs/algorithm.md §3-§7).

:class:`SSPSLightningModule` derives from NNI's ``DartsLightningModule`` (manual optimization,
logits kept out of the weight optimizer, the evaluator's optimizer and schedulers) and maps
each Lightning step onto the core :class:`~ssps_nni.search.SSPSSearch`, which owns every SSPS
decision: temperature and warm-up (``begin_step``), the constraint loss (``loss_term``), the
logits' Adam (``step_logits``), sequential determination (``end_step``) and the final fix
(``finish``). Steps are counted in weight-optimizer steps (= batches), not ``global_step``.

Single level (default): one batch, one backward for weights and logits.
Bi-level (first order, as NNI's DARTS): ``batch['val']`` updates the logits, then
``batch['train']`` the weights.

A NaN or inf loss raises :class:`~ssps_nni.errors.SearchDivergedError` before its backward,
naming the step and the first layer whose output was not finite (the step is re-run without
gradients to find it); Lightning then saves no checkpoint. A search with nothing to search
(:meth:`~ssps_nni.search.SSPSSearch.single_policy`, settled by the strategy) trains no step.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ..search import SSPSSearch

STATE_KEY = "ssps_search"


def _loss(output: Any) -> torch.Tensor:
    return output["loss"] if isinstance(output, dict) else output


class SSPSLightningModule(DartsLightningModule):
    """Search implementation of :class:`~ssps_nni.nni.SSPS`.

    Args:
        training_module: the evaluator's Lightning module (holds the supernet).
        search: the prepared core search over the supernet's cells.
        bilevel: logits on ``batch['val']``, weights on ``batch['train']``.
        gradient_clip_val: clip the weights' gradients (Trainer-level clipping is refused under
            manual optimization).
        log_every_n_steps: how often to log the probabilities of every choice.
    """

    def __init__(self, training_module, search: SSPSSearch, *, bilevel: bool = False,
                 gradient_clip_val: float | None = None, log_every_n_steps: int = 10):
        super().__init__(training_module, arc_learning_rate=search.config.effective_logits_lr,
                         gradient_clip_val=gradient_clip_val, log_prob_every_n_step=log_every_n_steps)
        self.search = search
        self.bilevel = bilevel
        # registered here so that Lightning moves them to the device and checkpoints them
        self.ssps_logits = nn.ParameterList(search.space.sampler.parameters())

    # -- optimizers ------------------------------------------------------------------------------

    def arch_parameters(self) -> list[nn.Parameter]:
        """The sampler's logits, in a fixed order (NNI's ``list(set(...))`` is not)."""
        return list(self.search.space.sampler.parameters())

    def configure_architecture_optimizers(self) -> torch.optim.Optimizer:
        """The core's logits optimizer (Adam, docs/algorithm.md §7), so Lightning checkpoints its state."""
        return self.search.logits_optimizer

    # -- training --------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        search = self.search
        step = search.step
        search.begin_step(step)
        if self.bilevel:
            self._logits_step(batch["val"], batch_idx)
            batch = batch["train"]
        output = self.training_module.training_step(batch, batch_idx)
        loss = _loss(output)
        self._check_loss(loss, batch, batch_idx)
        if not self.bilevel:
            extra, details = search.loss_term(loss)
            self._log_details(details)
            loss = loss + extra
        self.advance_optimization(loss, batch_idx, self.gradient_clip_val)
        if not self.bilevel:
            search.step_logits()
        self.advance_lr_schedulers(batch_idx)
        self._end_step(step + 1, batch_idx)
        return output

    def _logits_step(self, batch, batch_idx: int) -> None:
        """First-order bi-level: the logits take one step on a held-out batch (§7)."""
        self.search.logits_optimizer.zero_grad(set_to_none=True)
        loss = _loss(self.training_module.training_step(batch, batch_idx))
        self._check_loss(loss, batch, batch_idx)
        extra, details = self.search.loss_term(loss)
        self._log_details(details)
        self.manual_backward(loss + extra)
        self.search.step_logits()
        self.training_module.zero_grad(set_to_none=True)

    def _check_loss(self, loss, batch, batch_idx: int) -> None:
        """``SearchDivergedError`` before the backward if ``loss`` is NaN or inf (the step re-run to locate it)."""
        where = f"batch {batch_idx} of epoch {self.trainer.current_epoch}" if self._trainer is not None else ""
        self.search.check_loss(loss, locate=lambda: self.training_module.training_step(batch, batch_idx), where=where)

    def on_train_start(self):
        """Nothing to search (the strategy settled the policy): stop before the first step."""
        if self.search.finished:
            self.trainer.should_stop = True
        return super().on_train_start()

    def _end_step(self, steps_done: int, batch_idx: int) -> None:
        fixed = self.search.end_step(steps_done)
        stats = self.search.stats()
        self.log_dict({f"ssps/{k}": float(v) for k, v in stats.items()}, on_step=True, on_epoch=False)
        if fixed or batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs({k: {v: float(p.detach()) for v, p in d.items()} for k, d in self.export_probs().items()})
        if self.search.done and not self.search.finished:
            self._stop_at_decision(steps_done)

    def _stop_at_decision(self, steps_done: int) -> None:
        """Every decision made: the budget fill now (the policy is final) and the fit ends after
        this batch (``trainer.should_stop``, read by Lightning after every batch); a checkpoint
        callback saves this state as at any end of training."""
        self.search.finish()
        self.trainer.should_stop = True
        planned = self.trainer.estimated_stepping_batches
        left = f'{int(planned) - steps_done} of {int(planned)} planned steps not run' \
            if math.isfinite(planned) and planned > steps_done else 'this is the last planned step'
        rank_zero_info(f"SSPS: every decision made at step {steps_done}, the policy is final (budget fill "
                       f"applied); training stops now: {left}")

    def _log_details(self, details: dict) -> None:
        self.log_dict({f"penalty/{k}": float(v) for k, v in details.items()}, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        """The evaluator's validation on the argmax path (cells in eval mode)."""
        return self.training_module.validation_step(batch, batch_idx)

    def on_validation_epoch_start(self):
        return self.training_module.on_validation_epoch_start()

    def on_validation_epoch_end(self):
        return self.training_module.on_validation_epoch_end()

    def on_train_end(self):
        """When the planned search is over (or every decision is made, if not finished at that
        step already), finish: fix what is left (guarded, repaired if needed) and fill the
        budget; the policy is then final.

        A fit stopped earlier (the trainer's ``max_epochs`` below the search length) leaves the
        open decisions open, so the search can resume from its checkpoint.
        """
        search = self.search
        if not search.finished and (search.done or search.step >= search.config.total_steps):
            search.finish()
        return super().on_train_end()

    # -- result and resume -----------------------------------------------------------------------

    def export(self) -> dict:
        """``{label: bits}``: decided values (the most probable for a still open decision)."""
        result = {}
        for module in self.supernet_modules():
            result.update(module.export(memo=result))
        return result

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[STATE_KEY] = self.search.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if STATE_KEY in checkpoint:
            self.search.load_state_dict(checkpoint[STATE_KEY])
