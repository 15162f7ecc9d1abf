"""Section ``time-to-model`` of ``ssps benchmark``: the wall time to a deployable model, and its accuracy.

What a user weighs is the time to a quantized model of a given accuracy, not the time to a
policy. At each budget (``2.5-bit`` and W3A3 BitOPs by default), for paired seeds (every arm
uses the same seeds, so their differences pair up), and with **equal total training steps**
``T = (search epochs + retraining epochs) x iterations per epoch``:

(a) ``ssps``: the SSPS search, which ends at the step ``k`` of its last decision (the budget
    filled, its checkpoint saved), continued by QAT from that checkpoint (its weights and the
    step sizes it trained for the chosen bits; ``ssps train --policy SEARCH_DIR``) for ``T - k``
    steps;
(b) ``sensitivity``: the sensitivity policy (no training, ``ssps search --method sensitivity``),
    then QAT from the FP32 start for ``T`` steps;
(c) ``uniform``: each best uniform policy within the budget, QAT from the FP32 start for ``T``.

Every QAT runs at the retraining learning rate with a cosine over its own steps (per
iteration), then the test split. Phases timed (wall seconds): the policy (search or
sensitivity), the QAT's training, its test. Rows give mean ± std over seeds and the paired
difference in top-1 to the best uniform row (mean ± its standard error over seeds).
Runs are cached under ``OUT/runs/ttm_*`` like every mmengine run of the benchmark.
"""
from __future__ import annotations

import statistics

from ..sweep.stats import paired_se
from .budgets import uniform_options
from .common import spread
from .experiments import Experiments

#: The arms, in table order.
ARMS = ('ssps', 'sensitivity', 'uniform')


def total_steps(exp: Experiments, iters_per_epoch: int) -> int:
    """``T``: the search's planned epochs plus a retraining's, in iterations."""
    return (exp.s['search']['epochs'] + exp.s['retrain']['epochs']) * iters_per_epoch


def run_arm(exp: Experiments, arm: str, budget: str, seed: int, option: str | None = None) -> dict:
    """One arm at one budget and seed: its phases' wall seconds, steps, top-1 and BitOPs."""
    ipe = exp.ttm_search(budget, seed)['iters_per_epoch']  # one search per (budget, seed): its loader's length
    steps = total_steps(exp, ipe)
    if arm == 'ssps':
        search = exp.ttm_search(budget, seed)
        k = search['steps']
        qat = exp.ttm_qat(f'ttm_qat_ssps_{budget}_s{seed}', ['--policy', search['policy']], seed, max(steps - k, 1),
                          ipe, search=(budget, seed))
        policy_s, policy_steps = search['search_s'], k
    elif arm == 'sensitivity':
        found = exp.policy_search('sensitivity', budget, seed)
        qat = exp.ttm_qat(f'ttm_qat_sensitivity_{budget}_s{seed}', ['--policy', found['policy']], seed, steps, ipe)
        policy_s, policy_steps = found['search_s'], 0
    else:
        qat = exp.ttm_qat(f'ttm_qat_uniform_{option}_s{seed}', ['--uniform', option], seed, steps, ipe)
        policy_s, policy_steps = 0.0, 0
    train_s, test_s = qat.get('train_s') or 0.0, qat.get('test_s') or 0.0
    return {'seed': seed, 'policy_s': policy_s, 'qat_s': train_s, 'test_s': test_s,
            'total_s': policy_s + train_s + test_s, 'policy_steps': policy_steps,
            'qat_steps': steps - policy_steps if arm == 'ssps' else steps, 'total_steps': steps,
            'top1': qat['top1'], 'bitops': qat['bitops']}


def paired(runs: list[dict], reference: list[dict]) -> dict | None:
    """Mean top-1 difference to ``reference`` over the seeds both have, with its standard error."""
    ref = {r['seed']: r['top1'] for r in reference if r.get('top1') is not None}
    diffs = [r['top1'] - ref[r['seed']] for r in runs if r.get('top1') is not None and r['seed'] in ref]
    if not diffs:
        return None
    return {'mean': statistics.fmean(diffs), 'se': paired_se(diffs), 'n': len(diffs)}


def summarize(budget: str, label: str, arm: str, runs: list[dict], target: float) -> dict:
    row = {'budget': budget, 'method': label, 'arm': arm, 'runs': runs,
           'cost_ratio': spread([r['bitops'] / target for r in runs if r.get('bitops') is not None])}
    for key in ('policy_s', 'qat_s', 'test_s', 'total_s', 'policy_steps', 'qat_steps', 'top1'):
        row[key] = spread([r[key] for r in runs])
    return row


def time_to_model(exp: Experiments, progress=None) -> dict:
    """The section: rows per budget (SSPS continued, sensitivity, each uniform option).

    ``progress(value)`` is called with the section as it stands after every finished seed of a
    row, so a stopped benchmark leaves a table of what finished.
    """
    settings = exp.s['ttm']
    budgets, seeds = tuple(settings['budgets']), tuple(exp.s['seeds'])
    plan = [(b, 'ssps', 'SSPS, continued by QAT', None) for b in budgets]
    plan += [(b, 'sensitivity', 'sensitivity, QAT from FP32', None) for b in budgets]
    plan += [(b, 'uniform', f'uniform {pair}, QAT from FP32', pair) for b in budgets for pair in uniform_options(b)]
    plan.sort(key=lambda p: budgets.index(p[0]))
    found = {i: [] for i in range(len(plan))}

    def snapshot(complete: bool) -> dict:
        rows = [summarize(b, label, arm, found[i], exp.budgets[b]['target']) for i, (b, arm, label, _) in enumerate(plan)]
        for b in budgets:
            uniform = [r for r in rows if r['budget'] == b and r['arm'] == 'uniform' and r['top1']['n']]
            best = max(uniform, key=lambda r: r['top1']['mean'], default=None)
            for r in rows:
                if r['budget'] == b:
                    r['vs_uniform'] = paired(r['runs'], best['runs']) if best and r is not best else None
                    r['reference'] = best['method'] if best else None
        return {'budgets': {b: exp.budgets[b] for b in budgets}, 'seeds': list(seeds), 'fp32': exp.fp32(),
                'test_images': exp.test_images(), 'complete': complete, 'rows': rows}

    for seed in seeds:  # every arm of the first seed first: a stopped run still has a full table
        for i, (budget, arm, _, option) in enumerate(plan):
            found[i].append(run_arm(exp, arm, budget, seed, option))
            if progress is not None:
                progress(snapshot(False))
    return snapshot(True)
