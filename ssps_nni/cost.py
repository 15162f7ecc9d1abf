"""Layer profiling, cost models, expected cost and budgets (docs/algorithm.md §4).

Costs per layer at ``(b_w, b_a)``:

=============  ==========================================================  ==========
name           formula                                                     unit
=============  ==========================================================  ==========
``bitops``     ``macs * b_w * b_a``                                        BitOPs
``size``       ``weight_params * b_w + bias_params * 32``                  bits (MB shown)
``bitfusion``  ``macs * ceil(b_w / 2) * ceil(b_a / 2)``                    2-bit bricks
``lut``        read from a JSON table, per layer name or op signature      user's unit
=============  ==========================================================  ==========

The model total is the sum over layers; pinned layers count at their fixed bits.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import BudgetError, LutError, LutMissingError, UnknownCostError
from .quant import FLOAT_BITS


@dataclass(frozen=True)
class LayerProfile:
    """What one layer costs per input sample, from a profiling forward pass.

    Attributes:
        name: module path. kind: ``'conv'`` or ``'linear'``.
        macs: multiply-accumulates per input sample (conv: output elements x C_in/groups x kH x kW;
            linear: output elements x in_features).
        weight_params, bias_params: element counts.
        signature: op signature for LUT look-up, e.g. ``conv_64_64_k3x3_s1_g1`` or ``linear_512_10``.
    """

    name: str
    kind: str
    macs: float
    weight_params: int
    bias_params: int
    signature: str


def layer_signature(layer: nn.Module) -> str:
    """Op signature of a Conv2d/Linear, the key of a LUT's ``signatures`` table."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return f"conv_{layer.in_channels}_{layer.out_channels}_k{kh}x{kw}_s{layer.stride[0]}_g{layer.groups}"
    return f"linear_{layer.in_features}_{layer.out_features}"


def profile_layers(
    model: nn.Module, layers: Mapping[str, nn.Module], forward_fn: Callable[[], object], num_samples: int
) -> dict[str, LayerProfile]:
    """Profile ``layers`` of ``model`` with forward hooks during ``forward_fn()`` (no grad).

    Args:
        layers: ``{name: Conv2d or Linear}``, e.g. ``SearchSpace.cells``.
        forward_fn: runs the model on representative input (for a detector: its test scale).
        num_samples: how many input samples ``forward_fn`` processes; MACs are divided by it,
            so a RoI head run on hundreds of boxes per image is still counted per image.

    Returns:
        ``{name: LayerProfile}``. A layer never called gets ``macs = 0``.
    """
    macs = {name: 0.0 for name in layers}

    def make_hook(name, layer):
        def hook(module, inputs, output):
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                macs[name] += output.numel() * (layer.in_channels // layer.groups) * kh * kw
            else:
                macs[name] += output.numel() * layer.in_features
        return hook

    handles = [layer.register_forward_hook(make_hook(n, layer)) for n, layer in layers.items()]
    try:
        with torch.no_grad():
            forward_fn()
    finally:
        for h in handles:
            h.remove()
    return {
        name: LayerProfile(
            name=name,
            kind="conv" if isinstance(layer, nn.Conv2d) else "linear",
            macs=macs[name] / max(num_samples, 1),
            weight_params=layer.weight.numel(),
            bias_params=0 if layer.bias is None else layer.bias.numel(),
            signature=layer_signature(layer),
        )
        for name, layer in layers.items()
    }


class CostModel:
    """A per-layer cost ``C_l(b_w, b_a)``. Subclasses set ``name``, ``unit`` and ``layer_cost``."""

    name = ""
    unit = ""

    def layer_cost(self, profile: LayerProfile, w_bits: int, a_bits: int) -> float:
        raise NotImplementedError

    def format(self, value: float) -> str:
        return f"{value:.4g}"


class BitOpsCost(CostModel):
    """``macs * b_w * b_a`` BitOPs."""

    name, unit = "bitops", "BitOPs"

    def layer_cost(self, profile, w_bits, a_bits):
        return float(profile.macs) * w_bits * a_bits

    def format(self, value):
        return f"{value / 1e9:.4g} GBitOPs"


class SizeCost(CostModel):
    """``weight_params * b_w + bias_params * 32`` bits (activation bits do not matter)."""

    name, unit = "size", "bits"

    def layer_cost(self, profile, w_bits, a_bits):
        return float(profile.weight_params * w_bits + profile.bias_params * FLOAT_BITS)

    def format(self, value):
        return f"{value / 8e6:.4g} MB"


class BitFusionCost(CostModel):
    """``macs * ceil(b_w/2) * ceil(b_a/2)``: 2-bit bricks of BitFusion (Sharma et al., ISCA 2018)."""

    name, unit = "bitfusion", "bricks"

    def layer_cost(self, profile, w_bits, a_bits):
        return float(profile.macs) * math.ceil(w_bits / 2) * math.ceil(a_bits / 2)


class LutCost(CostModel):
    """Latency or energy read from a JSON look-up table.

    Format::

        {"unit": "ms",
         "layers": {"layer1.0.conv1": {"w4a4": 0.12, "w8a8": 0.30, ...}},
         "signatures": {"conv_64_64_k3x3_s1_g1": {"w4a4": 0.12, ...}}}

    A layer name entry wins over its signature entry.

    Raises:
        LutMissingError: neither a path nor a table. LutError: unreadable file, not a LUT, or a
            layer/bit pair with no entry (both are ``BudgetError``).
    """

    name = "lut"

    def __init__(self, path: str | Path | None = None, table: Mapping | None = None):
        if table is None:
            if path is None:
                raise LutMissingError("the 'lut' cost needs a JSON table: cost_options={'lut': {'path': 'lut.json'}}")
            try:
                table = json.loads(Path(path).read_text())
            except (OSError, ValueError) as err:
                raise LutError(f"cannot read LUT file {path}: {err}") from None
        if not isinstance(table, Mapping) or not ({"layers", "signatures"} & set(table)):
            raise LutError("a LUT must be a JSON object with 'layers' and/or 'signatures' tables")
        self.table = table
        self.unit = str(table.get("unit", ""))

    def layer_cost(self, profile, w_bits, a_bits):
        key = f"w{w_bits}a{a_bits}"
        for section, name in (("layers", profile.name), ("signatures", profile.signature)):
            entry = self.table.get(section, {}).get(name)
            if entry is not None and key in entry:
                return float(entry[key])
        raise LutError(
            f"LUT has no entry {key!r} for layer {profile.name!r} (signature {profile.signature!r})"
        )

    def format(self, value):
        return f"{value:.4g} {self.unit}".strip()


COST_MODELS: dict[str, type[CostModel]] = {
    "bitops": BitOpsCost,
    "size": SizeCost,
    "bitfusion": BitFusionCost,
    "lut": LutCost,
}


def build_cost_model(name: str, **options) -> CostModel:
    """Instantiate a registered cost model; raises ``UnknownCostError`` naming the accepted ones."""
    if name not in COST_MODELS:
        raise UnknownCostError(f"unknown cost {name!r}; accepted: {', '.join(COST_MODELS)}")
    return COST_MODELS[name](**options)


class SpaceCost:
    """One cost model over a search space: tables, expected cost, references (§4).

    Args:
        model: the cost model. profiles: ``{name: LayerProfile}`` of every converted layer.
        searched: searched layer names (row ``l`` of the tables). pinned: ``{name: (w, a)}``.
        w_candidates, a_candidates: candidate bit-widths.

    Attributes:
        table: float64 ``(L, len(B_w), len(B_a))`` with ``table[l, i, j] = C_l(B_w[i], B_a[j])``.
        pinned_cost: float, the pinned layers at their fixed bits.
    """

    def __init__(self, model: CostModel, profiles, searched, pinned, w_candidates, a_candidates):
        self.model = model
        self.profiles = dict(profiles)
        self.searched = list(searched)
        self.pinned = dict(pinned)
        self.candidates = {"w": tuple(w_candidates), "a": tuple(a_candidates)}
        self.table = torch.tensor(
            [[[model.layer_cost(self.profiles[n], w, a) for a in a_candidates] for w in w_candidates]
             for n in self.searched],
            dtype=torch.float64,
        ).reshape(len(self.searched), len(w_candidates), len(a_candidates))
        self.pinned_cost = sum(model.layer_cost(self.profiles[n], w, a) for n, (w, a) in self.pinned.items())

    @property
    def name(self) -> str:
        return self.model.name

    def expected(self, probs_w: torch.Tensor, probs_a: torch.Tensor) -> torch.Tensor:
        """``E[C] = sum_l p_w[l] @ table[l] @ p_a[l] + pinned`` (0-dim float64, differentiable).

        Args:
            probs_w: ``(L, len(B_w))``; probs_a: ``(L, len(B_a))``.
        """
        table = self.table.to(probs_w.device)
        return torch.einsum("li,lij,lj->", probs_w.double(), table, probs_a.double()) + self.pinned_cost

    def of_indices(self, w_idx: Sequence[int], a_idx: Sequence[int]) -> float:
        """Cost of the policy choosing candidate ``w_idx[l]``, ``a_idx[l]`` in layer ``l``."""
        rows = torch.arange(len(self.searched))
        return float(self.table[rows, torch.as_tensor(w_idx), torch.as_tensor(a_idx)].sum()) + self.pinned_cost

    def of_bits(self, bits: Mapping[str, tuple[int, int]]) -> float:
        """Cost of ``{name: (w_bits, a_bits)}``; bits need not be candidates (except for a LUT)."""
        return sum(self.model.layer_cost(self.profiles[n], w, a) for n, (w, a) in bits.items())

    def cheapest(self, masks_w: torch.Tensor, masks_a: torch.Tensor) -> float:
        """Least cost reachable with the allowed candidates (bool ``(L, n)`` masks)."""
        allowed = masks_w[:, :, None] & masks_a[:, None, :]
        return float(self.table.masked_fill(~allowed, math.inf).flatten(1).min(1).values.sum()) + self.pinned_cost

    def uniform(self, w_bits: int, a_bits: int) -> float:
        """Every searched layer at ``(w_bits, a_bits)``, pinned layers at their bits."""
        return sum(self.model.layer_cost(self.profiles[n], w_bits, a_bits) for n in self.searched) + self.pinned_cost

    def references(self) -> dict[str, float]:
        """FP32 (every converted layer at 32/32), W8A8, all-minimum and all-maximum.

        A LUT with no entry for 32/32 or 8/8 bits leaves ``fp32`` or ``w8a8`` out.
        """
        refs = {}
        for key, price in (
            ("fp32", lambda: sum(self.model.layer_cost(p, FLOAT_BITS, FLOAT_BITS) for p in self.profiles.values())),
            ("w8a8", lambda: self.uniform(8, 8)),
        ):
            try:
                refs[key] = price()
            except BudgetError:  # a LUT that does not price these bits
                pass
        masks = {s: torch.ones(len(self.searched), len(c), dtype=torch.bool) for s, c in self.candidates.items()}
        refs["min"] = self.cheapest(masks["w"], masks["a"])
        refs["max"] = float(self.table.flatten(1).max(1).values.sum()) + self.pinned_cost
        return refs


_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SIZE_UNITS = {"B": 8.0, "KB": 8e3, "MB": 8e6, "GB": 8e9, "KIB": 8 * 2**10, "MIB": 8 * 2**20, "GIB": 8 * 2**30}
BUDGET_FORMS = "bitops=W4A4, bitops=1.2e9, bitops=1.2G, size=1.5MB, size=W4A8, bitfusion=W4A4, lut=3.5"


@dataclass(frozen=True)
class Budget:
    """One hard budget: ``cost <= target`` (§4).

    Attributes:
        cost: registered cost name. spec: the text given by the user.
        value: absolute target in the cost's unit (bits for ``size``), or None if relative.
        relative: ``(w_bits, a_bits)`` of a uniform precision, or None if absolute.
    """

    cost: str
    spec: str
    value: float | None = None
    relative: tuple[int, int] | None = None

    def target(self, space_cost: SpaceCost) -> float:
        """The absolute target for this search space."""
        if self.relative is not None:
            return space_cost.uniform(*self.relative)
        return float(self.value)


def parse_budget(text: str) -> Budget:
    """Parse ``'cost=value'``; see :data:`BUDGET_FORMS` for the accepted forms.

    Raises:
        BudgetError: malformed text (the message lists the accepted forms).
        UnknownCostError: unknown cost name.
    """
    from .convert import parse_bits_pair

    if not isinstance(text, str) or text.count("=") != 1:
        raise BudgetError(f"malformed budget {text!r}; accepted forms: {BUDGET_FORMS}")
    cost, value = (part.strip() for part in text.split("="))
    cost = cost.lower()
    if cost not in COST_MODELS:
        raise UnknownCostError(f"unknown cost {cost!r} in budget {text!r}; accepted: {', '.join(COST_MODELS)}")
    if re.fullmatch(r"[Ww]\d+[Aa]\d+", value):
        try:
            return Budget(cost, text, relative=parse_bits_pair(value))
        except ValueError as err:
            raise BudgetError(f"budget {text!r}: {err}") from None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)", value)
    if not match:
        raise BudgetError(f"malformed budget {text!r}; accepted forms: {BUDGET_FORMS}")
    number, unit = float(match.group(1)), match.group(2).upper()
    if cost == "size":
        if unit not in _SIZE_UNITS:
            raise BudgetError(f"size budget {text!r} needs a unit ({', '.join(_SIZE_UNITS)}), e.g. size=1.5MB")
        number *= _SIZE_UNITS[unit]
    elif unit in _SCALE:
        number *= _SCALE[unit]
    else:
        raise BudgetError(f"unknown suffix {unit!r} in budget {text!r}; accepted: K, M, G, T or none")
    if not number > 0:
        raise BudgetError(f"budget {text!r} must be positive")
    if not math.isfinite(number):  # 1e400 reads as inf: no policy's cost, and policy.json would hold Infinity
        raise BudgetError(f"budget {text!r} is too large to be a number (it reads as infinity)")
    return Budget(cost, text, value=number)


def budget_items(spec) -> list:
    """The budgets of ``spec`` one by one, unparsed: ``'cost=value'`` texts and ``Budget`` objects.

    Raises:
        BudgetError: ``spec`` is none of the accepted types.
    """
    if isinstance(spec, Budget):
        return [spec]
    if isinstance(spec, Mapping):
        return [f"{k}={v}" for k, v in spec.items()]
    if isinstance(spec, str):
        return [s for s in spec.split(",") if s.strip()]
    if isinstance(spec, (list, tuple)):
        return list(spec)
    raise BudgetError(f"malformed budget {spec!r}; accepted forms: {BUDGET_FORMS}")


def parse_budgets(spec) -> list[Budget]:
    """Parse one budget or several: ``'bitops=W4A4,size=1.5MB'``, a list of strings, or a dict.

    Raises:
        BudgetError: empty or malformed; two budgets on one cost.
    """
    budgets = [b if isinstance(b, Budget) else parse_budget(b) for b in budget_items(spec)]
    if not budgets:
        raise BudgetError(f"no budget given; accepted forms: {BUDGET_FORMS}")
    names = [b.cost for b in budgets]
    if len(set(names)) != len(names):
        raise BudgetError(f"two budgets on one cost in {spec!r}; give each cost once")
    return budgets
