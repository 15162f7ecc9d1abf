"""The single path search cell for ``nn.Conv2d`` and ``nn.Linear`` (docs/algorithm.md §3).

A cell *is* the layer it wraps (it subclasses ``nn.Conv2d`` / ``nn.Linear`` and takes over the
same ``weight`` and ``bias`` Parameter objects), so module paths, parameter names, optimizers
already built and ``init_cfg`` rules keep working, and a full-precision checkpoint loads into it.

Per forward, each of its two decisions (weight bits ``w``, input-activation bits ``a``) is in
one of three modes:

- fixed: the decision is made (one candidate left in its mask); that candidate runs, the
  logits are not read;
- search (``module.train()``): the :class:`~ssps_nni.sampler.PathSampler` draws one path by
  Gumbel straight-through, and only that path is computed;
- eval (``module.eval()``): the argmax path, no noise.

The logits get their gradient through the quantization residual
``v + h * (Q(v) - v)`` (forward value ``Q(v)``), never through a scale on the output, which a
following train-mode BatchNorm would cancel (§3).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .quant import (
    FLOAT_BITS,
    ScoreTap,
    activation_candidate_scores,
    weight_candidate_scores,
    init_activation_scale,
    init_weight_scale,
    quantize_activation,
    quantize_weight,
)
from .sampler import SLOTS, PathSampler


class QuantCellMixin:
    """State and forward logic shared by :class:`QuantConv2d` and :class:`QuantLinear`.

    Parameters (join the task optimizer, weight decay 0):
        w_scale: ``(len(B_w), C_out)`` per-channel weight step size per candidate.
        a_scale: ``(len(B_a),)`` per-tensor input step size per candidate.
    Buffers (travel in ``state_dict`` and across ranks; uint8 because NCCL has no bool):
        w_mask, a_mask: ``(n,)`` allowed candidates; one left means decided.
        a_signed: 1 if calibration saw a negative input.
        initialized: 1 once the step sizes were initialised from data.
    """

    w_candidates: tuple[int, ...]
    a_candidates: tuple[int, ...]

    def init_cell(self, w_candidates, a_candidates) -> None:
        """Add the quantizer state to a just-built layer (every candidate allowed, step sizes 1).

        Args: w_candidates, a_candidates: the weight and input bit-widths, in candidate order.
        """
        self.w_candidates = tuple(int(b) for b in w_candidates)
        self.a_candidates = tuple(int(b) for b in a_candidates)
        channels = self.weight.shape[0]
        device = self.weight.device
        self.w_scale = nn.Parameter(torch.ones(len(self.w_candidates), channels, device=device))
        self.a_scale = nn.Parameter(torch.ones(len(self.a_candidates), device=device))
        self.register_buffer("w_mask", torch.ones(len(self.w_candidates), dtype=torch.uint8, device=device))
        self.register_buffer("a_mask", torch.ones(len(self.a_candidates), dtype=torch.uint8, device=device))
        self.register_buffer("a_signed", torch.zeros((), dtype=torch.uint8, device=device))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8, device=device))
        self._search: tuple[PathSampler, int] | None = None
        self._fixed_cache: dict[str, int] | None = None
        self.calibrating = False
        self._calib: list[float] | None = None
        self._forced: dict[str, int] = {}  # slot -> candidate index (-1: float) run by operand_at
        self.last_path: dict[str, int] = {}

    # -- decisions ---------------------------------------------------------------------------

    def candidates(self, slot: str) -> tuple[int, ...]:
        return self.w_candidates if slot == "w" else self.a_candidates

    def mask(self, slot: str) -> torch.Tensor:
        """Bool ``(n,)`` of candidates still allowed for ``slot`` (``'w'`` or ``'a'``).

        Read it, do not write it: the tensor is cached until the uint8 buffer changes (a new
        buffer object, or an in-place write that bumps its version). Change a mask with
        :meth:`set_mask`. The search reads masks hundreds of times per step.
        """
        buf = getattr(self, slot + "_mask")
        cache = self.__dict__.setdefault("_mask_cache", {})
        hit = cache.get(slot)
        if hit is None or hit[0] is not buf or hit[1] != buf._version:
            hit = cache[slot] = (buf, buf._version, buf.bool())
        return hit[2]

    def host(self, name: str):
        """Buffer ``name`` on the host: a mask as a CPU bool tensor, a 0-dim flag (``a_signed``,
        ``initialized``) as an int. Cached until the buffer changes, as :meth:`mask`: reading a CUDA
        buffer costs a device sync, and the forward reads these for every cell."""
        buf = getattr(self, name)
        cache = self.__dict__.setdefault("_host_cache", {})
        hit = cache.get(name)
        if hit is None or hit[0] is not buf or hit[1] != buf._version:
            value = int(buf) if buf.dim() == 0 else buf.detach().to("cpu", torch.bool)
            hit = cache[name] = (buf, buf._version, value)
        return hit[2]

    def set_mask(self, slot: str, allowed: torch.Tensor) -> None:
        """Restrict ``slot`` to the candidates where ``allowed`` is True (at least one)."""
        allowed = torch.as_tensor(allowed, dtype=torch.bool)
        if not allowed.any():
            raise ValueError(f"cannot remove every candidate of slot {slot!r}")
        getattr(self, f"{slot}_mask").copy_(allowed.to(torch.uint8))
        self._fixed_cache = None

    def fix(self, slot: str, index: int) -> None:
        """Decide ``slot``: keep only candidate ``index``."""
        allowed = torch.zeros(len(self.candidates(slot)), dtype=torch.bool)
        allowed[index] = True
        self.set_mask(slot, allowed)

    def fixed_index(self, slot: str) -> int:
        """The decided candidate index of ``slot``, or -1 while it is open."""
        if self._fixed_cache is None:
            cache = {}
            for s in SLOTS:
                m = self.host(s + "_mask")
                cache[s] = int(m.nonzero()[0]) if int(m.sum()) == 1 else -1
            self._fixed_cache = cache
        return self._fixed_cache[slot]

    def bits(self) -> tuple[int, int]:
        """``(w_bits, a_bits)`` of the decided or, if open, the argmax path."""
        out = []
        for slot in SLOTS:
            k = self.fixed_index(slot)
            if k < 0:
                sampler, layer = self._require_sampler()
                k = sampler.argmax(slot, layer, self.host(slot + "_mask"))
            out.append(self.candidates(slot)[k])
        return out[0], out[1]

    def attach(self, sampler: PathSampler | None, layer: int = -1) -> None:
        """Let ``sampler`` pick the paths of this cell's open decisions (row ``layer`` of its logits)."""
        self._search = None if sampler is None else (sampler, layer)

    @property
    def attachment(self) -> tuple[PathSampler, int] | None:
        """``(sampler, layer)`` given to :meth:`attach`, or None when no sampler is attached."""
        return self._search

    def _require_sampler(self) -> tuple[PathSampler, int]:
        if self._search is None:
            raise RuntimeError(
                f"{type(self).__name__} has an open decision but no PathSampler attached; "
                "build it with ssps_nni.convert.convert_model or fix its bits first"
            )
        return self._search

    def _load_from_state_dict(self, *args, **kwargs):
        self._fixed_cache = None
        return super()._load_from_state_dict(*args, **kwargs)

    def _path(self, slot: str) -> tuple[int, torch.Tensor | None]:
        k = self.fixed_index(slot)
        if k >= 0:
            return k, None
        sampler, layer = self._require_sampler()
        if sampler.float_forward:
            return -1, None
        if self.training:
            return sampler.sample(slot, layer, self.host(slot + "_mask"))
        return sampler.argmax(slot, layer, self.host(slot + "_mask")), None

    # -- step sizes --------------------------------------------------------------------------

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        stats = [float(x.abs().sum()), float(x.numel()), float(x.min())]
        if self._calib is None:
            self._calib = stats
        else:
            self._calib = [self._calib[0] + stats[0], self._calib[1] + stats[1], min(self._calib[2], stats[2])]

    def clear_calibration(self) -> None:
        """Forget the input statistics recorded so far (a pass that was not a calibration)."""
        self._calib = None

    def calibration_stats(self) -> torch.Tensor | None:
        """``[sum |x|, numel, min x]`` of the inputs seen while calibrating (float64), or None."""
        return None if self._calib is None else torch.tensor(self._calib, dtype=torch.float64)

    @torch.no_grad()
    def init_scales(self, stats: torch.Tensor | None = None) -> None:
        """Initialise the step sizes (LSQ init, §2) and the activation sign from ``stats``.

        Args:
            stats: ``[sum |x|, numel, min x]``; default: what :meth:`calibration_stats` recorded.
                A driver all-reduces them first under data parallel training. With ``numel`` 0
                nothing is initialised (``initialized`` stays 0: the first forward does it).
        """
        stats = self.calibration_stats() if stats is None else stats
        if stats is None:
            raise RuntimeError("init_scales needs calibration statistics: run a forward while calibrating")
        if float(stats[1]) <= 0:  # the calibration never reached this layer: init from its first batch
            self._calib = None
            return
        mean_abs = float(stats[0] / max(float(stats[1]), 1.0))
        signed = bool(float(stats[2]) < 0)
        self.a_signed.fill_(int(signed))
        for i, b in enumerate(self.w_candidates):
            self.w_scale[i].copy_(init_weight_scale(self.weight, b))
        for j, b in enumerate(self.a_candidates):
            self.a_scale[j].fill_(init_activation_scale(mean_abs, b, signed))
        self.initialized.fill_(1)
        self._calib = None

    # -- forward -----------------------------------------------------------------------------

    def _quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calibrating:
            self._observe(x)
            return x, self.weight
        if not self.host("initialized"):
            self._observe(x)  # lazy LSQ init from the first batch when nobody calibrated
            self.init_scales()
        return self._operand("a", x), self._operand("w", self.weight)

    def _operand(self, slot: str, v: torch.Tensor) -> torch.Tensor:
        """The quantized weight or input along this forward's path (§3), tapped for scores (§3.1).

        Forward value: exactly ``Q_k(v)`` (the fixed policy's value at the same bits), or with
        the sampled signal ``v + h * (Q_k(v) - v)``. An open decision in training mode with the
        dense signal is tapped: the quantizer's own backward (or a :class:`~ssps_nni.quant.ScoreTap`
        where no quantizer runs) also gives ``<dL/dv_q, Q_j(v) - v>`` for every candidate ``j``.
        In the sampler's ``float_forward`` mode (sensitivity measurement) an open decision runs
        in float.
        """
        if slot in self._forced:  # operand_at: this candidate, no sampling, tap or residual
            self.last_path[slot] = k = self._forced[slot]
            return v if k < 0 else self._quantize(slot, v, k)
        k, h = self._path(slot)
        self.last_path[slot] = k
        open_ = self._search is not None and self.fixed_index(slot) < 0
        sampler = self._search[0] if open_ else None
        tap = None
        if sampler is not None and self.training and sampler.signal == "dense" and torch.is_grad_enabled():
            tap = (sampler.probe(slot, self._search[1], v.device), self._score_fn(slot))
        if sampler is not None and sampler.float_forward:
            return v if tap is None else ScoreTap.apply(v, v, *tap)
        if h is None or self.candidates(slot)[k] >= FLOAT_BITS:
            return self._quantize(slot, v, k, tap)
        v_q = v + h.to(v.dtype) * (self._quantize(slot, v, k) - v)
        return v_q if tap is None else ScoreTap.apply(v_q, v, *tap)

    def _quantize(self, slot: str, v: torch.Tensor, k: int, tap=None) -> torch.Tensor:
        bits = self.candidates(slot)[k]
        if bits >= FLOAT_BITS:
            return v if tap is None else ScoreTap.apply(v, v, *tap)
        if slot == "w":
            return quantize_weight(v, self.w_scale[k].abs().clamp_min(1e-8), bits, tap)
        return quantize_activation(v, self.a_scale[k].abs().clamp_min(1e-8), bits, bool(self.host("a_signed")), tap)

    @contextlib.contextmanager
    def operand_at(self, slot: str, index: int):
        """Inside the block, run operand ``slot`` (``'w'`` or ``'a'``) at candidate ``index`` (-1: float).

        The operand is exactly ``Q_index(v)`` (or ``v``): no sampling, score tap or residual; the
        other operand runs as it would. Restored on exit, even on an error.
        """
        self._forced[slot] = index
        try:
            yield
        finally:
            del self._forced[slot]

    def _score_fn(self, slot: str):
        bits, allowed = self.candidates(slot), self.host(slot + "_mask")
        if slot == "w":
            scales = self.w_scale
            return lambda v, g: weight_candidate_scores(v, g, scales, bits, allowed)
        scales, signed = self.a_scale, bool(self.host("a_signed"))
        fraction = self._search[0].score_fraction
        return lambda v, g: activation_candidate_scores(v, g, scales, bits, signed, allowed, fraction)


def conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv``'s convolution of ``x`` with ``weight`` and ``bias``, as ``nn.Conv2d.forward`` computes it.

    Same stride, padding (a number, a pair, ``'valid'`` or ``'same'``), padding mode, dilation and
    groups. ``x`` ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``.
    """
    if conv.padding_mode == "zeros":
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if isinstance(conv.padding, str):  # 'valid': none; 'same': the extra pixel goes right/bottom
        total = [d * (k - 1) if conv.padding == "same" else 0 for d, k in zip(conv.dilation, conv.kernel_size)]
        pad = [p for t in reversed(total) for p in (t // 2, t - t // 2)]
    else:
        pad = [p for p in reversed(conv.padding) for _ in range(2)]
    return F.conv2d(F.pad(x, pad, mode=conv.padding_mode), weight, bias, conv.stride, 0, conv.dilation, conv.groups)


class QuantConv2d(QuantCellMixin, nn.Conv2d):
    """Single path search cell for ``nn.Conv2d`` (grouped and depthwise included).

    Input ``(N, C_in, H, W)``, output ``(N, C_out, H', W')``; one convolution per forward.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_candidates, a_candidates) -> "QuantConv2d":
        """Wrap ``conv``, taking over its ``weight``/``bias`` Parameter objects."""
        cell = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta",
        )
        cell.weight = conv.weight
        cell.bias = conv.bias
        cell.train(conv.training)
        cell.init_cell(w_candidates, a_candidates)
        return cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized_operands(x)
        return conv_forward(self, x, w, self.bias)


class QuantLinear(QuantCellMixin, nn.Linear):
    """Single path search cell for ``nn.Linear``. Input ``(N, *, in)``, output ``(N, *, out)``."""

    @classmethod
    def from_float(cls, linear: nn.Linear, w_candidates, a_candidates) -> "QuantLinear":
        """Wrap ``linear``, taking over its ``weight``/``bias`` Parameter objects."""
        cell = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        cell.weight = linear.weight
        cell.bias = linear.bias
        cell.train(linear.training)
        cell.init_cell(w_candidates, a_candidates)
        return cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized_operands(x)
        return F.linear(x, w, self.bias)


# Float layer type -> cell type. Exact types only: a subclass may override forward.
CELL_TYPES: dict[type, type] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def register_cell_type(float_type: type, cell_type: type) -> None:
    """Make layers of exactly ``float_type`` quantizable with ``cell_type.from_float``."""
    CELL_TYPES[float_type] = cell_type
