"""The runs shared by the ``sequential`` and ``quality`` sections of ``ssps benchmark``.

:class:`Experiments` names each run (FP32 start, search, one-shot policy, retraining), keys it
by its settings and gets it from the :class:`~ssps_nni.cli.benchmark.runs.RunCache`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..common import REPO as ROOT
from .budgets import budget_table, shipped_fp32
from .runs import RunCache, policy_run, schedule_options, search_run, train_run, uniform_pair

class Experiments:
    """The mmengine runs shared by the sequential and quality sections (cached, resumable)."""

    def __init__(self, settings: dict, out: Path, data_root: str | None, log):
        self.s, self.data_root, self.log = settings, data_root, log
        self.config = str(ROOT / settings['config'])
        self.cache = RunCache(out, log)
        self._budgets = None
        self._fp32 = None

    def _settings(self, **extra) -> dict:
        return dict(config=self.s['config'], data_root=self.data_root, **extra)

    def options(self, phase: dict) -> list[str]:
        return schedule_options(self.s, phase, self.data_root)

    def seeds(self, method: str) -> tuple[int, ...]:
        """Seeds of a method's runs: every seed, or the first ``<method>_seeds`` of them."""
        seeds = tuple(self.s['seeds'])
        return seeds[:self.s.get(f'{method}_seeds', len(seeds))]

    @property
    def budgets(self) -> dict:
        """:func:`budget_table` of the quality budgets (and W4A4, the sequential section's)."""
        if self._budgets is None:
            labels = list(dict.fromkeys([*self.s['budgets'], *self.s.get('ttm', {}).get('budgets', ()), 'W4A4']))
            self._budgets = budget_table(self.config, labels)
        return self._budgets

    def budget_arg(self, budget: str) -> str:
        return self.budgets[budget]['arg'] if budget in self.budgets else f'bitops={budget}'

    def _budget_settings(self, budget: str) -> dict:
        """The budget in a run's cache key (its absolute value when it is not a WxAy form)."""
        arg = self.budget_arg(budget)
        return dict(budget=budget) if arg == f'bitops={budget}' else dict(budget=budget, budget_arg=arg)

    def test_images(self) -> int:
        """Images of the test split every retrained model is evaluated on."""
        from ssps_nni.data import CIFAR10_CLASSES, load_cifar10_subset

        if 'test_indices' in self.s:
            return len(self.s['test_indices'])
        if self.data_root:
            return sum(1 for c in CIFAR10_CLASSES for n in os.listdir(Path(self.data_root) / 'test' / c)
                       if n.lower().endswith(('.jpg', '.jpeg', '.png')))
        return len(load_cifar10_subset('test'))

    def fp32(self) -> dict:
        """The FP32 start: trained here (cached), or the shipped checkpoint of the standard mode."""
        if self._fp32 is not None:
            return self._fp32
        phase = self.s['fp32']
        if 'checkpoint' in phase:
            entry = shipped_fp32(phase['checkpoint'], self.config)
            self.log(f'FP32 start: {entry["checkpoint"]} (top-1 {entry["top1"]:.2f} % by its JSON; not trained here)')
        else:
            entry = self.cache.get('fp32', self._settings(phase=phase), lambda d: train_run(
                d, self.config, self.options(phase), 0, [], None))
        if entry.get('bitops') is None:
            entry = dict(entry, bitops=self.budgets['fp32'])
        self._fp32 = entry
        return entry

    def _fp32_key(self):
        """The FP32 start in a run's cache key: its path (and content hash when shipped)."""
        fp32 = self.fp32()
        return {'checkpoint': fp32['checkpoint'], 'sha1': fp32['sha1']} if 'sha1' in fp32 else fp32['checkpoint']

    def search(self, budget: str, seed: int, sequential: bool = True) -> dict:
        """The SSPS search (mmengine driver) at ``budget``."""
        fp32, phase = self.fp32(), self.s['search']
        name = f'search_{budget}_{"seq" if sequential else "noseq"}_s{seed}'
        return self.cache.get(name, self._settings(phase=phase, fp32=self._fp32_key(), **self._budget_settings(budget),
                                                   seed=seed, sequential=sequential), lambda d: search_run(
            d, self.config, self.options(phase), seed, self.budget_arg(budget), sequential, fp32['checkpoint']))

    def policy_search(self, method: str, budget: str, seed: int) -> dict:
        """``ssps search --method random|sensitivity`` at ``budget`` (from the FP32 start)."""
        fp32, phase = self.fp32(), self.s['search']
        batches = self.s.get('sensitivity_batches') if method == 'sensitivity' else None
        return self.cache.get(f'{method}_{budget}_s{seed}', self._settings(
            phase=phase, fp32=self._fp32_key(), **self._budget_settings(budget), seed=seed, method=method,
            batches=batches), lambda d: policy_run(d, self.config, self.options(phase), seed, self.budget_arg(budget),
                                                   method, fp32['checkpoint'], batches))

    def find_policy(self, method: str, budget: str, seed: int) -> dict:
        return self.search(budget, seed) if method == 'ssps' else self.policy_search(method, budget, seed)

    def retrain_uniform(self, pair: str, seed: int) -> dict:
        """``ssps train --uniform WxAy`` from the FP32 start."""
        fp32, phase = self.fp32(), self.s['retrain']
        mode = ['--uniform', pair]
        return self.cache.get(f'retrain_uniform_{pair}_s{seed}', self._settings(
            phase=phase, fp32=self._fp32_key(), mode=mode, seed=seed), lambda d: train_run(
            d, self.config, self.options(phase), seed, mode, fp32['checkpoint']))

    # -- time to a deployable model (section time-to-model) ----------------------------------------

    def _ttm_search_settings(self, budget: str, seed: int) -> dict:
        return self._settings(phase=self.s['search'], fp32=self._fp32_key(), **self._budget_settings(budget),
                              seed=seed, section='time-to-model')

    def ttm_search(self, budget: str, seed: int) -> dict:
        """The SSPS search of the time-to-model section: it ends at its last decision (step ``steps``)
        and its checkpoint of that step (``checkpoint``) is where its QAT continues."""
        fp32, phase = self.fp32(), self.s['search']
        return self.cache.get(f'ttm_search_{budget}_s{seed}', self._ttm_search_settings(budget, seed), lambda d: search_run(
            d, self.config, self.options(phase), seed, self.budget_arg(budget), True, fp32['checkpoint']))

    def ttm_qat(self, name: str, mode: list[str], seed: int, steps: int, iters_per_epoch: int,
                search: tuple[str, int] | None = None) -> dict:
        """``ssps train`` for exactly ``steps`` iterations at the retraining learning rate, cosine
        over those iterations; from the FP32 start, or with ``search=(budget, seed)`` from that
        :meth:`ttm_search`'s checkpoint (its weights and step sizes)."""
        phase = self.s['retrain']
        epochs = math.ceil(steps / iters_per_epoch)
        options = self.options(dict(phase, epochs=epochs)) + [
            f'train_cfg.max_iters={steps}', 'param_scheduler.by_epoch=False', f'param_scheduler.T_max={steps}']
        start = self.ttm_search(*search)['checkpoint'] if search else self.fp32()['checkpoint']
        origin = self._ttm_search_settings(*search) if search else self._fp32_key()
        settings = self._settings(phase=phase, steps=steps, mode=mode, seed=seed, start=origin)
        return self.cache.get(name, settings, lambda d: train_run(d, self.config, options, seed, mode, start))

    def retrain(self, what: str, budget: str, seed: int, sequential: bool = True) -> dict:
        """``what``: ``'uniform'`` (``--uniform budget``) or a method's policy at ``budget``
        (``'ssps'``, ``'random'``, ``'sensitivity'``), retrained from the FP32 start.

        A policy that is a uniform ``WxAy`` reuses that uniform retraining (``same_as_uniform``).
        """
        if what == 'uniform':
            return self.retrain_uniform(budget, seed)
        from ssps_nni.policy import load_policy

        fp32, phase = self.fp32(), self.s['retrain']
        found = self.search(budget, seed, sequential) if what == 'ssps' else self.policy_search(what, budget, seed)
        policy = found['policy']
        pair = uniform_pair(load_policy(policy))
        if pair is not None:  # e.g. the W2A2 budget with 2 bits the lowest candidate: there was no choice
            return dict(self.retrain_uniform(pair, seed), same_as_uniform=pair)
        name = (f'retrain_ssps_{budget}_{"seq" if sequential else "noseq"}_s{seed}' if what == 'ssps'
                else f'retrain_{what}_{budget}_s{seed}')
        mode = ['--policy', policy]
        return self.cache.get(name, self._settings(phase=phase, fp32=self._fp32_key(), mode=mode, seed=seed),
                              lambda d: train_run(d, self.config, self.options(phase), seed, mode,
                                                  fp32['checkpoint']))
