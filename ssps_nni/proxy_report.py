"""Tables of the proxy against the truth: per layer and candidate, rank correlation, calibration.

docs/algorithm.md §10.1. Input: named ``{slot: (L, n)}`` tensors over the same searched layers
and candidates (predicted scores, measured loss increases). Output: rows (one per layer,
operand and candidate), the agreement of a predicted column with a measured one per group
(operand and bit-width), and the CSV / Markdown / JSON files of ``ssps sensitivity``.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from scipy.stats import spearmanr

from .sampler import SLOTS

__all__ = ["proxy_rows", "agreement", "write_proxy_report"]

OPERAND = {"w": "weights", "a": "activations"}


def proxy_rows(layers: list[str], candidates: dict, columns: dict[str, dict]) -> list[dict]:
    """One row per searched layer, operand and candidate (32 bits and absent columns skipped).

    Args:
        layers: searched layer names (row ``l`` of every tensor). candidates: ``{slot: bits}``.
        columns: ``{name: {slot: (L, n) tensor}}``; a column may be None (left out).

    Returns:
        ``[{'layer', 'slot', 'bits', name: float, ...}]`` in layer order, weights first.
    """
    rows = []
    for l, layer in enumerate(layers):
        for slot in SLOTS:
            for j, bits in enumerate(candidates[slot]):
                if bits >= 32:
                    continue
                row = {"layer": layer, "slot": slot, "bits": int(bits)}
                for name, col in columns.items():
                    if col is not None:
                        row[name] = float(col[slot][l, j])
                rows.append(row)
    return rows


def _group_stats(pairs: list[tuple[float, float]]) -> dict:
    pred = [p for p, _ in pairs]
    meas = [m for _, m in pairs]
    rho = float("nan")
    if len(pairs) >= 3 and len(set(pred)) > 1 and len(set(meas)) > 1:
        rho = float(spearmanr(pred, meas).statistic)
    total = sum(meas)
    calibration = sum(pred) / total if total > 0 else float("nan")
    return {"n": len(pairs), "spearman": rho, "sum_predicted": sum(pred), "sum_measured": total,
            "calibration": calibration}


def agreement(rows: list[dict], predicted: str, measured: str) -> list[dict]:
    """Spearman correlation and calibration of column ``predicted`` against ``measured``.

    Groups: each operand at each bit-width (across layers), each operand over all its
    bit-widths, both operands at each bit-width, and everything. ``calibration`` is
    ``sum predicted / sum measured`` (NaN when the measured sum is not positive); the ratio of
    two groups' calibrations says how much one is priced below the other.

    Returns:
        ``[{'operand', 'bits', 'n', 'spearman', 'sum_predicted', 'sum_measured', 'calibration'}]``.
    """
    usable = [r for r in rows if predicted in r and measured in r]
    bit_widths = sorted({r["bits"] for r in usable})
    groups = []
    for slot in (*SLOTS, None):
        for bits in (*bit_widths, None):
            pairs = [(r[predicted], r[measured]) for r in usable
                     if (slot is None or r["slot"] == slot) and (bits is None or r["bits"] == bits)]
            if pairs:
                groups.append({"operand": OPERAND[slot] if slot else "both",
                               "bits": bits if bits is not None else "all", **_group_stats(pairs)})
    return groups


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"
    return str(value)


def _markdown_table(header: list[str], lines: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(v) for v in line) + " |" for line in lines]
    return out


def write_proxy_report(out_dir, rows: list[dict], comparisons: dict[str, tuple[str, str]], meta: dict) -> dict:
    """Write ``sensitivity.csv``, ``sensitivity.md`` and ``sensitivity.json`` into ``out_dir``.

    Args:
        rows: :func:`proxy_rows`. comparisons: ``{title: (predicted column, measured column)}``.
        meta: what was measured and how (command, batches, seconds...), written as given.

    Returns:
        ``{'csv': path, 'md': path, 'json': path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "sensitivity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    stats = {title: agreement(rows, p, m) for title, (p, m) in comparisons.items()}
    lines = ["# Per-layer sensitivity: predicted against measured loss increase", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    for title, groups in stats.items():
        p, m = comparisons[title]
        lines += [f"## {title}", "", f"Predicted `{p}` against measured `{m}`: Spearman rank correlation across "
                  "layers, and calibration = sum predicted / sum measured.", ""]
        lines += _markdown_table(["operand", "bits", "n", "Spearman", "sum predicted", "sum measured", "calibration"],
                                 [[g["operand"], g["bits"], g["n"], g["spearman"], g["sum_predicted"],
                                   g["sum_measured"], g["calibration"]] for g in groups])
        two = {g["operand"]: g["calibration"] for g in groups if g["bits"] == 2}
        if two.get("weights") and two.get("activations") and not math.isnan(two["weights"]):
            lines += ["", f"2-bit activations are priced at {two['activations'] / two['weights']:.3f} x the "
                      "calibration of 2-bit weights (1 = priced alike)."]
        lines.append("")
    lines += ["## Per layer and candidate", ""]
    lines += _markdown_table(names, [[r.get(k, "") for k in names] for r in rows])
    (out / "sensitivity.md").write_text("\n".join(lines) + "\n")
    (out / "sensitivity.json").write_text(json.dumps({"meta": meta, "agreement": stats, "rows": rows}, indent=1))
    return {"csv": out / "sensitivity.csv", "md": out / "sensitivity.md", "json": out / "sensitivity.json"}
