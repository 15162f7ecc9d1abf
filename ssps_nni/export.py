"""ONNX export of a fixed mixed-precision model as a QDQ graph (docs/algorithm.md §8).

:func:`export_onnx` writes the fixed model (every cell decided) with integer weights. Each
quantized weight is stored as an **integer initializer** (its codes ``clamp(round(w / s))``,
per output channel) followed by ``DequantizeLinear`` (``axis=0``, zero point 0), so the file
holds 1 byte per weight (int8), or half a byte (INT4) for weights of at most 4 bits when the
opset is 21 or later (:mod:`ssps_nni.onnx_storage`). Each quantized layer input gets
``QuantizeLinear -> [Clip] -> DequantizeLinear`` per tensor (uint8 when the cell's
``a_signed`` is 0, else int8, zero point 0). A bit-width ``b < 8`` keeps the 8-bit storage type:
weight codes lie in the ``b``-bit range by construction, inputs are clipped to it
(docs/algorithm.md §2), e.g. a 3-bit unsigned input: ``QuantizeLinear(uint8) -> Clip(0, 7) ->
DequantizeLinear``; an 8-bit input needs no Clip. Bit-width 32 stays float (no nodes).
The model's ``metadata_props`` hold ``ssps.bits`` = JSON ``{layer: [w_bits, a_bits]}`` and
``ssps.a_signed`` = JSON ``{layer: bool}``; :func:`read_onnx_bits` reads the bits back.

The ONNX graph is produced by an export mode of the cells (:func:`onnx_export_mode`): for the
duration of ``torch.onnx.export`` each cell's forward calls :class:`DequantizeWeight` on its
weight codes and :class:`QuantDequant` on its input, ``autograd.Function`` s whose ``symbolic``
emits the nodes. torch's own ``fake_quantize_per_*_affine`` symbolics refuse ranges other than
(0, 255) / (-128, 127), so they cannot carry a 2..7-bit range. The legacy TorchScript exporter
(``dynamo=False``) is used: the dynamo exporter needs ``onnxscript``, which the pinned
environment does not install.

Related: loading a checkpoint into the fixed model (:mod:`ssps_nni.checkpoint`), calibrating
step sizes it lacks (:mod:`ssps_nni.calibrate`), and NNI's ``config_list`` for a policy
(``ssps_nni.nni.config_list``, in the NNI driver).
"""
from __future__ import annotations

import contextlib
import io
import warnings
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cell import QuantCellMixin, conv_forward
from .checkpoint import quant_cells
from .errors import ExportError
from .onnx_storage import INT4_OPSET, pack_int4, weights_to_initializers
from .files import atomic_write
from .quant import FLOAT_BITS, activation_qrange, fake_quantize, weight_qrange

__all__ = [
    "ExportError", "QuantDequant", "onnx_export_mode", "export_onnx", "read_onnx_bits",
    "DEFAULT_OPSET", "MIN_OPSET",
]

#: Default ONNX opset. 13 is the first with per-axis QuantizeLinear and int8 Clip; 21 the first
#: with INT4 (weights of <= 4 bits stored in half a byte).
DEFAULT_OPSET = 17
MIN_OPSET = 13
#: Widest integer bit-width that fits the 8-bit QuantizeLinear storage types of opset < 21.
MAX_INT_BITS = 8
#: ``metadata_props`` keys written by :func:`export_onnx`.
META_BITS = "ssps.bits"
META_SIGNED = "ssps.a_signed"
META_FORMAT = "ssps.format"
ONNX_FORMAT = "ssps-onnx-qdq/1"


# -- QDQ autograd function ------------------------------------------------------------------


class QuantDequant(torch.autograd.Function):
    """``clamp(round(x / scale), quant_min, quant_max) * scale`` with an ONNX QDQ symbolic.

    Forward (zero point 0, round half to even as ``torch.round``)::

        x_q = clamp(round(x / scale), quant_min, quant_max) * scale

    ONNX (``symbolic``)::

        QuantizeLinear(x, scale, zero_point[, axis]) -> Clip(quant_min, quant_max)
            -> DequantizeLinear(., scale, zero_point[, axis])

    The Clip is left out when ``(quant_min, quant_max)`` is the full range of the storage
    type. Export only; no backward.

    Args (of ``apply``):
        x: tensor to quantize, e.g. a weight ``(C_out, ...)`` or an input ``(N, C, H, W)``.
        scale: float32 step size, ``(C_out,)`` when ``axis`` is given, else a 0-dim tensor.
        zero_point: zeros of the storage type (int8 or uint8), shaped like ``scale``.
        quant_min, quant_max: the integer range (within the storage type's range).
        axis: the channel axis of a per-channel scale, or ``None`` for per tensor.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, quant_min: int, quant_max: int, axis):  # noqa: D102
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis] = -1
            scale = scale.reshape(shape)
        return fake_quantize(x, scale, quant_min, quant_max)

    @staticmethod
    def symbolic(g, x, scale, zero_point, quant_min: int, quant_max: int, axis):  # noqa: D102
        kwargs = {} if axis is None else {"axis_i": axis}
        q = g.op("QuantizeLinear", x, scale, zero_point, **kwargs)
        dtype = QuantDequant._storage_dtype(quant_min)
        info = torch.iinfo(dtype)
        if (quant_min, quant_max) != (info.min, info.max):
            lo = g.op("Constant", value_t=torch.tensor(quant_min, dtype=dtype))
            hi = g.op("Constant", value_t=torch.tensor(quant_max, dtype=dtype))
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, scale, zero_point, **kwargs)

    @staticmethod
    def _storage_dtype(quant_min: int) -> torch.dtype:
        return torch.int8 if quant_min < 0 else torch.uint8


class DequantizeWeight(torch.autograd.Function):
    """Integer weight codes times their per-channel step: ``codes * scale``, exported as
    ``DequantizeLinear(codes, scale, zero_point, axis)`` on an integer initializer.

    Args (of ``apply``):
        codes: int8 codes ``(C_out, ...)``, ``clamp(round(w / scale), q_min, q_max)``.
        scale: float32 step sizes ``(C_out,)``.
        zero_point: int8 zeros ``(C_out,)``.
        axis: the channel axis of ``scale`` (0).
    """

    @staticmethod
    def forward(ctx, codes, scale, zero_point, axis: int):  # noqa: D102
        shape = [1] * codes.dim()
        shape[axis] = -1
        return codes.to(scale.dtype) * scale.reshape(shape)

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis: int):  # noqa: D102
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


def weight_codes(cell: QuantCellMixin, bits: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed weight as integer codes and per-channel steps: ``codes * scale`` is exactly the
    fake-quantized weight the model computes (same division and rounding as ``quant.fake_quantize``).

    Returns:
        ``(codes, scale)``: int8 ``(C_out, ...)`` in the ``bits``-bit range, float32 ``(C_out,)``.

    Raises:
        ExportError: the stored step is not one per output channel.
    """
    q_min, q_max = weight_qrange(bits)
    k = cell.fixed_index("w")
    # quant.scale_grad's forward value is exactly the stored step, so export it as is
    scale = cell.w_scale[k].detach().abs().clamp_min(1e-8).float().clone()
    weight = cell.weight.detach().float()
    if scale.shape != (weight.shape[0],):
        raise ExportError(f"layer {name!r}: w_scale row has shape {tuple(scale.shape)}, expected ({weight.shape[0]},)")
    step = scale.reshape([-1] + [1] * (weight.dim() - 1))
    codes = torch.clamp(torch.round(weight / step), q_min, q_max).to(torch.int8)
    return codes, scale


def _input_qdq_args(cell: QuantCellMixin, bits: int):
    signed = bool(int(cell.a_signed))
    q_min, q_max = activation_qrange(bits, signed)
    k = cell.fixed_index("a")
    scale = cell.a_scale[k].detach().abs().clamp_min(1e-8).float().clone().reshape(())
    zero = torch.zeros((), dtype=torch.int8 if signed else torch.uint8)
    return scale, zero, q_min, q_max, None


def _make_export_forward(cell: QuantCellMixin, name: str, w_bits: int, a_bits: int):
    w_args = None
    if w_bits < FLOAT_BITS:
        codes, scale = weight_codes(cell, w_bits, name)
        w_args = (codes, scale, torch.zeros_like(scale, dtype=torch.int8), 0)
    a_args = _input_qdq_args(cell, a_bits) if a_bits < FLOAT_BITS else None
    if isinstance(cell, nn.Conv2d):
        def run(x, w):
            return conv_forward(cell, x, w, cell.bias)
    elif isinstance(cell, nn.Linear):
        def run(x, w):
            return F.linear(x, w, cell.bias)
    else:
        raise ExportError(f"layer {name!r}: ONNX export supports Conv2d and Linear cells, not {type(cell).__name__}")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if a_args is not None:
            x = QuantDequant.apply(x, *a_args)
        w = cell.weight if w_args is None else DequantizeWeight.apply(*w_args)
        return run(x, w)

    return forward


def _check_decided(name: str, cell: QuantCellMixin) -> None:
    for slot, what in (("w", "weight"), ("a", "activation")):
        if cell.fixed_index(slot) < 0:
            open_ = [b for b, m in zip(cell.candidates(slot), cell.mask(slot).tolist()) if m]
            raise ExportError(
                f"layer {name!r} has an undecided {what} bit-width (candidates still open: {open_}); "
                "export needs a fixed model: finish the search or build it with "
                "ssps_nni.apply_policy.apply_policy(model, policy)"
            )


def _check_cell(name: str, cell: QuantCellMixin) -> tuple[int, int]:
    bits = []
    for slot, what in (("w", "weight"), ("a", "activation")):
        k = cell.fixed_index(slot)
        if k < 0:
            open_ = [b for b, m in zip(cell.candidates(slot), cell.mask(slot).tolist()) if m]
            raise ExportError(
                f"layer {name!r} has an undecided {what} bit-width (candidates still open: {open_}); "
                "export needs a fixed model: finish the search or build it with "
                "ssps_nni.apply_policy.apply_policy(model, policy)"
            )
        b = cell.candidates(slot)[k]
        if MAX_INT_BITS < b < FLOAT_BITS:
            raise ExportError(
                f"layer {name!r}: {what} bit-width {b} does not fit ONNX QuantizeLinear's 8-bit storage; "
                f"accepted: 2..{MAX_INT_BITS} (weights), 1..{MAX_INT_BITS} (activations) or {FLOAT_BITS} (float)"
            )
        bits.append(b)
    if (bits[0] < FLOAT_BITS or bits[1] < FLOAT_BITS) and not int(cell.initialized):
        raise ExportError(
            f"layer {name!r} has uncalibrated step sizes (initialized=0); load a quantized checkpoint "
            "or run calibration forwards (e.g. a few batches in eval mode) before exporting"
        )
    return bits[0], bits[1]


@contextlib.contextmanager
def onnx_export_mode(model: nn.Module) -> Iterator[dict[str, tuple[int, int]]]:
    """Make every cell of ``model`` run :class:`QuantDequant` (QDQ-exportable) inside the block.

    The model is put in eval mode for the block; its forward results equal the fake-quantized
    model's (the same step sizes and rounding; see :func:`export_onnx`). Forwards and
    training flags are restored on exit, also on error.

    Yields:
        ``{name: (w_bits, a_bits)}`` of every cell, in module order.

    Raises:
        ExportError: no cell; a cell with an open decision (names the layer), with uncalibrated
            step sizes, or with a bit-width in 9..31.
    """
    cells = quant_cells(model)
    if not cells:
        raise ExportError(
            f"{type(model).__name__} has no quantization cell; build the fixed model with "
            "ssps_nni.apply_policy.apply_policy(model, policy) first"
        )
    for name, cell in cells.items():  # every open decision first: the most useful message
        _check_decided(name, cell)
    bits = {name: _check_cell(name, cell) for name, cell in cells.items()}
    forwards = {name: _make_export_forward(cell, name, *bits[name]) for name, cell in cells.items()}
    modes = {m: m.training for m in model.modules()}
    patched = []
    try:
        model.eval()
        for name, cell in cells.items():
            cell.forward = forwards[name]  # instance attribute shadows the class forward
            patched.append(cell)
        yield bits
    finally:
        for cell in patched:
            del cell.forward
        for m, mode in modes.items():
            m.training = mode


# -- ONNX export ----------------------------------------------------------------------------


def _require_onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - environment dependent
        raise ImportError(
            "ONNX export needs the 'onnx' package (pinned: onnx==1.17.0, extra 'export' of ssps-nni)"
        ) from None
    return onnx


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export a fixed mixed-precision model to ONNX with integer weights and QDQ inputs.

    Every cell must be decided (:func:`ssps_nni.apply_policy.apply_policy` builds such a model) and
    calibrated. Per quantized weight ``(C_out, ...)``: an integer initializer of its codes in
    ``[-(2^(b-1)-1), 2^(b-1)-1]`` (int8; INT4 for ``b <= 4`` from opset 21 on) and one
    ``DequantizeLinear`` per channel (``axis=0``, zero point 0): the file holds no float copy of
    a quantized weight. Per quantized layer input: one QDQ pair per tensor, uint8 (or int8 when
    ``a_signed``), clipped to the ``b``-bit range. 32-bit slots stay float. Bits go to
    ``metadata_props`` (``ssps.bits``, ``ssps.a_signed``).

    Numerics: the weight codes are computed as the fake quantizer computes them, so
    ``DequantizeLinear`` gives exactly its weight. QuantizeLinear rounds half to even, as
    ``torch.round`` does, and both divide by the same float32 step size (``quant.scale_grad``'s
    forward value is exactly the stored step, and that step is exported), so the input codes
    match the PyTorch fake-quantized model except where float32 accumulation order differs between the PyTorch and the ONNX Runtime
    convolutions (about 1e-6 relative) and pushes a value across a rounding boundary of a
    *later* quantizer, which then differs by one step; the logits differ by that much, and agree
    to about 1e-6 otherwise. Measured on the 1,000 CIFAR-10 test images of the shipped subset:
    a ResNet-20 searched and retrained with ``tools/search.py`` / ``tools/train.py`` (tiny
    schedule, ``tests/mmengine/test_retrain_export.py``): top-1 agreement 100 %, median per-image
    ``max |logit diff|`` 3.6e-7, 94 % of images within 1e-3, max 0.096 (logit std 1.14); the
    random-convolution ResNet-20 with a linear-probe classifier and a 2..8/32-bit policy of
    ``tests/export``: 99.6 % (98.6 % before both sides used the stored step exactly), median
    2.4e-6, 94 % within 1e-3, max 1.31 (logit std 2.60).

    Args:
        model: the fixed model (cells from :func:`ssps_nni.convert.fixed_model`); left unchanged
            (its training flags are restored).
        example_input: one input tensor, e.g. ``(1, 3, 32, 32)`` float, or a tuple of inputs.
        path: output ``.onnx`` file; written atomically (temp file in the same folder, then
            ``os.replace``), so a reader sees the old file or the new one.
        opset: ONNX opset, at least 13 (per-axis QuantizeLinear, int8 Clip); from 21 on, weights
            of at most 4 bits are stored as INT4 (:func:`ssps_nni.onnx_storage.pack_int4`). An
            opset above the newest that torch exports is reached with ``onnx.version_converter``.
        input_names, output_names: graph input/output names.
        dynamic_batch: make dimension 0 of inputs and outputs symbolic (``batch``).
        metadata: extra ``metadata_props`` (string keys and values).

    Returns:
        The written path.

    Raises:
        ExportError: opset below 13, no cell, an undecided or uncalibrated cell (names the layer),
            a bit-width in 9..31.
        ImportError: the ``onnx`` package is missing.
    """
    onnx = _require_onnx()
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset {opset!r} is too old: per-axis QuantizeLinear needs opset >= {MIN_OPSET}")
    args = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    input_names, output_names = list(input_names), list(output_names)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in input_names + output_names}
    buf = io.BytesIO()
    from torch.onnx import _constants

    # the TorchScript exporter writes up to opset 20 (torch 2.9); a later one is converted to by onnx
    traced_opset = min(opset, getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
    with onnx_export_mode(model) as bits, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        cells = quant_cells(model)
        signed = {name: bool(int(cell.a_signed)) for name, cell in cells.items()}
        codes = {name: weight_codes(cells[name], b[0], name)[0] for name, b in bits.items() if b[0] < FLOAT_BITS}
        torch.onnx.export(
            model, args, buf, opset_version=traced_opset, input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if opset > traced_opset:
        from onnx import version_converter

        proto = version_converter.convert_version(proto, opset)
    if opset >= INT4_OPSET:
        pack_int4(proto, codes, bits)
    weights_to_initializers(proto)
    props = {
        META_FORMAT: ONNX_FORMAT,
        META_BITS: json.dumps({name: list(b) for name, b in bits.items()}),
        META_SIGNED: json.dumps(signed),
        **{str(k): str(v) for k, v in (metadata or {}).items()},
    }
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return atomic_write(Path(path), proto.SerializeToString())


def read_onnx_bits(path_or_model) -> dict[str, tuple[int, int]]:
    """``{layer: (w_bits, a_bits)}`` from the ``ssps.bits`` metadata of an exported model.

    Raises:
        ExportError: the model has no ``ssps.bits`` entry.
    """
    onnx = _require_onnx()
    proto = path_or_model if hasattr(path_or_model, "metadata_props") else onnx.load(str(path_or_model))
    for p in proto.metadata_props:
        if p.key == META_BITS:
            return {k: (int(v[0]), int(v[1])) for k, v in json.loads(p.value).items()}
    raise ExportError(f"ONNX model has no {META_BITS!r} metadata; was it exported by ssps_nni.export?")
