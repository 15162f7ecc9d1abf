"""The search result: a versioned JSON policy, its validation, loading and table (docs/algorithm.md §8).

Format (``format: "ssps-policy"``, ``version: 1``)::

    {"format": "ssps-policy", "version": 1,
     "candidates": {"w": [2, 3, 4, 6, 8], "a": [2, 3, 4, 6, 8]},
     "cost_model": "bitops",
     "budgets": [{"cost": "bitops", "spec": "bitops=W4A4", "target": 1.6e9}],
     "layers": {"conv1": {"w_bits": 8, "a_bits": 8, "pinned": true,
                           "certainty": null, "decided_at": null}, ...},
     "totals": {"bitops": {"policy": ..., "expected": ..., "target": ...,
                           "references": {"fp32": ..., "w8a8": ..., "min": ..., "max": ...}}},
     "repaired": false, "final": true, "open": []}

Only ``format``, ``version``, ``candidates`` and ``layers`` (with ``w_bits``/``a_bits``) are
required; the rest documents how the policy was found.

``final`` tells a search's result from its interim snapshot: a running search writes
``policy.partial.json`` with ``"final": false`` and its still ``open`` decisions, and
``policy.json`` with ``"final": true`` only when it is done and within budget
(docs/algorithm.md §8). :func:`require_final` refuses a non-final policy, naming its cost
against the budget.

Layer names travel between routes: the NNI strategy names layers as in the plain model
(``layer1.0.conv1``), the mmengine route as in the OpenMMLab model
(``backbone.layer1.0.conv1``). :meth:`Policy.match_model` matches exact names first, then by
dotted suffix in either direction (:func:`ssps_nni.layer_names.match_layer_names`).

Elsewhere: applying a policy to a model in :mod:`ssps_nni.apply_policy`, its figure in
:mod:`ssps_nni.plots`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from torch import nn

from .errors import PolicyError, PolicyNotFinalError
from .files import atomic_write
from .layer_names import describe_mapping, match_layer_names, quantizable_layers

POLICY_FORMAT = "ssps-policy"
POLICY_VERSION = 1
#: File names in a search's work dir: the result, and the snapshot a running search rewrites.
POLICY_JSON, POLICY_PNG = "policy.json", "policy.png"
PARTIAL_POLICY_JSON, PARTIAL_POLICY_PNG = "policy.partial.json", "policy.partial.png"

logger = logging.getLogger(__name__)


@dataclass
class Policy:
    """Per-layer bit-widths plus how they were found.

    Attributes:
        layers: ``{name: {'w_bits': int, 'a_bits': int, 'pinned': bool, 'certainty': float|None,
            'decided_at': int|None}}`` in module order.
        candidates: ``{'w': [...], 'a': [...]}``.
        meta: ``final``, ``open``, ``cost_model``, ``budgets``, ``totals``, ``repaired``, ...
            (docs/algorithm.md §8).
    """

    layers: dict
    candidates: dict
    meta: dict = field(default_factory=dict)

    def bits(self) -> dict[str, tuple[int, int]]:
        """``{name: (w_bits, a_bits)}``."""
        return {n: (int(v["w_bits"]), int(v["a_bits"])) for n, v in self.layers.items() if not v.get("excluded")}

    def to_dict(self) -> dict:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "candidates": self.candidates,
                **self.meta, "layers": self.layers}

    @property
    def final(self) -> bool:
        """True for a search's result, False for an interim snapshot (``"final": false``).

        A file without the flag (written before it existed, or by hand) counts as final unless
        its ``num_decided`` / ``num_decisions`` say that decisions were still open: the one kind
        of non-final file older versions wrote was the hook's snapshot during a search, and it
        carries those counts.
        """
        flag = self.meta.get("final")
        if flag is not None:
            return bool(flag)
        done, total = self.meta.get("num_decided"), self.meta.get("num_decisions")
        return not (isinstance(done, int) and isinstance(total, int) and done < total)

    def budget_ratios(self) -> dict[str, float]:
        """``{cost: policy cost / target}`` from ``totals`` (empty for a policy without them)."""
        out = {}
        for name, total in (self.meta.get("totals") or {}).items():
            if isinstance(total, Mapping) and total.get("target") and total.get("policy") is not None:
                out[name] = float(total["policy"]) / float(total["target"])
        return out

    def status(self) -> str:
        """One phrase on how far the search behind this policy got and what it costs, e.g.
        ``'14 of 36 decisions made at step 120 (22 open); bitops 2.47x its budget bitops=W4A4'``."""
        done, total = self.meta.get("num_decided"), self.meta.get("num_decisions")
        parts = []
        if isinstance(done, int) and isinstance(total, int):
            step = self.meta.get("step")
            parts.append(f"{done} of {total} decisions made" + (f" at step {step}" if step is not None else "")
                         + (f" ({total - done} open)" if done < total else ""))
        specs = {b.get("cost"): b.get("spec") for b in self.meta.get("budgets") or [] if isinstance(b, Mapping)}
        costs = [f"{name} {ratio:.2f}x its budget" + (f" {specs[name]}" if specs.get(name) else "")
                 for name, ratio in self.budget_ratios().items()]
        parts.append("; ".join(costs) if costs else "cost against the budget unknown (no totals)")
        return "; ".join(parts)

    def match_model(self, model: nn.Module) -> dict[str, str]:
        """``{policy layer: model layer}`` for every policy layer (:func:`match_layer_names`).

        Raises:
            PolicyError: a policy layer matches no layer of ``model`` or several; a model layer
                is missing from the policy.
        """
        return match_layer_names(list(self.layers), quantizable_layers(model), type(model).__name__)

    def check_model(self, model: nn.Module) -> dict[str, str]:
        """Raise ``PolicyError`` naming the first layer missing from, or extra to, ``model``.

        The policy must list every ``nn.Conv2d``/``nn.Linear`` (or cell) of ``model``; layers a
        search left float are listed with ``"excluded": true``. Names match exactly or by
        dotted suffix (:meth:`match_model`, whose mapping is returned).
        """
        return self.match_model(model)

    def for_model(self, model: nn.Module, log: Callable[[str], None] | None = None) -> "Policy":
        """This policy with its layers renamed to ``model``'s (module order); ``self`` if all match exactly.

        Args:
            model: the plain (or converted) model the policy is for.
            log: called with the one-line mapping (:func:`describe_mapping`) when a name was
                matched by suffix; default: this module's logger at INFO.

        Raises:
            PolicyError: as :meth:`match_model`.
        """
        mapping = self.match_model(model)
        if all(p == m for p, m in mapping.items()):
            return self
        (log or logger.info)(describe_mapping(mapping, type(model).__name__))
        by_model = {m: p for p, m in mapping.items()}
        layers = {m: dict(self.layers[by_model[m]]) for m in quantizable_layers(model) if m in by_model}
        meta = dict(self.meta)
        meta["renamed_from"] = {m: p for p, m in mapping.items() if p != m}
        return Policy(layers=layers, candidates={s: list(v) for s, v in self.candidates.items()}, meta=meta)

    @classmethod
    def from_dict(cls, data, source: str = "policy") -> "Policy":
        """Validate and build; raises ``PolicyError`` naming the first problem."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{source}: a policy must be a JSON object, got {type(data).__name__}")
        if data.get("format") != POLICY_FORMAT:
            raise PolicyError(f"{source}: 'format' must be {POLICY_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != POLICY_VERSION:
            raise PolicyError(f"{source}: unsupported version {data.get('version')!r}; this tool reads version 1")
        cands = data.get("candidates")
        if not isinstance(cands, Mapping) or not all(isinstance(cands.get(s), list) for s in ("w", "a")):
            raise PolicyError(f"{source}: 'candidates' must be {{'w': [...], 'a': [...]}}")
        layers = data.get("layers")
        if not isinstance(layers, Mapping) or not layers:
            raise PolicyError(f"{source}: 'layers' must be a non-empty object of layer name -> bits")
        for name, entry in layers.items():
            if not isinstance(entry, Mapping):
                raise PolicyError(f"{source}: layer {name!r} must be an object with w_bits and a_bits")
            for key in ("w_bits", "a_bits"):
                b = entry.get(key)
                if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
                    raise PolicyError(f"{source}: layer {name!r} has {key}={b!r}; accepted: integers 1..32")
            if not entry.get("pinned") and not entry.get("excluded"):
                for key, slot in (("w_bits", "w"), ("a_bits", "a")):
                    if entry[key] not in cands[slot]:
                        raise PolicyError(
                            f"{source}: layer {name!r} has {key}={entry[key]}, not among the candidates {cands[slot]}"
                        )
        if "final" in data and not isinstance(data["final"], bool):
            raise PolicyError(f"{source}: 'final' must be true or false, got {data['final']!r}")
        if "open" in data and not (isinstance(data["open"], list) and all(isinstance(v, str) for v in data["open"])):
            raise PolicyError(f"{source}: 'open' must be a list of decision labels, got {data['open']!r}")
        meta = {k: v for k, v in data.items() if k not in ("format", "version", "candidates", "layers")}
        return cls(layers={n: dict(v) for n, v in layers.items()},
                   candidates={"w": list(cands["w"]), "a": list(cands["a"])}, meta=meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file in the same folder, then ``os.replace``)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        """A plain-text table: layer, W bits, A bits, certainty, step decided."""
        rows = [("layer", "W", "A", "certainty", "decided at")]
        for name, v in self.layers.items():
            cert = "pinned" if v.get("pinned") else "float" if v.get("excluded") else ("-" if v.get("certainty") is None else f"{v['certainty']:.3f}")
            at = "-" if v.get("decided_at") is None else str(v["decided_at"])
            rows.append((name, str(v["w_bits"]), str(v["a_bits"]), cert, at))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


def load_policy(path: str | os.PathLike) -> Policy:
    """Read and validate a policy file; raises ``PolicyError`` (unreadable, not JSON, malformed)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PolicyError(f"cannot read policy file {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise PolicyError(f"policy file {path} is not valid JSON: {err}") from None
    return Policy.from_dict(data, source=str(path))


def require_final(policy: Policy, source: str = "policy", allow: bool = False,
                  allow_option: str | None = None) -> str | None:
    """Refuse an interim snapshot of a search (``"final": false``) unless ``allow``.

    For command-line tools that retrain or export a policy.

    Args:
        policy: the loaded policy. source: its path, for the message.
        allow: accept a non-final policy; the returned warning should then be shown.
        allow_option: the option that sets ``allow`` (e.g. ``'--allow-partial'``), named in the
            refusal.

    Returns:
        None for a final policy; for an allowed non-final one, a warning naming how far its
        search got and its cost against each budget.

    Raises:
        PolicyNotFinalError: a non-final policy and ``allow`` is False.
    """
    if policy.final:
        return None
    what = f"{source} is not a final policy but a running search's snapshot: {policy.status()}"
    if allow:
        return f"warning: using {what}; its open decisions are at their most probable bits"
    hint = f", or pass {allow_option} to use it anyway" if allow_option else ""
    raise PolicyNotFinalError(f"{what}. Finish the search (resume it in its work dir) and use the policy.json "
                              f"it writes{hint}")
