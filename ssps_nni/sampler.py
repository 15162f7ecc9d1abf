"""The single-path rule: Gumbel straight-through sampling of one candidate (docs/algorithm.md §3).

This object owns the logits of every searched layer and decides which path a cell runs; the
cell (``cell.py``) only quantizes along the path it is given. Keeping the two apart mirrors
NNI's ``MixedOperationSamplingPolicy``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SLOTS = ("w", "a")


class PathSampler:
    """Logits and the Gumbel straight-through rule for all searched layers.

    Args:
        num_layers: number of searched layers ``L``.
        w_candidates, a_candidates: candidate bit-widths (``B_w``, ``B_a``).
        tau: initial Gumbel-softmax temperature (``tau_max``, §3).
        seed: seed of the sampler's own ``torch.Generator``; the same seed on every rank gives
            the same paths under data parallel training (§7).

    Attributes:
        logits: ``{'w': Parameter (L, len(B_w)), 'a': Parameter (L, len(B_a))}``, zeros at start.
        uniform: when True (warm-up, §6), paths are drawn uniformly and carry no gradient.
    """

    def __init__(self, num_layers: int, w_candidates, a_candidates, tau: float = 5.0, seed: int = 0):
        self.candidates = {"w": tuple(w_candidates), "a": tuple(a_candidates)}
        self.logits = {
            slot: nn.Parameter(torch.zeros(num_layers, len(self.candidates[slot]))) for slot in SLOTS
        }
        self.tau = float(tau)
        self.uniform = False
        self.generator = torch.Generator().manual_seed(int(seed))
        # dense signal (§3.1): cells tap every candidate's score into probe[slot].grad
        self.signal = "dense"
        self.probes = {
            slot: torch.zeros(num_layers, len(self.candidates[slot]), requires_grad=True) for slot in SLOTS
        }
        # share of the batch the activation scores use (quant.activation_candidate_scores)
        self.score_fraction = 1.0
        # sensitivity mode: open decisions run in float (no quantization), scores still tapped
        self.float_forward = False

    def parameters(self) -> list[nn.Parameter]:
        """The logits, in a fixed order (``w`` then ``a``), for the logits optimizer."""
        return [self.logits[slot] for slot in SLOTS]

    def grad_tensors(self) -> list[torch.Tensor]:
        """Logits and score probes: every tensor whose ``.grad`` a driver reduces over ranks and unscales."""
        return self.parameters() + [self.probes[slot] for slot in SLOTS]

    def probe(self, slot: str, layer: int, device) -> torch.Tensor:
        """Row ``layer`` of the score probe of ``slot`` (on ``device``), for :class:`~ssps_nni.quant.ScoreTap`."""
        probe = self.probes[slot]
        if probe.device != torch.device(device):
            probe.data = probe.data.to(device)
            if probe.grad is not None:
                probe.grad = probe.grad.to(device)
        return probe[layer]

    def take_scores(self) -> dict[str, torch.Tensor]:
        """The raw per-candidate scores gathered since the last call, ``{slot: (L, n)}``; clears them."""
        out = {}
        for slot in SLOTS:
            probe = self.probes[slot]
            out[slot] = torch.zeros_like(probe.detach()) if probe.grad is None else probe.grad.detach().clone()
            probe.grad = None
        return out

    def probs(self, slot: str, masks: torch.Tensor) -> torch.Tensor:
        """Masked softmax ``p = softmax(alpha)`` over allowed candidates; shape ``(L, n)``.

        Args:
            slot: ``'w'`` or ``'a'``.
            masks: bool ``(L, n)``, True where a candidate is still allowed.
        """
        logits = self.logits[slot]
        masked = logits.masked_fill(~masks.to(logits.device), -math.inf)
        return torch.softmax(masked, dim=-1)

    def sample(self, slot: str, layer: int, mask: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """Draw one path for decision ``(layer, slot)``.

        Gumbel straight-through: ``y = softmax((alpha + g) / tau)``, ``k = argmax(y)``,
        ``h = onehot(k) - stop_grad(y) + y``; returns ``(k, h[k])`` where ``h[k]`` is a 0-dim
        tensor equal to 1 whose gradient reaches every allowed logit of the decision.
        During warm-up ``k`` is uniform over the allowed candidates and ``h`` is None; with the
        dense signal (``signal='dense'``, §3.1) ``h`` is None too: the logits learn from the
        tapped scores, not through the sampled path's residual.

        Args:
            mask: bool ``(n,)`` of allowed candidates.
        """
        allowed = mask.detach().to("cpu", torch.bool)
        if self.uniform:
            choices = allowed.nonzero().flatten()
            pick = torch.randint(len(choices), (1,), generator=self.generator)
            return int(choices[pick]), None
        logits = self.logits[slot][layer]
        u = torch.rand(logits.shape, generator=self.generator).clamp_(1e-10, 1.0 - 1e-7)
        gumbel = -torch.log(-torch.log(u)).to(logits.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.signal != "dense"):
            masked = logits.masked_fill(~allowed.to(logits.device), -math.inf)
            y = torch.softmax((masked + gumbel) / self.tau, dim=-1)
        k = int(y.argmax())
        if self.signal == "dense":
            return k, None
        y_k = y[k]
        return k, (1.0 - y_k).detach() + y_k

    def argmax(self, slot: str, layer: int, mask: torch.Tensor) -> int:
        """The most probable allowed candidate of ``(layer, slot)``, no noise (eval mode)."""
        logits = self.logits[slot][layer].detach()
        masked = logits.masked_fill(~mask.to(logits.device, torch.bool), -math.inf)
        return int(masked.argmax())

    def state_dict(self) -> dict:
        """Logits (as tensors), temperature, warm-up flag and generator state, for resume."""
        return {
            "logits": {slot: self.logits[slot].detach().cpu().clone() for slot in SLOTS},
            "tau": self.tau,
            "uniform": self.uniform,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; logits are copied in place (optimizers keep them)."""
        with torch.no_grad():
            for slot in SLOTS:
                src = state["logits"][slot]
                if src.shape != self.logits[slot].shape:
                    raise ValueError(
                        f"saved {slot}-logits have shape {tuple(src.shape)}, this search space "
                        f"needs {tuple(self.logits[slot].shape)}: the checkpoint is from another model "
                        "or another candidate list"
                    )
                self.logits[slot].copy_(src)
        self.tau = float(state["tau"])
        self.uniform = bool(state["uniform"])
        self.generator.set_state(state["generator"])


class TemperatureSchedule:
    """Exponential annealing ``tau(t) = tau_max * (tau_min / tau_max) ** (t / total)`` (§3).

    >>> TemperatureSchedule(5.0, 0.5, 100)(100)
    0.5
    """

    def __init__(self, tau_max: float = 5.0, tau_min: float = 0.5, total_steps: int = 1):
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_max, self.tau_min, self.total_steps = float(tau_max), float(tau_min), max(int(total_steps), 1)

    def __call__(self, step: int) -> float:
        frac = min(max(step / self.total_steps, 0.0), 1.0)
        return self.tau_max * (self.tau_min / self.tau_max) ** frac
