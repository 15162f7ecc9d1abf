"""Section ``sequential`` of ``ssps benchmark``: the search with and without sequential determination.

Without it (``threshold=None, schedule='none'``) every decision stays open and the argmax is
taken at the end; the rows compare steps and time to the final policy, its cost and its
retrained accuracy.
"""
from __future__ import annotations

from .common import mean_certainty, spread
from .experiments import Experiments

def sequential(exp: Experiments) -> dict:
    """Section 2: the W4A4-budget search with and without sequential determination."""
    budget = 'W4A4' if 'W4A4' in exp.s['budgets'] else exp.s['budgets'][-1]
    rows = []
    for seq in (True, False):
        searches = [exp.search(budget, seed, seq) for seed in exp.s['seeds']]
        retrains = [exp.retrain('ssps', budget, seed, seq) for seed in exp.s['seeds']]
        rows.append({
            'sequential': seq, 'budget': budget,
            'steps': spread([s['steps'] for s in searches]),
            'stable_step': spread([s['stable_step'] for s in searches]),
            'final_step': spread([s['final_step'] for s in searches]),
            'final_s': spread([s['final_s'] for s in searches]),
            'search_s': spread([s['search_s'] for s in searches]),
            'cost_ratio': spread([s['cost_ratio'] for s in searches]),
            'policy_changes': spread([s['policy_changes'] for s in searches]),
            'certainty': spread([mean_certainty(s['policy']) for s in searches]),
            'top1': spread([r['top1'] for r in retrains]), 'top1_runs': [r['top1'] for r in retrains],
        })
    return {'budget': budget, 'rows': rows}
