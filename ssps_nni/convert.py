"""Turn a plain ``nn.Module`` into an SSPS search space (docs/algorithm.md §1, §3).

Which layers, in order of precedence (highest first, like ``QConfigMapping``'s name > regex):

1. a layer named in an explicit ``pinned`` mapping is quantized at those fixed bits;
2. a layer matching an ``exclude`` pattern stays float and is not counted in any cost;
3. a layer matching an ``include`` pattern (default: every one) is searched, except that
   ``pinned='default'`` pins the first ``Conv2d`` and the last ``Linear`` left after step 2
   at ``pinned_bits`` (W8A8).

Patterns are shell globs on the module path (``fnmatch``: ``*`` also matches dots).
Only exact types in :data:`ssps_nni.cell.CELL_TYPES` are quantizable.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Iterable, Mapping

import torch
from torch import nn

from .cell import CELL_TYPES, QuantCellMixin, QuantConv2d, QuantLinear
from .errors import CandidateError, NoQuantizableLayersError, SSPSError
from .quant import check_bits
from .sampler import SLOTS, PathSampler

DEFAULT_CANDIDATES = (2, 3, 4, 5, 6, 8)
DEFAULT_PINNED_BITS = (8, 8)


def check_candidates(candidates: Iterable[int], kind: str = "weight") -> tuple[int, ...]:
    """Validate and sort candidate bit-widths: the one candidate rule (docs/algorithm.md §1).

    :class:`~ssps_nni.search_config.SearchConfig` applies it at construction, so the command
    line, the mmengine hook and the NNI strategy refuse the same candidates with the same
    message; :func:`convert_model` and the NNI space apply it to what they are given directly.

    Args:
        candidates: integers in 1..32 (weights: 2..32, a symmetric range needs 2 bits);
            32 means "not quantized".
        kind: ``'weight'`` or ``'activation'``, for the message.

    Returns:
        The sorted unique candidates.

    Raises:
        CandidateError: empty, not integers, or out of range.
    """
    try:
        values = list(candidates)
    except TypeError:
        raise CandidateError(f"{kind} candidates must be a list of bit-widths, got {candidates!r}") from None
    low = 2 if kind == "weight" else 1
    if not values:
        raise CandidateError(f"{kind} candidate list is empty; give bit-widths in {low}..32, e.g. 2,3,4,6,8")
    for b in values:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
            raise CandidateError(f"{kind} candidate {b!r} is not an integer in {low}..32")
        if b < low:
            raise CandidateError(f"{kind} candidate {b} is below {low}; accepted: integers {low}..32")
    return tuple(sorted(set(values)))


def parse_bits_pair(value) -> tuple[int, int]:
    """``'W8A8'`` / ``'w4a8'`` / ``(8, 8)`` -> ``(w_bits, a_bits)``; raises ``CandidateError``."""
    if isinstance(value, str):
        text = value.strip().upper()
        if text.startswith("W") and "A" in text:
            w, a = text[1:].split("A", 1)
            if w.isdigit() and a.isdigit():
                return check_bits(int(w)), check_bits(int(a))
        raise CandidateError(f"bit-widths {value!r} are not of the form WxAy, e.g. W8A8")
    try:
        w, a = value
    except (TypeError, ValueError):
        raise CandidateError(f"bit-widths {value!r} are not a (w_bits, a_bits) pair or WxAy") from None
    return check_bits(w), check_bits(a)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    pinned: str | Mapping | None = "default",
    pinned_bits=DEFAULT_PINNED_BITS,
) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """Apply the precedence rule of this module to ``model``.

    Returns:
        ``(searched, pinned)``: searched layer names in module order, and ``{name: (w, a)}``.

    Raises:
        NoQuantizableLayersError: nothing left to search.
        CandidateError: malformed pinned bits, or a pinned name that is not a quantizable layer.
    """
    include = [include] if isinstance(include, str) else list(include or ["*"])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    layers = {name: m for name, m in model.named_modules() if name and type(m) in CELL_TYPES}
    explicit: dict[str, tuple[int, int]] = {}
    if isinstance(pinned, Mapping):
        for name, bits in pinned.items():
            if name not in layers:
                raise CandidateError(
                    f"pinned layer {name!r} is not a quantizable layer of the model; "
                    f"quantizable layers: {', '.join(list(layers)[:8])}{' ...' if len(layers) > 8 else ''}"
                )
            explicit[name] = parse_bits_pair(bits)
    elif pinned not in (None, "none", "default"):
        raise CandidateError(f"pinned must be 'default', 'none' or a {{layer: 'W8A8'}} mapping, got {pinned!r}")
    kept = [n for n in layers if n not in explicit and not _matches(n, exclude)]
    pins = dict(explicit)
    if pinned == "default":
        bits = parse_bits_pair(pinned_bits)
        convs = [n for n in kept if isinstance(layers[n], nn.Conv2d)]
        linears = [n for n in kept if isinstance(layers[n], nn.Linear)]
        for name in convs[:1] + linears[-1:]:
            pins[name] = bits
    searched = [n for n in kept if n not in pins and _matches(n, include)]
    if not searched:
        raise NoQuantizableLayersError(
            f"{type(model).__name__} has no quantizable layer left to search "
            f"({len(layers)} Conv2d/Linear found, {len(pins)} pinned, include={include}, exclude={exclude}); "
            "SSPS searches nn.Conv2d and nn.Linear layers"
        )
    return searched, pins


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def wrap_layer(layer: nn.Module, w_candidates, a_candidates) -> QuantCellMixin:
    """Wrap one float layer in its cell type, keeping its Parameter objects."""
    return CELL_TYPES[type(layer)].from_float(layer, w_candidates, a_candidates)


class SearchSpace:
    """A converted model with its decisions (docs/algorithm.md §1, §3).

    Attributes:
        model: the model, converted in place.
        cells: ``{name: cell}`` of every converted layer, pinned ones included, in module order.
        searched: names of the searched layers, ``L`` of them; row ``l`` of the logits is layer ``l``.
        pinned: ``{name: (w_bits, a_bits)}``.
        sampler: the :class:`~ssps_nni.sampler.PathSampler` owning the logits ``(L, n)``.
    """

    def __init__(self, model, cells, searched, pinned, w_candidates, a_candidates, sampler):
        self.model = model
        self.cells = cells
        self.searched = list(searched)
        self.pinned = dict(pinned)
        self.candidates = {"w": tuple(w_candidates), "a": tuple(a_candidates)}
        self.sampler = sampler

    # decisions are (layer index, slot); label: '<layer>.w_bits' / '<layer>.a_bits'
    @property
    def decisions(self) -> list[tuple[int, str]]:
        return [(l, slot) for l in range(len(self.searched)) for slot in SLOTS]

    def label(self, layer: int, slot: str) -> str:
        return f"{self.searched[layer]}.{slot}_bits"

    def cell(self, layer: int) -> QuantCellMixin:
        return self.cells[self.searched[layer]]

    def masks(self, slot: str) -> torch.Tensor:
        """Bool ``(L, n)``: allowed candidates of every searched layer for ``slot``."""
        return torch.stack([self.cell(l).host(slot + "_mask") for l in range(len(self.searched))])  # no device sync

    def probs(self, slot: str) -> torch.Tensor:
        """``(L, n)`` probabilities over allowed candidates, differentiable in the logits.

        A decided row is one-hot.
        """
        return self.sampler.probs(slot, self.masks(slot))

    def fixed_index(self, layer: int, slot: str) -> int:
        return self.cell(layer).fixed_index(slot)

    def fix(self, layer: int, slot: str, index: int) -> None:
        self.cell(layer).fix(slot, index)

    @property
    def num_decisions(self) -> int:
        return 2 * len(self.searched)

    @property
    def num_decided(self) -> int:
        return sum(self.fixed_index(l, s) >= 0 for l, s in self.decisions)

    def log10_size(self) -> float:
        """log10 of the number of policies still possible: sum of log10(allowed candidates)."""
        counts = {s: self.masks(s).sum(1).tolist() for s in SLOTS}  # once per slot: called every step
        return float(sum(math.log10(int(counts[s][l])) for l, s in self.decisions))

    def bits(self) -> dict[str, tuple[int, int]]:
        """``{name: (w_bits, a_bits)}`` for every converted layer: decided, else argmax."""
        out = {}
        for name, cell in self.cells.items():
            out[name] = cell.bits()
        return out

    def layer_table(self, bits: Mapping[str, tuple[int, int]], decided: Mapping[str, dict],
                    excluded: Iterable[str] = ()) -> dict[str, dict]:
        """The policy's entry of every cell and ``excluded`` float layer, in module order (§8).

        Args:
            bits: :meth:`bits`. decided: ``{label: {'certainty', 'step', ...}}`` of the decider.
            excluded: names of quantizable layers left in float.

        Returns:
            ``{name: {'w_bits', 'a_bits', 'pinned', 'certainty', 'decided_at'}}``: certainty the
            lower and ``decided_at`` the later of the layer's two recorded decisions (None until
            both are); an excluded layer ``{'w_bits': 32, 'a_bits': 32, 'excluded': True}``.
        """
        layers = {}
        for name, _ in self.model.named_modules():
            if name in self.cells:
                entry = {"w_bits": bits[name][0], "a_bits": bits[name][1], "pinned": name in self.pinned,
                         "certainty": None, "decided_at": None}
                if name not in self.pinned:
                    info = [decided.get(f"{name}.{s}_bits") for s in SLOTS]
                    if all(info):
                        entry["certainty"] = round(min(i["certainty"] for i in info), 6)
                        entry["decided_at"] = max(i["step"] for i in info)
                layers[name] = entry
            elif name in excluded:
                layers[name] = {"w_bits": 32, "a_bits": 32, "excluded": True}
        return layers

    def calibrate(self, forward_fn, reduce_fn=None) -> None:
        """Initialise every cell's step sizes and input sign from data (LSQ init, docs/algorithm.md §2).

        Args:
            forward_fn: callable running one or more float forward passes of ``model``.
            reduce_fn: optional ``f(sums (C, 2), mins (C,)) -> (sums, mins)`` that sums
                ``[sum |x|, numel]`` and takes the min of ``min x`` over ranks (C = cells).
        """
        cells = list(self.cells.values())
        for cell in cells:
            cell.calibrating = True
        try:
            with torch.no_grad():
                forward_fn()
        finally:
            for cell in cells:
                cell.calibrating = False
        empty = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
        stats = torch.stack([c.calibration_stats() if c.calibration_stats() is not None else empty for c in cells])
        sums, mins = stats[:, :2].contiguous(), stats[:, 2].contiguous()
        if reduce_fn is not None:
            sums, mins = reduce_fn(sums, mins)
        for cell, s, m in zip(cells, sums, mins):
            cell.init_scales(torch.cat([s, m.reshape(1)]))

    def state_dict(self) -> dict:
        """Sampler state plus every mask, for resume (plain tensors)."""
        return {
            "sampler": self.sampler.state_dict(),
            "masks": {slot: self.masks(slot).to(torch.uint8) for slot in SLOTS},
            "searched": list(self.searched),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`. Raises SSPSError (a ValueError): a state of other searched layers."""
        saved = list(state["searched"])
        if saved != self.searched:
            gone, new = [n for n in saved if n not in self.searched], [n for n in self.searched if n not in saved]
            raise SSPSError(f"the saved search state is for other layers than this search space ({len(saved)} "
                            f"searched then, {len(self.searched)} now; only then: {gone[:3]}, only now: {new[:3]}"
                            f"{', or another order' if not (gone or new) else ''}); resume with the include, "
                            "exclude and pinned of the saved search, or start a new search")
        self.sampler.load_state_dict(state["sampler"])
        for slot in SLOTS:
            for l, row in enumerate(state["masks"][slot]):
                self.cell(l).set_mask(slot, row.bool())


def convert_model(
    model: nn.Module,
    w_candidates=DEFAULT_CANDIDATES,
    a_candidates=None,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    pinned: str | Mapping | None = "default",
    pinned_bits=DEFAULT_PINNED_BITS,
    tau: float = 5.0,
    seed: int = 0,
) -> SearchSpace:
    """Convert ``model`` in place into a supernet of single path search cells.

    Args:
        model: any ``nn.Module``; its ``nn.Conv2d``/``nn.Linear`` layers are wrapped.
        w_candidates, a_candidates: candidate bit-widths (default ``(2, 3, 4, 5, 6, 8)``;
            activations default to the weight candidates).
        include, exclude, pinned, pinned_bits: see the module docstring.
        tau: initial temperature; seed: seed of the path sampler.

    Returns:
        The :class:`SearchSpace`. Parameter names are unchanged, so a full-precision
        ``state_dict`` loads into ``model`` (new keys: ``w_scale``, ``a_scale`` and buffers).

    Raises:
        CandidateError: bad candidates or pinned bits. NoQuantizableLayersError: nothing to search.
    """
    w_c = check_candidates(w_candidates, "weight")
    a_c = check_candidates(w_c if a_candidates is None else a_candidates, "activation")
    return convert_checked(model, w_c, a_c, include=include, exclude=exclude, pinned=pinned,
                           pinned_bits=pinned_bits, tau=tau, seed=seed)


def convert_checked(model: nn.Module, w_c: tuple, a_c: tuple, *, include=None, exclude=None, pinned="default",
                    pinned_bits=DEFAULT_PINNED_BITS, tau: float = 5.0, seed: int = 0) -> SearchSpace:
    """:func:`convert_model` with candidates already checked and sorted (by ``SearchConfig``).

    Raises:
        CandidateError: bad pinned bits. NoQuantizableLayersError: nothing to search.
        ValueError: the model is already converted.
    """
    if any(isinstance(m, QuantCellMixin) for m in model.modules()):
        raise ValueError("model is already converted: convert_model takes a plain float model")
    searched, pins = select_layers(model, include, exclude, pinned, pinned_bits)
    for name, (w, _) in pins.items():  # before any layer is replaced
        if w < 2:
            raise CandidateError(f"pinned weight bits of {name!r} must be 2..32, got {w}")
    sampler = PathSampler(len(searched), w_c, a_c, tau=tau, seed=seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for p in sampler.grad_tensors():
        p.data = p.data.to(device)
    order = [n for n, _ in model.named_modules() if n in pins or n in searched]
    cells = {}
    for name in order:
        layer = model.get_submodule(name)
        if name in pins:
            w, a = pins[name]
            cell = wrap_layer(layer, (w,), (a,))
        else:
            cell = wrap_layer(layer, w_c, a_c)
            cell.attach(sampler, searched.index(name))
        _replace(model, name, cell)
        cells[name] = cell
    return SearchSpace(model, cells, searched, pins, w_c, a_c, sampler)


def fixed_model(model: nn.Module, bits: Mapping[str, tuple[int, int]]) -> dict[str, QuantCellMixin]:
    """Convert ``model`` in place into a fixed mixed-precision model: ``{name: (w_bits, a_bits)}``.

    Every named layer becomes a cell with a single candidate per slot (fixed mode); other
    layers stay float. Returns ``{name: cell}``.

    Raises:
        PolicyError: a name that is not a quantizable layer of ``model``.
    """
    from .errors import PolicyError

    layers = {name: m for name, m in model.named_modules() if name and type(m) in CELL_TYPES}
    cells = {}
    for name, (w, a) in bits.items():
        if name not in layers:
            raise PolicyError(f"policy layer {name!r} is not a Conv2d/Linear of {type(model).__name__}")
        cell = wrap_layer(layers[name], (w,), (a,))
        _replace(model, name, cell)
        cells[name] = cell
    return cells


__all__ = [
    "DEFAULT_CANDIDATES", "SearchSpace", "convert_model", "fixed_model", "select_layers",
    "check_candidates", "convert_checked", "parse_bits_pair", "QuantConv2d", "QuantLinear",
]
