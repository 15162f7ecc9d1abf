"""How the exported ONNX stores weights: INT4 packing and the bytes a file's weights take (docs/algorithm.md §8).

:func:`ssps_nni.export.export_onnx` writes every quantized weight as an int8 initializer of
integer codes followed by ``DequantizeLinear``. From opset 21 on, ONNX has the 4-bit types
(``DequantizeLinear``-21 takes ``INT4`` input and zero point), so :func:`pack_int4` rewrites the
codes of weights of at most 4 bits as ``INT4`` (two codes per byte, the first in the low
nibble, as the ONNX spec packs them). :func:`weight_bytes` counts what a file's convolution and
matrix-multiplication weights take, by storage type; :func:`policy_weight_bytes` what the policy
says they take (each weight at its bit-width).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from .checkpoint import quant_cells
from .quant import FLOAT_BITS

__all__ = ["INT4_OPSET", "weights_to_initializers", "pack_int4", "weight_bytes", "policy_weight_bytes"]

#: First opset whose DequantizeLinear takes INT4.
INT4_OPSET = 21
#: Ops whose second input is a weight.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _tensors(graph) -> dict:
    """``{name: TensorProto}`` of the initializers and Constant nodes' values."""
    found = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return found


def _int4_tensor(name: str, values: np.ndarray):
    """An ``INT4`` TensorProto of ``values`` (integers in -8..7), packed two per byte."""
    from onnx import TensorProto

    flat = values.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    packed = ((flat[0::2].astype(np.uint8) & 0x0F) | ((flat[1::2].astype(np.uint8) & 0x0F) << 4)).astype(np.uint8)
    tensor = TensorProto(name=name, data_type=TensorProto.INT4, dims=list(values.shape))
    tensor.raw_data = packed.tobytes()
    return tensor


def _key(array: np.ndarray) -> tuple:
    return array.shape, array.astype(np.int8).tobytes()


def weights_to_initializers(proto) -> int:
    """Move integer weight codes that the exporter left as ``Constant`` nodes into initializers (in place).

    torch's exporter keeps tensors it did not get as parameters (the codes) as ``Constant``
    nodes; as initializers they are what tools list as the model's weights.

    Returns:
        How many were moved.
    """
    from onnx import TensorProto

    graph = proto.graph
    weight_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    keep, moved = [], 0
    for node in graph.node:
        value = node.attribute[0].t if node.op_type == "Constant" and node.attribute else None
        if (value is not None and node.attribute[0].name == "value" and node.output[0] in weight_inputs
                and value.data_type in (TensorProto.INT8, TensorProto.INT4) and len(value.dims) >= 2):
            init = graph.initializer.add()
            init.CopyFrom(value)
            init.name = node.output[0]
            moved += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return moved


def pack_int4(proto, codes: Mapping[str, torch.Tensor], bits: Mapping[str, tuple[int, int]]) -> list[str]:
    """Store the codes of every weight of at most 4 bits as ``INT4`` (in place; opset >= 21).

    A ``DequantizeLinear`` whose input is an int8 tensor equal to a layer's codes is that
    layer's weight (matched by content, not by the exporter's tensor names); its input and a
    zero point of its own become ``INT4``.

    Args:
        proto: the exported ``onnx.ModelProto`` (opset >= :data:`INT4_OPSET`).
        codes: ``{layer: int8 codes (C_out, ...)}`` of the quantized weights.
        bits: ``{layer: (w_bits, a_bits)}``.

    Returns:
        The layers stored as INT4.
    """
    from onnx import TensorProto, numpy_helper

    layers = {}
    for name, value in codes.items():
        layers.setdefault(_key(value.numpy()), []).append(name)
    graph = proto.graph
    tensors = _tensors(graph)
    packed = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in tensors:
            continue
        source = tensors[node.input[0]]
        if source.data_type != TensorProto.INT8:
            continue
        names = layers.get(_key(numpy_helper.to_array(source)), [])
        if not names or max(bits[n][0] for n in names) > 4:
            continue
        int4 = _int4_tensor(source.name, numpy_helper.to_array(source))
        source.CopyFrom(int4)  # the initializer, or the Constant node's value
        channels = int4.dims[0]
        zero = _int4_tensor(f"{node.output[0]}_zero_point_int4", np.zeros(channels, dtype=np.int8))
        graph.initializer.append(zero)
        node.input[2] = zero.name
        packed += names
    return packed


def weight_bytes(proto) -> dict[str, int]:
    """Bytes of the weights of the file's convolutions and matrix multiplications, by storage type.

    A weight is the second input of a Conv/ConvTranspose/Gemm/MatMul, followed back through
    ``DequantizeLinear`` and ``Transpose`` to a stored tensor.

    Returns:
        ``{'int8': ..., 'int4': ..., 'float': ..., 'total': ...}`` in bytes (``float``: the
        weights of layers left in floating point).
    """
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    tensors = _tensors(graph)
    producers = {out: node for node in graph.node for out in node.output}
    out = {"int8": 0, "int4": 0, "float": 0}
    seen = set()
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        while name not in tensors and name in producers and producers[name].op_type in ("DequantizeLinear", "Transpose"):
            name = producers[name].input[0]
        if name not in tensors or name in seen:
            continue
        seen.add(name)
        tensor = tensors[name]
        if tensor.data_type == TensorProto.INT4:
            out["int4"] += (int(np.prod(tensor.dims)) + 1) // 2
        elif tensor.data_type in (TensorProto.INT8, TensorProto.UINT8):
            out["int8"] += int(np.prod(tensor.dims))
        else:
            out["float"] += numpy_helper.to_array(tensor).nbytes
    out["total"] = sum(out.values())
    return out


def policy_weight_bytes(model: nn.Module) -> float:
    """Bytes the fixed model's Conv2d/Linear weights take at the policy's bit-widths (float ones at 32 bits).

    The size cost of docs/algorithm.md §4 counts the same weights (biases excluded).
    """
    total = 0.0
    cells = quant_cells(model)
    for module_name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        cell = cells.get(module_name)
        bits = FLOAT_BITS if cell is None else cell.candidates("w")[cell.fixed_index("w")]
        total += module.weight.numel() * bits / 8
    return total
