"""An SSPS policy as a ``config_list`` of NNI 3.0's ``nni.compression`` quantizers (docs/algorithm.md §8).

:func:`policy_to_nni_config_list` turns a :class:`~ssps_nni.policy.Policy` into the
``config_list`` that ``QATQuantizer``, ``LsqQuantizer``, ``PtqQuantizer``, ... take, so a
searched policy can be retrained or deployed with NNI's own quantizers. This module needs
nothing of NNI itself; it lives in the NNI driver because its output is NNI's format.
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..cell import CELL_TYPES, QuantCellMixin
from ..checkpoint import quant_cells
from ..errors import PolicyError
from ..quant import FLOAT_BITS

__all__ = ["policy_to_nni_config_list"]


def _input_signedness(policy, model: nn.Module | None, signed: Mapping[str, bool] | None) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    cells = quant_cells(model) if model is not None else {}
    for name, entry in policy.layers.items():
        if signed is not None and name in signed:
            out[name] = bool(signed[name])
        elif "a_signed" in entry:
            out[name] = bool(entry["a_signed"])
        elif name in cells and int(cells[name].initialized):
            out[name] = bool(int(cells[name].a_signed))
        else:
            out[name] = None
    return out


def policy_to_nni_config_list(
    policy,
    model: nn.Module | None = None,
    *,
    signed: Mapping[str, bool] | None = None,
    quantizer: str = "lsq",
) -> list[dict]:
    """Convert a policy into an NNI 3.0 ``nni.compression`` quantization ``config_list`` (docs/algorithm.md §8).

    One entry per layer with at least one quantized slot, in policy order::

        {'op_names': [name],
         'target_names': ['weight', '_input_'],          # only the quantized slots
         'quant_dtype': 'int{w}',                        # required by NNI's schema; overridden below
         'target_settings': {
             'weight': {'quant_dtype': 'int{w}', 'quant_scheme': 'symmetric',
                        'granularity': 'out_channel'},
             '_input_': {'quant_dtype': 'uint{a}' | 'int{a}', 'quant_scheme': ...,
                         'granularity': 'default'}}}

    Weights: signed, symmetric, per output channel (docs/algorithm.md §2). Inputs: per tensor,
    ``uint{a}`` when the layer's input is non-negative, else ``int{a}``. The input scheme is
    chosen so that NNI's quantizer puts the zero point at 0 like SSPS: ``LsqQuantizer``
    (``quantizer='lsq'``) always uses zero point 0 and accepts only ``'symmetric'``; NNI's
    observer-based quantizers (``'qat'``: ``QATQuantizer``, ``PtqQuantizer``) put a symmetric
    ``uint`` range's zero point at its middle, so ``uint`` inputs get ``'affine'`` there (zero
    point 0 for a non-negative input). 32-bit slots and ``excluded`` layers are left out
    (unquantized). NNI 3.0's ranges (``nni/compression/base/target_space.py``): ``int{b}`` is
    ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, the same as SSPS weights; ``uint{b}`` is ``[0, 2^b - 1]``,
    the same as SSPS unsigned inputs; a signed input loses SSPS's extra code ``-2^(b-1)``.

    Args:
        policy: a :class:`~ssps_nni.policy.Policy`.
        model: optional; a model with calibrated cells supplies each input's sign
            (``a_signed``); a plain model is only used to check the layer names.
        signed: optional ``{layer: bool}`` overriding the input sign.
        quantizer: ``'lsq'`` (default) or ``'qat'`` (also for ``PtqQuantizer``); see above.

    Input sign, first found: ``signed``, the layer's ``a_signed`` key in the policy, the
    calibrated cell of ``model``; unknown signs default to signed (``int{a}``), which never
    clips a negative input.

    Returns:
        The ``config_list`` (list of dicts, JSON-serialisable).

    Raises:
        PolicyError: ``model`` is given and a policy layer is not one of its Conv2d/Linear layers.
        ValueError: unknown ``quantizer``.
    """
    if quantizer not in ("lsq", "qat"):
        raise ValueError(f"quantizer must be 'lsq' or 'qat', got {quantizer!r}")

    if model is not None:
        known = {n for n, m in model.named_modules() if n and (type(m) in CELL_TYPES or isinstance(m, QuantCellMixin))}
        for name, entry in policy.layers.items():
            if name not in known and not entry.get("excluded"):
                raise PolicyError(f"policy layer {name!r} is not a Conv2d/Linear of {type(model).__name__}")
    signs = _input_signedness(policy, model, signed)
    config_list = []
    for name, entry in policy.layers.items():
        if entry.get("excluded"):
            continue
        w_bits, a_bits = int(entry["w_bits"]), int(entry["a_bits"])
        settings = {}
        if w_bits < FLOAT_BITS:
            settings["weight"] = {"quant_dtype": f"int{w_bits}", "quant_scheme": "symmetric",
                                  "granularity": "out_channel"}
        if a_bits < FLOAT_BITS:
            is_signed = True if signs[name] is None else signs[name]
            scheme = "affine" if quantizer == "qat" and not is_signed else "symmetric"
            settings["_input_"] = {"quant_dtype": f"{'' if is_signed else 'u'}int{a_bits}",
                                   "quant_scheme": scheme, "granularity": "default"}
        if settings:
            # NNI's schema requires a top-level ``quant_dtype`` (a shortcut applied to every target
            # first); ``target_settings`` then override it per target.
            first = next(iter(settings.values()))["quant_dtype"]
            config_list.append({"op_names": [name], "target_names": list(settings), "quant_dtype": first,
                                "target_settings": settings})
    return config_list
