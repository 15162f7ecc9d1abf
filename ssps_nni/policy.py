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
     "repaired": false}

Only ``format``, ``version``, ``candidates`` and ``layers`` (with ``w_bits``/``a_bits``) are
required; the rest documents how the policy was found.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from torch import nn

from .errors import PolicyError

POLICY_FORMAT = "ssps-policy"
POLICY_VERSION = 1


@dataclass
class Policy:
    """Per-layer bit-widths plus how they were found.

    Attributes:
        layers: ``{name: {'w_bits': int, 'a_bits': int, 'pinned': bool, 'certainty': float|None,
            'decided_at': int|None}}`` in module order.
        candidates: ``{'w': [...], 'a': [...]}``.
        meta: ``cost_model``, ``budgets``, ``totals``, ``repaired``.
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
        meta = {k: v for k, v in data.items() if k not in ("format", "version", "candidates", "layers")}
        return cls(layers={n: dict(v) for n, v in layers.items()},
                   candidates={"w": list(cands["w"]), "a": list(cands["a"])}, meta=meta)

    def check_model(self, model: nn.Module) -> None:
        """Raise ``PolicyError`` naming the first layer missing from, or extra to, ``model``.

        The policy must list every ``nn.Conv2d``/``nn.Linear`` (or cell) of ``model``; layers a
        search left float are listed with ``"excluded": true``.
        """
        from .cell import CELL_TYPES, QuantCellMixin

        layers = [n for n, m in model.named_modules() if n and (type(m) in CELL_TYPES or isinstance(m, QuantCellMixin))]
        known = set(layers)
        for name in self.layers:
            if name not in known:
                raise PolicyError(
                    f"policy layer {name!r} is not a Conv2d/Linear of {type(model).__name__} (extra layer)"
                )
        for name in layers:
            if name not in self.layers:
                raise PolicyError(f"model layer {name!r} is missing from the policy")

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


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Writes a temporary file in the same folder, fsyncs it, then ``os.replace``s it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path



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


def apply_policy(model: nn.Module, policy: Policy):
    """Turn plain ``model`` into the fixed mixed-precision model of ``policy`` (in place).

    Returns ``{name: cell}``. Raises ``PolicyError`` naming the first mismatching layer.
    """
    from .convert import fixed_model

    policy.check_model(model)
    return fixed_model(model, policy.bits())


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
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
