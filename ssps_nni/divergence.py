"""The divergence guard: a non-finite loss stops the search with a message that names where (docs/algorithm.md §7).

:class:`DivergenceGuard` is a part of :class:`~ssps_nni.search.SSPSSearch` with explicit inputs:
the space it reports on and the search length at construction, the step (0-based) per call; it
keeps the path sampler's state saved by :meth:`~DivergenceGuard.mark_step` (the search's
``begin_step``). :meth:`~DivergenceGuard.check_loss` raises
:class:`~ssps_nni.errors.SearchDivergedError` for a NaN or inf loss, and
:func:`first_nonfinite_output` re-runs the step's forward to name the first layer whose output
was not finite. ``from ssps_nni.search import first_nonfinite_output`` keeps working.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .convert import SearchSpace
from .errors import SearchDivergedError


class DivergenceGuard:
    """The loss check of :class:`~ssps_nni.search.SSPSSearch` (docs/algorithm.md §7).

    Args:
        space: the search space; its model is re-run, its cells named, its sampler rewound.
        total_steps: the search length in optimizer steps (for the message).

    Attributes:
        step_rng: the path sampler's generator state at the start of the current step
            (:meth:`mark_step`), or None before the first step.
    """

    def __init__(self, space: SearchSpace, total_steps: int):
        self.space = space
        self.total_steps = int(total_steps)
        self.step_rng: torch.Tensor | None = None

    def mark_step(self) -> None:
        """Save the path sampler's generator state, so that :meth:`locate_nonfinite` replays this step's paths."""
        self.step_rng = self.space.sampler.generator.get_state()

    def check_loss(self, step: int, loss: torch.Tensor, locate: Callable[[], object] | None = None, where: str = "",
                   hint: str = "") -> None:
        """Raise :class:`SearchDivergedError` if the training loss of this step is NaN or inf.

        Call after the forward and before the backward, so that a diverged step changes no
        weight. Costs one device-to-host copy of the loss per step.

        Args:
            step: the search's step (0-based), for the message.
            loss: the step's loss (any shape; every element is checked).
            locate: re-runs this step's forward (e.g. ``lambda: model(batch)``); called only on
                failure, without gradients and with this step's sampled paths, to name the first
                layer whose output was not finite (:func:`first_nonfinite_output`).
            where: the driver's position, e.g. ``'iteration 3, epoch 1'``, for the message.
            hint: what the user can do, appended to the message.

        Raises:
            SearchDivergedError: the message names the step, the value and the first
                non-finite layer output where one was found.
        """
        value = loss.detach()
        if bool(torch.isfinite(value).all()):
            return
        kind = "nan" if bool(torch.isnan(value).any()) else "inf"
        layer = None
        if locate is not None:
            layer = self.locate_nonfinite(locate) or ("every layer output was finite on a re-run of this step: "
                                                      "the loss computation is not")
        raise self.diverged(step, f"the training loss is {kind}", layer, where, hint)

    def diverged(self, step: int, what: str, layer: str | None = None, where: str = "",
                 hint: str = "") -> SearchDivergedError:
        """The :class:`SearchDivergedError` for step ``step`` (0-based; the message counts from 1).

        Args:
            what: what is not finite. layer: a phrase naming where it starts (from
                :func:`first_nonfinite_output`). where, hint: see :meth:`check_loss`.
        """
        at = f"step {step + 1} of {self.total_steps}" + (f" ({where})" if where else "")
        found = f"; {layer}" if layer else ""
        done = f"{self.space.num_decided}/{self.space.num_decisions} decisions made"
        hint = hint or ("Lower the learning rate, check the cost LUT and the mixed-precision (fp16) settings, "
                        "and start the search again.")
        return SearchDivergedError(f"SSPS search diverged at {at}: {what}{found}. The search stopped there ({done}); "
                                   f"no final policy is written. {hint}")

    def locate_nonfinite(self, run: Callable[[], object]) -> str | None:
        """:func:`first_nonfinite_output` of ``run`` on this step's sampled paths; state is kept.

        The path sampler's generator is rewound to where :meth:`mark_step` found it, so the
        re-run takes the same paths; the generator, the global RNG and every buffer (BatchNorm
        statistics) are restored afterwards. Cells are named by their layer name in the space
        (as in the policy), other modules by their path in the model.
        """
        generator = self.space.sampler.generator
        after = generator.get_state()
        if self.step_rng is not None:
            generator.set_state(self.step_rng)
        try:
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
            with torch.random.fork_rng(devices=devices):
                names = {cell: name for name, cell in self.space.cells.items()}
                return first_nonfinite_output(self.space.model, run, names)
        finally:
            generator.set_state(after)


def _nonfinite(value) -> bool:
    """True if a floating tensor in ``value`` (tensors, tuples, lists, dicts) holds NaN or inf."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return any(_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    return False


def first_nonfinite_output(model: nn.Module, run: Callable[[], object],
                           names: dict[nn.Module, str] | None = None) -> str | None:
    """Re-run a forward and name the first module whose output holds NaN or inf.

    Forward hooks on every module of ``model`` record, in execution order, the first output
    that is not finite; ``run`` is called once without gradients and its exceptions are caught
    (what was found before one is kept). Every buffer (BatchNorm statistics) is restored.
    ``names`` overrides the module path of some modules (e.g. a cell inside a wrapper).

    Returns:
        A phrase: ``'the first layer whose output was not finite is backbone.layer1.0.conv1
        (QuantConv2d)'``, plus ``' (its input was already not finite)'`` when that module got a
        non-finite input (the batch itself, or an operation outside any module, made it);
        ``'every layer output was finite: the loss computation is not'`` when only the model's
        own output is (a loss computed inside the model); None when nothing was found.
    """
    found: list[str] = []

    def hook(name):
        def record(module, args, output):
            if found or not _nonfinite(output):
                return
            if not name:
                found.append("every layer output was finite: the loss computation is not")
                return
            note = " (its input was already not finite)" if _nonfinite(args) else ""
            found.append(f"the first layer whose output was not finite is {name} ({type(module).__name__}){note}")
        return record

    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    names = names or {}
    handles = [m.register_forward_hook(hook(names.get(m, n))) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            run()
    except Exception:  # noqa: BLE001 - a forward on non-finite values may fail anywhere; keep what was found
        pass
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
    return found[0] if found else None
