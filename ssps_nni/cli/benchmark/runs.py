"""The mmengine runs behind the ``sequential`` and ``quality`` sections of ``ssps benchmark``.

Each run is ``ssps train`` or ``ssps search`` called in process through its command's public
functions (``main``, and for a traced search ``parse_args``, ``build_config``,
``ssps_hook_cfg`` and ``validate``), cached under ``OUT/runs/<name>`` by :class:`RunCache`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .. import search as search_cli
from ..search_start import search_checkpoint
from .. import train as train_cli

def schedule_options(settings: dict, phase: dict, data_root: str | None) -> list[str]:
    """``--cfg-options`` of a run: its epochs, learning rate, data (and its size in smoke mode)."""
    e = phase['epochs']
    # no validation while training (val_interval past the end): ssps train tests the final model
    opts = [f'optim_wrapper.optimizer.lr={phase["lr"]}', f'train_cfg.max_epochs={e}', f'train_cfg.val_interval={e + 1}',
            f'param_scheduler.T_max={e}', 'default_hooks.checkpoint.max_keep_ckpts=1', 'default_hooks.logger.interval=20']
    splits = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    if data_root:
        opts += [f'{s}.dataset.data_root={data_root}' for s in splits]
    if 'train_indices' in settings:  # smoke: a few samples of every class (BaseDataset ``indices``), batch 8
        def indices(values):
            return '[' + ','.join(map(str, values)) + ']'
        opts += ['train_dataloader.batch_size=8', 'default_hooks.logger.interval=1',
                 f'train_dataloader.dataset.indices={indices(settings["train_indices"])}']
        opts += [f'{s}.dataset.indices={indices(settings["test_indices"])}' for s in splits[1:]]
    return opts


class RunCache:
    """Finished runs under ``OUT/runs/<name>``, each with a ``done.json`` of its settings and result."""

    def __init__(self, out: Path, log):
        self.root = out / 'runs'
        self.log = log
        self.memo: dict[str, tuple[str, dict]] = {}

    @staticmethod
    def key(settings: dict) -> str:
        """The cache key of a run's settings (sha1 of their sorted JSON, 12 hex digits)."""
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def lookup(self, name: str, settings: dict) -> dict | None:
        """The result of the finished run ``name`` with these ``settings``, or None (nothing is run)."""
        key = self.key(settings)
        if name in self.memo and self.memo[name][0] == key:
            return self.memo[name][1]
        marker = self.root / name / 'done.json'
        if not marker.is_file():
            return None
        try:
            done = json.loads(marker.read_text())
        except (ValueError, OSError) as err:
            self.log(f'{marker} is unreadable ({err}); running {name} again')
            return None
        if isinstance(done, dict) and done.get('key') == key and isinstance(done.get('result'), dict):
            self.memo[name] = (key, done['result'])
            return done['result']
        return None

    def get(self, name: str, settings: dict, run):
        """The cached result of ``name`` with these ``settings``, else ``run(folder)``'s (then cached)."""
        result = self.lookup(name, settings)
        if result is not None:
            self.log(f'reusing finished run {name}')
            return result
        key = self.key(settings)
        folder = self.root / name
        if folder.exists():  # unfinished or other settings: start it again
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.log(f'run {name} ...')
        start = time.perf_counter()
        result = run(folder)
        result['run_s'] = time.perf_counter() - start
        from ssps_nni.files import atomic_write
        atomic_write(folder / 'done.json', json.dumps({'key': key, 'settings': settings, 'result': result},
                                                      indent=2) + '\n')
        self.memo[name] = (key, result)
        return result


def check_rc(rc: int, what: str):
    """Raise ``RuntimeError`` naming ``what`` when a command returned a nonzero exit status."""
    if rc != 0:
        raise RuntimeError(f'{what} failed with exit status {rc}; see its log above')


def train_run(folder: Path, config: str, options: list[str], seed: int, mode: list[str],
              load_from: str | None, extra=()) -> dict:
    """``ssps train`` in process (FP32, ``--uniform`` or ``--policy``); its result JSON.

    ``extra``: more ``ssps train`` options (e.g. a ``--device`` of that command), passed as given.
    """
    argv = [config, '--work-dir', str(folder), '--seed', str(seed), *mode, *extra]
    if load_from:
        argv += ['--load-from', load_from]
    argv += ['--cfg-options', *options, f'experiment_name={folder.name}_{os.getpid()}']
    if not load_from:  # FP32 from the initial weights, whatever start the config names
        argv.append('load_from=None')
    check_rc(train_cli.main(argv), f'ssps train {" ".join(argv)}')
    res = json.loads((folder / 'train_result.json').read_text())
    return {'top1': res['metrics'].get('accuracy/top1'), 'bitops': res['bitops']['value'],
            'size': res['size']['value'], 'checkpoint': res['checkpoint'], 'metrics': res['metrics'],
            'qat_policy': res.get('qat_policy'), 'train_s': res.get('train_s'),
            'test_s': res.get('test_s')}


def search_run(folder: Path, config: str, options: list[str], seed: int, budget_arg: str,
               sequential: bool, load_from: str) -> dict:
    """``ssps search``'s steps in process, plus a hook tracing the argmax policy each step."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    import ssps_nni.mmengine  # noqa: F401
    from ssps_nni.policy import load_policy

    tool = search_cli
    argv = [config, '--work-dir', str(folder), '--seed', str(seed), '--budget', budget_arg,
            '--load-from', load_from, '--cfg-options', *options,
            f'experiment_name={folder.name}_{os.getpid()}']
    cfg = tool.build_config(tool.parse_args(argv))
    if not sequential:
        tool.ssps_hook_cfg(cfg).update(threshold=None, schedule='none')
    tool.validate(cfg)

    class PolicyTrace(Hook):
        """The argmax policy after every optimizer step (decided bits, argmax for open ones)."""
        priority = 'LOWEST'

        def __init__(self):
            self.ssps, self.changes, self.last, self.all_decided = None, [], None, None
            self.start, self.steps, self.last_step_s = None, 0, None

        def before_train(self, runner):
            self.ssps = next(h for h in runner.hooks if type(h).__name__ == 'SSPSHook')
            self.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            search = self.ssps.search
            bits = search.space.bits()
            self.steps = search.step
            if bits != self.last:
                self.changes.append(search.step)
                self.last = bits
            self.last_step_s = time.perf_counter() - self.start
            if self.all_decided is None and search.done:
                self.all_decided = (search.step, self.last_step_s)

    trace = PolicyTrace()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(trace)
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    policy = load_policy(folder / 'policy.json')
    # the last step at which the argmax policy changed; the final fix/repair counts as a change
    stable = trace.changes[-1] if trace.changes else 0
    if trace.last is not None and policy.bits() != dict(trace.last):
        stable = trace.steps
    totals = policy.meta['totals']['bitops']
    # both clocks start at the first training step (after loading and calibration) and end at the
    # step that made the policy final: every decision fixed, or the last step without sequential
    decided_step, decided_s = trace.all_decided or (trace.steps, trace.last_step_s)
    return {'policy': str(folder / 'policy.json'), 'bitops': totals['policy'], 'target': totals['target'],
            'cost_ratio': totals['policy'] / totals['target'], 'steps': trace.steps, 'stable_step': stable,
            'policy_changes': len(trace.changes), 'final_step': decided_step if sequential else trace.steps,
            'final_s': decided_s if sequential else trace.last_step_s, 'search_s': wall,
            'repaired': policy.meta['repaired'], 'iters_per_epoch': len(runner.train_dataloader),
            'checkpoint': search_checkpoint(str(folder / 'policy.json'))}


def policy_run(folder: Path, config: str, options: list[str], seed: int, budget_arg: str, method: str,
               load_from: str, batches: int | None = None, extra=()) -> dict:
    """``ssps search --method ssps|random|sensitivity`` in process; ``extra``: more of its options."""
    from ssps_nni.policy import load_policy

    argv = [config, '--work-dir', str(folder), '--seed', str(seed), '--budget', budget_arg, '--method', method,
            '--load-from', load_from, *extra]
    if method == 'sensitivity' and batches is not None:
        argv += ['--sensitivity-batches', str(batches)]
    argv += ['--cfg-options', *options, f'experiment_name={folder.name}_{os.getpid()}']
    start = time.perf_counter()
    check_rc(search_cli.main(argv), f'ssps search {" ".join(argv)}')
    wall = time.perf_counter() - start
    policy = load_policy(folder / 'policy.json')
    totals = policy.meta['totals']  # per budget's cost; the first budget's gives the cost ratio
    first = totals.get(policy.meta.get('cost_model')) or next(iter(totals.values()))
    return {'policy': str(folder / 'policy.json'), 'bitops': (totals.get('bitops') or {}).get('policy'),
            'target': first['target'], 'cost_ratio': first['policy'] / first['target'], 'search_s': wall,
            'repaired': policy.meta.get('repaired')}


def uniform_pair(policy) -> str | None:
    """``'WxAy'`` if every searched layer of ``policy`` (a core ``Policy``) is at the same bits, else None."""
    searched = {bits for name, bits in policy.bits().items() if not policy.layers[name].get('pinned')}
    if len(searched) != 1:
        return None
    w, a = next(iter(searched))
    return f'W{w}A{a}'
