"""Human-readable lines about a policy's cost: policy vs target, and the references (docs/algorithm.md §4).

For logs and the command line's summary (the mmengine hook, ``ssps search``); :mod:`ssps_nni.report`
writes the tables that compare several policies.
"""
from __future__ import annotations

from typing import Callable

from .cost import COST_MODELS, LutCost
from .policy import Policy

__all__ = ['cost_formatter', 'cost_lines']


def cost_formatter(name: str, unit: str = '') -> Callable[[float], str]:
    """``value -> text`` in the cost's display unit (GBitOPs, MB, ...)."""
    cls = COST_MODELS.get(name)
    if cls is None or cls is LutCost:
        return lambda value: f'{value:.4g} {unit}'.strip()
    return cls().format


#: the reference costs named with a budget, in order (a LUT may leave fp32 or w8a8 out)
REFERENCE_LABELS = (('fp32', 'FP32'), ('w8a8', 'W8A8'), ('min', 'min'), ('max', 'max'))


def reference_text(refs: dict, fmt) -> str:
    """``'FP32 x, W8A8 y, min z, max w'`` for the references present in ``refs`` (``fmt`` formats a cost)."""
    return ', '.join(f'{label} {fmt(refs[key])}' for key, label in REFERENCE_LABELS if key in refs)


def cost_lines(policy: Policy) -> list[str]:
    """One line per budget: the policy's cost, its ratio to the target, the target, the references."""
    lines = []
    for name, total in policy.meta.get('totals', {}).items():
        fmt = cost_formatter(name, total.get('unit', ''))
        refs = total.get('references', {})
        ratio = total['policy'] / total['target'] if total.get('target') else float('nan')
        lines.append(f'{name}: policy {fmt(total["policy"])} = {ratio:.3f} x target {fmt(total["target"])}')
        lines.append(f'{name} references: ' + reference_text(refs, fmt))
    fill = policy.meta.get('fill')
    if fill and fill.get('raises'):
        for name, before in fill['before'].items():
            total = policy.meta.get('totals', {}).get(name, {})
            fmt = cost_formatter(name, total.get('unit', ''))
            lines.append(f'{name}: budget fill raised {len(fill["raises"])} bit-width(s): '
                         f'{fmt(before)} -> {fmt(fill["after"][name])}')
    decisions = [d for d in policy.meta.get('decisions', {}).values() if d.get('by') in ('threshold', 'schedule', 'final')]
    if decisions:
        by = sum(d['by'] == 'threshold' for d in decisions)
        mean = sum(float(d.get('certainty', 0.0)) for d in decisions) / len(decisions)
        lines.append(f'decisions: {by}/{len(decisions)} fixed by the certainty threshold, '
                     f'mean certainty when fixed {mean:.3f}')
    if policy.meta.get('repaired'):
        lines.append('note: the final policy needed a repair to fit the budget')
    return lines
