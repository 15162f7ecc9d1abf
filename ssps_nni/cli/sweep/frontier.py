"""``frontier.json``: every point of a sweep from its finished runs, judged against the uniform line.

Built from the runs finished so far (a partial sweep gives a partial frontier, ``complete``
false). Costs are those of the trained model (``ssps train``'s ``train_result.json``: BitOPs and
size), and for ``bitfusion`` the layer profile priced at the trained policy's bits.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import stats
from .plan import REFERENCE

#: Preferred metrics, in order, when ``--metric`` is not given (classification, detection).
METRICS = ('accuracy/top1', 'coco/bbox_mAP')


def pick_metric(results: dict, wanted: str | None) -> str | None:
    """``wanted``, else the first of :data:`METRICS` a finished evaluation has, else its first number."""
    for result in results.values():
        metrics = result.get('metrics')
        if not isinstance(metrics, dict):
            continue
        if wanted:
            return wanted
        for key in METRICS:
            if key in metrics:
                return key
        numbers = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        if numbers:
            return numbers[0]
    return wanted


def reported(results: dict) -> list[str]:
    """The numeric metrics that the finished evaluations report, sorted."""
    return sorted({k for r in results.values() if isinstance(r.get('metrics'), dict)
                   for k, v in r['metrics'].items() if isinstance(v, (int, float))})


def check_metric(results: dict, wanted: str | None) -> None:
    """Refuse ``--metric wanted`` when finished evaluations report metrics but not this one.

    Raises:
        InputError: one line naming the metrics they report.
    """
    names = reported(results)
    if wanted and names and wanted not in names:
        from ..common import InputError

        raise InputError(f'--metric {wanted!r} is not reported by the runs; they report {", ".join(names)}: give '
                         'one of these (the finished runs are kept and reused; no frontier file was written)')


def point_costs(result: dict, priced) -> dict:
    """``{cost: value}`` of a trained run: BitOPs and size as trained, other costs from the profile."""
    costs = {'bitops': result.get('bitops'), 'size': result.get('size')}
    if priced is not None and result.get('qat_policy') and Path(result['qat_policy']).is_file():
        costs.update({k: v for k, v in priced(result['qat_policy']).items() if k not in costs})
    return costs


def spread(values: list[float]) -> dict:
    """``{'mean', 'std', 'sem', 'n'}`` (sem = std / sqrt(n), unpaired: the error bar of a point)."""
    if not values:
        return {'mean': None, 'std': None, 'sem': None, 'n': 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {'mean': statistics.fmean(values), 'std': std,
            'sem': std / len(values) ** 0.5 if std is not None else None, 'n': len(values)}


def build(s: dict, results: dict, jobs_total: int, priced=None, environment: dict | None = None) -> dict:
    """The frontier of settings ``s`` from ``results`` (``{run name: result}``).

    Args:
        priced: ``priced(qat_policy_path) -> {cost: value}`` for the costs ``train_result.json``
            does not hold (None: BitOPs and size only).
    """
    metric = pick_metric(results, s.get('metric'))

    def runs_of(prefix: str) -> tuple[dict, list[dict]]:
        found = {r: results[f'{prefix}_s{r}'] for r in s['seeds'] if f'{prefix}_s{r}' in results}
        values = {str(r): res['metrics'].get(metric) for r, res in found.items()
                  if isinstance(res.get('metrics'), dict) and isinstance(res['metrics'].get(metric), (int, float))}
        return values, list(found.values())

    uniform = {}
    for pair in dict.fromkeys([*s['uniform'], REFERENCE]):
        values, found = runs_of(f'uniform_{pair}')
        if not found:
            continue
        uniform[pair] = {'name': pair, 'costs': point_costs(found[0], priced), 'runs': values,
                         **spread(list(values.values())), 'reference': pair == REFERENCE and pair not in s['uniform']}
    for cost in dict.fromkeys(b['cost'] for b in s['budgets']):
        line = stats.envelope({p: (u['costs'][cost], u['mean']) for p, u in uniform.items()
                               if u['mean'] is not None and u['costs'].get(cost) is not None})
        for p, u in uniform.items():
            u.setdefault('on_line', {})[cost] = any(p == v[0] for v in line)

    points = []
    for budget in s['budgets']:
        row = {}
        for method in s['methods']:
            values, found = runs_of(f'retrain_{method}_{budget["slug"]}')
            pseeds = s['seeds'] if s['search_per_seed'] and method != 'sensitivity' else s['seeds'][:1]
            policies = {str(p): results[f'{method}_{budget["slug"]}_p{p}'].get('policy') for p in pseeds
                        if f'{method}_{budget["slug"]}_p{p}' in results}
            cost_runs = [point_costs(r, priced) for r in found]
            costs = {k: statistics.fmean([c[k] for c in cost_runs if c.get(k) is not None])
                     for k in (cost_runs[0] if cost_runs else {}) if any(c.get(k) is not None for c in cost_runs)}
            same = sorted({r['alias'].split('_')[1] for r in found if r.get('alias')})
            point = {'method': method, 'budget': budget['label'], 'slug': budget['slug'], 'cost_model': budget['cost'],
                     'target': budget['target'], 'costs': costs, 'runs': values, **spread(list(values.values())),
                     'cost_ratio': costs[budget['cost']] / budget['target'] if budget['cost'] in costs else None,
                     'policies': policies, 'same_as_uniform': same[0] if len(same) == 1 else (same or None)}
            if costs.get(budget['cost']) is not None and values:
                uni = {p: (u['costs'][budget['cost']], {k: v for k, v in u['runs'].items()})
                       for p, u in uniform.items() if u['costs'].get(budget['cost']) is not None and u['runs']}
                point['vs_uniform'] = stats.vs_line(values, costs[budget['cost']], uni)
            else:
                point['vs_uniform'] = None
            row[method] = point
        for method, point in row.items():
            point['vs_methods'] = {other: stats.compare(point['runs'], o['runs'])
                                   for other, o in row.items() if other != method and point['runs'] and o['runs']}
        points += list(row.values())

    fp32 = results.get('fp32')
    return {
        'format': 'ssps-frontier', 'version': 1, 'complete': len(results) == jobs_total, 'runs_finished': len(results),
        'runs_total': jobs_total, 'command': s.get('command'), 'metric': metric, 'seeds': list(s['seeds']),
        'paired': ('every retraining at seed r runs with --seed r: the same data order and the same quantizer '
                   'calibration samples for every policy'),
        'noise_rule': f'a difference counts when |mean| > {stats.NOISE_SE:g} paired SE (n-1 stdev / sqrt(n))',
        'settings': {k: v for k, v in s.items() if k not in ('budgets', 'command')},
        'budgets': s['budgets'], 'cost_references': s.get('cost_references'),
        'test_samples': s.get('test_samples'),
        'references': {
            'fp32': {'metric': (fp32 or {}).get('metrics', {}).get(metric) if fp32 else None,
                     'costs': point_costs(fp32, None) if fp32 else None, 'checkpoint': s['load_from']},
            'w8a8': uniform.get(REFERENCE)},
        'uniform': list(uniform.values()), 'points': points,
        'sensitivity_scores': (results.get('sensitivity_scores') or {}).get('scores'),
        'environment': environment,
    }


def write(path: Path, data: dict) -> Path:
    from ssps_nni.files import atomic_write

    return atomic_write(path, json.dumps(data, indent=2, default=str) + '\n')
