"""The search result: a versioned JSON policy, its validation, table and figure (docs/algorithm.md §8).

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
dotted suffix in either direction (:func:`match_layer_names`).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from torch import nn

from .errors import PolicyError, PolicyNotFinalError
from .files import atomic_write, file_mode  # noqa: F401  (atomic_write: re-exported, its home before files.py)

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


def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of ``model``'s ``nn.Conv2d``/``nn.Linear`` layers and quantization cells, in module order."""
    from .cell import CELL_TYPES, QuantCellMixin

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


def apply_policy(model: nn.Module, policy: Policy, log: Callable[[str], None] | None = None):
    """Turn plain ``model`` into the fixed mixed-precision model of ``policy`` (in place).

    Policy layer names may differ from the model's by a dotted prefix (a policy of the other
    route, :meth:`Policy.match_model`); the mapping is reported through ``log`` (default: this
    module's logger at INFO).

    Returns ``{model layer name: cell}``. Raises ``PolicyError`` naming the first mismatching layer.
    """
    from .convert import fixed_model

    return fixed_model(model, policy.for_model(model, log=log).bits())


def plot_policy(policy: Policy, history: list | None, path: str | os.PathLike) -> Path:
    """PNG: bits per layer (bars) and, if ``history`` is given, log10 search-space size over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(policy.layers)
    w = [policy.layers[n]["w_bits"] for n in names]
    a = [policy.layers[n]["a_bits"] for n in names]
    ncols = 2 if history else 1
    fig, axes = plt.subplots(1, ncols, figsize=(max(6, 0.3 * len(names)) + 4 * (ncols - 1), 4), squeeze=False)
    ax = axes[0][0]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], w, width=0.4, label="weight bits")
    ax.bar([i + 0.2 for i in x], a, width=0.4, label="activation bits")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("bits")
    ax.set_title("bit-width per layer")
    ax.legend()
    if history:
        ax2 = axes[0][1]
        ax2.plot([h["step"] for h in history], [h["log10_size"] for h in history], marker=".")
        ax2.set_xlabel("step")
        ax2.set_ylabel("log10 search-space size")
        ax2.set_title("search space over time")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())  # the user's umask, not mkstemp's 0600
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
