"""Section ``quality`` of ``ssps benchmark``: policies at equal BitOPs, retrained and compared.

At each budget, every method (SSPS, the best uniform policy within the budget, a random policy
within it, the sensitivity policy) from the same FP32 start, retrained on one schedule over
several seeds; rows give mean ± std over the finished runs.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .budgets import uniform_options
from .common import mean_certainty, spread
from .experiments import Experiments

def decision_stats(policy_path: str) -> dict:
    """How a policy's searched decisions were made: mean certainty at decision, fraction by threshold.

    Reads the policy's ``decisions`` (``{label: {bits, certainty, step, by}}``) when present;
    otherwise the per-layer ``certainty`` (the fraction by threshold is then unknown: None).
    """
    data = json.loads(Path(policy_path).read_text())
    decisions = data.get('decisions')
    if isinstance(decisions, dict) and decisions:
        entries = [d for d in decisions.values() if isinstance(d, dict)]
        values = [d['certainty'] for d in entries if isinstance(d.get('certainty'), (int, float))]
        by = [d.get('by') for d in entries]
        return {'certainty': statistics.fmean(values) if values else None,
                'by_threshold': by.count('threshold') / len(by) if by else None,
                'by': {k: by.count(k) for k in sorted(set(map(str, by)))}, 'decisions': len(entries),
                'source': 'decisions'}
    return {'certainty': mean_certainty(policy_path), 'by_threshold': None, 'by': None, 'decisions': None,
            'source': 'layers'}


def policy_agreement(paths: list[str]) -> float | None:
    """Fraction of searched (layer, slot) decisions with equal bits, averaged over pairs of policies."""
    import itertools

    from ssps_nni.policy import load_policy

    policies = [load_policy(p) for p in paths]
    values = []
    for a, b in itertools.combinations(policies, 2):
        keys = [(n, k) for n, v in a.layers.items() if not v.get('pinned') and not v.get('excluded')
                for k in ('w_bits', 'a_bits')]
        if keys:
            values.append(sum(a.layers[n][k] == b.layers.get(n, {}).get(k) for n, k in keys) / len(keys))
    return statistics.fmean(values) if values else None


def quality_row(exp: Experiments, budget: str, method: str, found: dict) -> dict:
    """One row of the quality section from the runs finished so far (``n`` counts them)."""
    target = exp.budgets[budget]['target']
    row = {'budget': budget, 'budget_arg': exp.budget_arg(budget), 'target': target, 'method': method}
    searches = list(found['searches'])
    if method == 'uniform':
        options = {pair: {'top1': spread([r['top1'] for _, r in runs]), 'top1_runs': [r['top1'] for _, r in runs]}
                   for pair, runs in found['options'].items()}
        done = [p for p in options if options[p]['top1']['n']]
        best = max(done, key=lambda p: options[p]['top1']['mean']) if done else None
        runs = [dict(r, seed=seed, uniform=best) for seed, r in found['options'].get(best, [])]
        row.update(uniform_policy=best, uniform_options=options)
    else:
        runs = [dict(r, seed=seed) for seed, r in found['runs']]
    row.update({
        'top1': spread([r['top1'] for r in runs]), 'top1_runs': [r['top1'] for r in runs],
        'bitops': spread([r['bitops'] for r in runs]),
        'cost_ratio': spread([r['bitops'] / target for r in runs if r.get('bitops') is not None]),
        'search_cost_ratio': spread([s['cost_ratio'] for _, s in searches]) if searches else None,
        'search_s': spread([s['search_s'] for _, s in searches]) if searches else None,
        'same_as_uniform': [r.get('same_as_uniform') or False for r in runs] if method != 'uniform' else None,
        'runs': [{'seed': r['seed'], 'top1': r['top1'], 'bitops': r['bitops'], 'cost_ratio': r['bitops'] / target,
                  'checkpoint': r.get('checkpoint'), 'uniform': r.get('uniform') or r.get('same_as_uniform') or None}
                 for r in runs],
        'searches': [{'seed': seed, 'policy': s['policy'], 'cost_ratio': s['cost_ratio'], 'search_s': s['search_s']}
                     for seed, s in searches],
    })
    if len(searches) > 1:
        row['agreement'] = policy_agreement([s['policy'] for _, s in searches])
    if method == 'ssps' and searches:
        stats = [decision_stats(s['policy']) for _, s in searches]
        row.update(certainty=spread([d['certainty'] for d in stats]),
                   by_threshold=spread([d['by_threshold'] for d in stats]),
                   final_step=spread([s['final_step'] for _, s in searches]),
                   steps=spread([s['steps'] for _, s in searches]),
                   decisions_source=stats[0]['source'])
        for entry, d in zip(row['searches'], stats):
            entry.update(certainty=d['certainty'], by_threshold=d['by_threshold'], by=d['by'])
        for entry, (_, s) in zip(row['searches'], searches):
            entry.update(final_step=s['final_step'], steps=s['steps'])
    return row


def quality(exp: Experiments, progress=None) -> dict:
    """Section 3: every method's policy at each budget, retrained from the same FP32 start.

    Budgets and methods run in the order of the settings; ``progress(value)`` is called with the
    section as it stands after every finished search and retraining (rows without a finished run
    have ``n = 0``), so a stopped benchmark still leaves a table of what finished.
    """
    fp32 = exp.fp32()
    plan = [(b, m) for b in exp.s['budgets'] for m in exp.s.get('methods', ('uniform', 'ssps'))]
    found = {key: {'searches': [], 'runs': [], 'options': {}} for key in plan}

    def snapshot(complete: bool) -> dict:
        return {'test_images': exp.test_images(), 'fp32': fp32, 'complete': complete,
                'budgets': {b: exp.budgets[b] for b in exp.s['budgets']},
                'methods': list(exp.s.get('methods', ('uniform', 'ssps'))),
                'rows': [quality_row(exp, b, m, found[(b, m)]) for b, m in plan]}

    def finished():
        if progress is not None:
            progress(snapshot(False))

    # first seed of every method at every budget, then the second seeds: a stopped run still
    # leaves every row with a first result
    rounds = max(len(exp.seeds(m)) for _, m in plan)
    for rank in range(rounds):
        for budget, method in plan:
            seeds = exp.seeds(method)
            if rank >= len(seeds):
                continue
            seed, record = seeds[rank], found[(budget, method)]
            if method == 'uniform':
                for pair in uniform_options(budget):
                    record['options'].setdefault(pair, []).append((seed, exp.retrain_uniform(pair, seed)))
                    finished()
            else:
                record['searches'].append((seed, exp.find_policy(method, budget, seed)))
                finished()
                record['runs'].append((seed, exp.retrain(method, budget, seed)))
                finished()
    return snapshot(True)
