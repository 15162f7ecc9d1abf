"""The runs of a sweep and what each depends on.

=============================  =============================================================
run (``OUT/runs/<name>``)      what
=============================  =============================================================
``fp32``                       the start checkpoint evaluated (``ssps train``, FP32, 0 epochs)
``uniform_WxAy_s<r>``          ``ssps train --uniform WxAy --seed r`` (the uniform points and W8A8)
``ssps_<budget>_p<r>``         ``ssps search --budget ...`` (policy seed ``r``)
``random_<budget>_p<r>``       ``ssps search --method random``
``sensitivity_scores``         the sensitivity scores of the start model, once
``sensitivity_<budget>_p0``    the sensitivity policy at the budget, from those scores
``retrain_<m>_<budget>_s<r>``  ``ssps train --policy <that policy> --seed r``
=============================  =============================================================

Pairing: every retraining at seed ``r`` runs with ``--seed r`` (the runner's data order and the
quantizers' calibration samples). A policy that is a uniform ``WxAy`` of the sweep is not
retrained again: it takes that uniform point's run at the same seed (the same training).
Seed-major order: every run of seed 0 comes before any run of seed 1, so a sweep stopped
early already has a whole frontier of its first seeds.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

from ..benchmark.budgets import file_sha1
from ..benchmark.runs import schedule_options, uniform_pair

#: The reference uniform policy drawn on the frontier (with FP32).
REFERENCE = 'W8A8'


@dataclass
class Run:
    """A run to execute: its cache settings and the call (``jobs.RUNS[run](folder, **kwargs)``)."""
    settings: dict
    run: str
    kwargs: dict


@dataclass
class Alias:
    """This job's result is another job's (a policy equal to a uniform point of the sweep)."""
    name: str
    why: str


@dataclass
class Job:
    """One node of the sweep: ``make(results of deps)`` gives its :class:`Run` or :class:`Alias`."""
    name: str
    kind: str  # fp32, uniform, scores, policy:<method>, retrain
    deps: tuple[str, ...]
    make: Callable[[dict], object]
    info: dict = field(default_factory=dict)


def options(s: dict, phase: dict) -> list[str]:
    """``--cfg-options`` of a run: the schedule (epochs, lr; no validation while training), the
    data root, then the user's ``--cfg-options`` (they win)."""
    opts = schedule_options({}, phase, s['data_root'])
    if phase['epochs'] == 0:  # no step: no learning-rate schedule (mmengine refuses one that ends at epoch 0)
        opts = [o for o in opts if not o.startswith('param_scheduler.')] + ['param_scheduler=None']
    return opts + list(s['cfg_options'])


def common(s: dict, phase: dict) -> dict:
    """What every run's cache key holds."""
    return {'config': s['config'], 'config_sha1': s['config_sha1'], 'data_root': s['data_root'],
            'start': {'path': s['load_from'], 'sha1': s['load_sha1']}, 'cfg_options': list(s['cfg_options']),
            'phase': phase}


def build(s: dict) -> list[Job]:
    """Every job of the sweep with settings ``s`` (see ``command.resolve``), in priority order."""
    jobs: list[Job] = []
    retrain = s['retrain']
    search = s['search']
    uniform = list(dict.fromkeys([*s['uniform'], REFERENCE]))

    def train_job(name, kind, seed, mode, phase, info):
        def make(_):
            settings = dict(common(s, phase), seed=seed, mode=mode, extra=list(s['train_args']))
            return Run(settings, 'train', dict(config=s['run_config'], options=options(s, phase), seed=seed, mode=mode,
                                               load_from=s['load_from'], extra=list(s['train_args'])))
        return Job(name, kind, (), make, info)

    jobs.append(train_job('fp32', 'fp32', 0, [], dict(epochs=0, lr=retrain['lr']), {'what': 'FP32 start'}))

    policy_seeds = s['seeds'] if s['search_per_seed'] else s['seeds'][:1]
    if 'sensitivity' in s['methods']:
        any_budget = s['budgets'][0]  # the scores do not depend on the budget

        def make_scores(_):
            settings = dict(common(s, search), seed=0, batches=s['sensitivity_batches'], extra=list(s['search_args']))
            return Run(settings, 'scores', dict(config=s['run_config'], options=options(s, search), seed=0,
                                                budget_arg=any_budget['arg'], load_from=s['load_from'],
                                                batches=s['sensitivity_batches'], extra=list(s['search_args'])))
        jobs.append(Job('sensitivity_scores', 'scores', (), make_scores, {'what': 'sensitivity scores'}))

    def policy_job(method, budget, pseed):
        name = f'{method}_{budget["slug"]}_p{pseed}'
        info = {'what': f'{method} policy at {budget["label"]}', 'method': method, 'budget': budget['slug'],
                'seed': pseed}
        extra = list(s['search_args'])
        if method == 'sensitivity':
            def make(dep):
                scores = dep['sensitivity_scores']['scores']
                settings = dict(common(s, search), seed=pseed, budget=budget['arg'], method=method,
                                scores=scores, scores_sha1=file_sha1(scores), extra=extra)
                return Run(settings, 'solve', dict(config=s['run_config'], options=options(s, search), seed=pseed,
                                                   budget_arg=budget['arg'], load_from=s['load_from'],
                                                   scores_path=scores, extra=extra))
            return Job(name, f'policy:{method}', ('sensitivity_scores',), make, info)

        def make(_):
            settings = dict(common(s, search), seed=pseed, budget=budget['arg'], method=method, extra=extra)
            return Run(settings, 'find', dict(config=s['run_config'], options=options(s, search), seed=pseed,
                                              budget_arg=budget['arg'], method=method, load_from=s['load_from'],
                                              extra=extra))
        return Job(name, f'policy:{method}', (), make, info)

    for method in s['methods']:
        seeds = [0] if method == 'sensitivity' else policy_seeds
        for budget in s['budgets']:
            for pseed in seeds:
                jobs.append(policy_job(method, budget, pseed))

    for seed in s['seeds']:
        for pair in uniform:
            jobs.append(train_job(f'uniform_{pair}_s{seed}', 'uniform', seed, ['--uniform', pair], retrain,
                                  {'what': f'uniform {pair}', 'pair': pair, 'seed': seed}))
        for budget in s['budgets']:
            for method in s['methods']:
                jobs.append(_retrain(s, method, budget, seed, uniform))
    return jobs


def _retrain(s: dict, method: str, budget: dict, seed: int, uniform: list[str]) -> Job:
    """``ssps train --policy`` of a method's policy at ``budget``, seed ``seed`` (or an :class:`Alias`)."""
    pseed = seed if (s['search_per_seed'] and method != 'sensitivity') else 0
    source = f'{method}_{budget["slug"]}_p{pseed}'
    phase = s['retrain']

    def make(dep):
        from ssps_nni.policy import load_policy

        path = dep[source]['policy']
        policy = load_policy(path)
        pair = uniform_pair(policy)
        if pair in uniform:
            return Alias(f'uniform_{pair}_s{seed}', f'the {method} policy is uniform {pair}')
        mode = ['--policy', path]
        # keyed by the bits (what is trained), not the file: a policy found again with the same bits
        # (its timings differ) keeps its retrainings
        bits = hashlib.sha1(json.dumps(sorted(policy.bits().items())).encode()).hexdigest()
        settings = dict(common(s, phase), seed=seed, mode=mode, policy_bits=bits, extra=list(s['train_args']))
        return Run(settings, 'train', dict(config=s['run_config'], options=options(s, phase), seed=seed, mode=mode,
                                           load_from=s['load_from'], extra=list(s['train_args'])))

    info = {'what': f'{method} at {budget["label"]}', 'method': method, 'budget': budget['slug'], 'seed': seed}
    return Job(f'retrain_{method}_{budget["slug"]}_s{seed}', 'retrain', (source,), make, info)
