"""Matching a policy's layer names to a model's (docs/algorithm.md §8).

Layer names travel between routes: the NNI strategy names layers as in the plain model
(``layer1.0.conv1``), the mmengine route as in the OpenMMLab model
(``backbone.layer1.0.conv1``). :func:`match_layer_names` matches exact names first, then by
dotted suffix in either direction; :meth:`ssps_nni.policy.Policy.for_model` renames a policy's
layers with it.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn

from .cell import CELL_TYPES, QuantCellMixin
from .errors import PolicyError

__all__ = ["quantizable_layers", "match_layer_names", "describe_mapping"]


def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of ``model``'s ``nn.Conv2d``/``nn.Linear`` layers and quantization cells, in module order."""
    return [n for n, m in model.named_modules() if n and (type(m) in CELL_TYPES or isinstance(m, QuantCellMixin))]


def _suffix_of(short: str, long: str) -> bool:
    return long.endswith("." + short)


def match_layer_names(policy_names: Iterable[str], model_names: Iterable[str],
                      model_type: str = "the model") -> dict[str, str]:
    """Match a policy's layer names to a model's: exactly, else by an unambiguous dotted suffix.

    A policy name and a model name match by suffix when one ends with ``'.' + the other``
    (``layer1.0.conv1`` and ``backbone.layer1.0.conv1``, either way round). Exact names are
    matched first. Then, repeatedly, a policy name with exactly one model layer left that it
    matches by suffix takes that layer, so ``conv1`` (a suffix of every ``*.conv1``) gets
    ``backbone.conv1`` once ``layer1.0.conv1`` and the others have their own. Matching is one
    to one.

    Returns:
        ``{policy name: model name}``, in policy order.

    Raises:
        PolicyError: a policy name matches no model layer, or several that no other policy name
            claims (it lists them); a model layer is left without a policy entry.
    """
    policy_names, model_names = list(policy_names), list(model_names)
    known = set(model_names)
    mapping = {p: p for p in policy_names if p in known}
    free = [m for m in model_names if m not in mapping]
    todo = [p for p in policy_names if p not in mapping]
    candidates = {p: [m for m in free if _suffix_of(p, m) or _suffix_of(m, p)] for p in todo}
    for p in todo:
        if not candidates[p]:
            raise PolicyError(f"policy layer {p!r} is not a Conv2d/Linear of {model_type} (extra layer): no layer "
                              "has that name or ends with it, and it ends with no layer's name")
    taken: set[str] = set()
    while todo:
        progress = False
        for p in list(todo):
            left = [m for m in candidates[p] if m not in taken]
            if len(left) == 1:
                mapping[p] = left[0]
                taken.add(left[0])
                todo.remove(p)
                progress = True
            elif not left:
                raise PolicyError(f"policy layer {p!r} matches only layers of {model_type} that other policy layers "
                                  f"already match ({', '.join(candidates[p][:4])}); the names do not fit one to one")
        if not progress:
            p = todo[0]
            left = [m for m in candidates[p] if m not in taken]
            raise PolicyError(f"policy layer {p!r} matches several layers of {model_type} by suffix "
                              f"({', '.join(left[:4])}{' ...' if len(left) > 4 else ''}); give the policy full layer "
                              "names of this model")
    matched = set(mapping.values())
    for m in model_names:
        if m not in matched:
            raise PolicyError(f"model layer {m!r} is missing from the policy")
    return {p: mapping[p] for p in policy_names}


def describe_mapping(mapping: Mapping[str, str], model_type: str = "the model") -> str:
    """One line saying how policy names were matched by suffix, grouped by the prefix added or removed."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    exact = 0
    for p, m in mapping.items():
        if p == m:
            exact += 1
        elif m.endswith("." + p):
            groups.setdefault(("added to", m[: len(m) - len(p)]), []).append((p, m))
        else:
            groups.setdefault(("removed from", p[: len(p) - len(m)]), []).append((p, m))
    parts = []
    for (how, prefix), pairs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        p, m = pairs[0]
        parts.append(f"{prefix!r} {how} {len(pairs)} (e.g. {p} -> {m})")
    if exact:
        parts.append(f"{exact} exact")
    return f"policy layer names matched to {model_type} by dotted suffix: " + ", ".join(parts)
