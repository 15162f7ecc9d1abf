"""Tables and figures that compare searched policies (docs/algorithm.md §4 references, §8 outputs).

:func:`write_report` writes, into one folder:

- ``layers.csv`` / the first table of ``report.md``: per layer, the ``W/A`` bits of each policy;
- ``comparison.csv`` / the second table: per policy and cost in its ``totals`` (``bitops``,
  ``size``, ...), the policy's cost, its target and the ratio to it, and the ratios to the
  references FP32 and W8A8 (uniform 8-bit) that the search recorded, plus the all-minimum and
  all-maximum costs; and the MAC-unweighted mean bits;
- ``<label>_bits.png``: the bits per layer (:func:`ssps_nni.plots.plot_policy`);
- with ``results`` (the ``train_result.json`` files of ``tools/train.py``): ``results.csv`` / a
  third table: per retrained model its mode (policy, uniform WxAy, FP32), metrics (accuracy or
  mAP), BitOPs and size, each also as a ratio to FP32.

Costs come from each policy's ``totals`` (the search computed them on the profiled model); a
policy without totals still gets its bits compared. Every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Mapping

from .files import atomic_write
from .plots import plot_policy
from .policy import Policy

__all__ = ["layer_rows", "comparison_rows", "result_rows", "markdown_report", "write_report", "unique_labels"]

_DISPLAY = {"bitops": (1e9, "GBitOPs"), "size": (8e6, "MB"), "bitfusion": (1e9, "Gbricks")}


def format_cost(name: str, value: float | None, unit: str = "") -> str:
    """``value`` of cost ``name`` in its display unit (GBitOPs, MB, ...); ``-`` for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if name in _DISPLAY:
        scale, label = _DISPLAY[name]
        return f"{value / scale:.4g} {label}"
    return f"{value:.4g} {unit}".strip()


def unique_labels(paths) -> list[str]:
    """File stems of ``paths``, suffixed ``-2``, ``-3``... where they repeat."""
    labels, seen = [], {}
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        labels.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return labels


def _bits_text(entry: Mapping | None) -> str:
    if entry is None:
        return ""
    if entry.get("excluded"):
        return "float"
    return f"W{entry['w_bits']}A{entry['a_bits']}" + ("*" if entry.get("pinned") else "")


def layer_rows(policies: Mapping[str, Policy]) -> list[dict]:
    """One row per layer (union, in first-seen order): ``{'layer': name, label: 'W4A8', ...}``.

    A pinned layer's bits end with ``*``; an excluded one reads ``float``; a layer a policy lacks
    is empty.
    """
    names: list[str] = []
    for pol in policies.values():
        names += [n for n in pol.layers if n not in names]
    return [{"layer": n, **{label: _bits_text(p.layers.get(n)) for label, p in policies.items()}} for n in names]


def _mean_bits(policy: Policy) -> tuple[float, float]:
    bits = list(policy.bits().values())
    if not bits:
        return float("nan"), float("nan")
    return sum(w for w, _ in bits) / len(bits), sum(a for _, a in bits) / len(bits)


def comparison_rows(policies: Mapping[str, Policy]) -> list[dict]:
    """One row per (policy, cost in its totals); a policy without totals gets one row of bits.

    Keys: ``policy``, ``cost``, ``unit``, ``value``, ``target``, ``vs_target``, ``fp32``,
    ``vs_fp32``, ``w8a8``, ``vs_w8a8``, ``min``, ``max``, ``mean_w_bits``, ``mean_a_bits``,
    ``repaired``. Ratios are ``value / reference`` (``None`` when the reference is missing or 0).
    """
    rows = []
    for label, pol in policies.items():
        mean_w, mean_a = _mean_bits(pol)
        base = {"policy": label, "mean_w_bits": round(mean_w, 3), "mean_a_bits": round(mean_a, 3),
                "repaired": bool(pol.meta.get("repaired", False))}
        totals = pol.meta.get("totals") or {}
        if not totals:
            rows.append({**base, "cost": None, "unit": None, "value": None, "target": None, "vs_target": None,
                         "fp32": None, "vs_fp32": None, "w8a8": None, "vs_w8a8": None, "min": None, "max": None})
            continue
        for cost, total in totals.items():
            refs = total.get("references") or {}
            value = total.get("policy")

            def ratio(ref, value=value):
                return None if value is None or not ref else value / ref

            rows.append({**base, "cost": cost, "unit": total.get("unit", ""), "value": value,
                         "target": total.get("target"), "vs_target": ratio(total.get("target")),
                         "fp32": refs.get("fp32"), "vs_fp32": ratio(refs.get("fp32")),
                         "w8a8": refs.get("w8a8"), "vs_w8a8": ratio(refs.get("w8a8")),
                         "min": refs.get("min"), "max": refs.get("max")})
    return rows


def result_rows(results: Mapping[str, Mapping]) -> list[dict]:
    """One row per retrained model from ``{label: train_result.json dict}`` (``tools/train.py``).

    Keys: ``run``, ``mode``, ``bits`` (the policy path or ``WxAy``), one key per metric
    (e.g. ``accuracy/top1``), ``bitops``, ``bitops_vs_fp32``, ``size_bytes``, ``size_vs_fp32``.

    Raises:
        ValueError: a result without ``mode``, ``metrics``, ``bitops`` or ``size``.
    """
    rows = []
    for label, res in results.items():
        missing = [k for k in ("mode", "metrics", "bitops", "size") if k not in res]
        if missing:
            raise ValueError(f"result {label!r} lacks {missing}: give train_result.json files of tools/train.py")
        bitops, size = res["bitops"], res["size"]
        rows.append({"run": label, "mode": res["mode"], "bits": res.get("policy") or res.get("uniform") or "fp32",
                     **{k: v for k, v in res["metrics"].items()},
                     "bitops": bitops["value"], "bitops_vs_fp32": bitops["value"] / bitops["fp32"],
                     "size_bytes": size["value"] / 8, "size_vs_fp32": size["value"] / size["fp32"]})
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_report(policies: Mapping[str, Policy], results: Mapping[str, Mapping] | None = None) -> str:
    """The Markdown text of the report: comparison table, per-layer bits, retrained models."""
    comp = comparison_rows(policies)
    comp_table = _md_table(
        ["policy", "cost", "value", "target", "/ target", "/ FP32", "/ W8A8", "min", "max", "mean W", "mean A", "repaired"],
        [[r["policy"], r["cost"] or "-", format_cost(r["cost"], r["value"], r["unit"]),
          format_cost(r["cost"], r["target"], r["unit"]), _ratio(r["vs_target"]), _ratio(r["vs_fp32"]),
          _ratio(r["vs_w8a8"]), format_cost(r["cost"], r["min"], r["unit"]), format_cost(r["cost"], r["max"], r["unit"]),
          f"{r['mean_w_bits']:.2f}", f"{r['mean_a_bits']:.2f}", "yes" if r["repaired"] else "no"] for r in comp],
    )
    layers = layer_rows(policies)
    layer_table = _md_table(["layer", *policies], [[r["layer"], *(r[k] for k in policies)] for r in layers])
    return "\n\n".join([
        "# SSPS policy report",
        "## Cost comparison",
        "Costs are the totals each search recorded (docs/algorithm.md §4): `/ FP32` and `/ W8A8` are the "
        "policy's cost over every layer at 32/32 bits and at uniform 8/8 bits (pinned layers at "
        "their bits); `mean W`/`mean A` are unweighted means over quantized layers (32 = float).",
        comp_table,
        "## Bits per layer",
        "`W<w>A<a>`: weight and input-activation bits; `*` pinned; `float` excluded from the search.",
        layer_table,
    ] + (_results_section(results) if results else [])) + "\n"


def _results_section(results: Mapping[str, Mapping]) -> list[str]:
    rows = result_rows(results)
    metrics = [k for k in rows[0] if k not in ("run", "mode", "bits", "bitops", "bitops_vs_fp32",
                                               "size_bytes", "size_vs_fp32")]
    table = _md_table(
        ["run", "mode", "bits", *metrics, "BitOPs", "/ FP32", "size", "/ FP32"],
        [[r["run"], r["mode"], str(r["bits"]), *(f"{r[m]:.4g}" if isinstance(r.get(m), float) else str(r.get(m, "-"))
                                                 for m in metrics),
          format_cost("bitops", r["bitops"]), _ratio(r["bitops_vs_fp32"]),
          format_cost("size", r["size_bytes"] * 8), _ratio(r["size_vs_fp32"])] for r in rows],
    )
    return ["## Retrained models", "Measured by `tools/train.py` (quantization-aware training under one "
            "schedule); costs computed on the fixed model.", table]


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def write_report(policies: Mapping[str, Policy], out_dir: str | os.PathLike, figures: bool = True,
                 results: Mapping[str, Mapping] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``layers.csv``, ``comparison.csv`` and (``figures``) ``<label>_bits.png``.

    Args:
        policies: ``{label: Policy}`` in display order (labels become column names and file names).
        out_dir: folder, created if missing.
        figures: also draw each policy's bits per layer (needs matplotlib).
        results: ``{label: train_result.json dict}``; adds ``results.csv`` and a table.

    Returns:
        ``{'markdown': path, 'layers_csv': path, 'comparison_csv': path, '<label>_png': path, ...}``.

    Raises:
        ValueError: no policy given.
    """
    if not policies:
        raise ValueError("write_report needs at least one policy")
    out = Path(out_dir)
    paths = {
        "markdown": atomic_write(out / "report.md", markdown_report(policies, results)),
        "layers_csv": atomic_write(out / "layers.csv", _csv_text(layer_rows(policies))),
        "comparison_csv": atomic_write(out / "comparison.csv", _csv_text(comparison_rows(policies))),
    }
    if results:
        paths["results_csv"] = atomic_write(out / "results.csv", _csv_text(result_rows(results)))
    if figures:
        for label, pol in policies.items():
            paths[f"{label}_png"] = plot_policy(pol, None, out / f"{label}_bits.png")
    return paths
