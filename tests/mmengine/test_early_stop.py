"""A decided search ends at once (docs/algorithm.md §6, "Stopping"): the budget fill at the step
of the last decision, the checkpoint of that step, ``policy.json``, and the run ends mid-epoch;
``--resume`` from it reports the search as done. Also the loop itself (``SSPSEpochBasedTrainLoop``)
on a toy runner, and which loop ``ssps search`` and the shipped configs use."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import LOOPS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import ssps_nni.mmengine  # noqa: E402,F401  (registrations; torch safe globals)
from ssps_nni.cli import train_loop  # noqa: E402
from ssps_nni.mmengine.loops import LOOP_TYPE, SSPSEpochBasedTrainLoop  # noqa: E402
from ssps_nni.policy import PARTIAL_POLICY_JSON, load_policy  # noqa: E402

from mm_search_helpers import ROOT, run_search_tool  # noqa: E402
from test_hook import toy_runner  # noqa: E402,F401  (registers the toy model and data)

#: the tiny config (8 iterations per epoch, 2 epochs) with a 5-step search: every decision is
#: fixed by step 5 (the schedule requires all by then), so the search decides inside epoch 1
SHORT = ('--cfg-options', 'custom_hooks.0.total_steps=5', 'default_hooks.logger.interval=1')


def _iterations(log: str) -> list[str]:
    return re.findall(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/8\]', log)


def test_a_decided_search_stops_at_its_step_and_resume_says_done(tiny_config, tmp_path):
    work_dir = tmp_path / 'work'
    result = run_search_tool(tiny_config, '--work-dir', work_dir, *SHORT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    policy = load_policy(work_dir / 'policy.json')
    k = policy.meta['step']
    assert policy.final and policy.meta['num_decided'] == 36 and 0 < k < 8
    # k training steps, all in epoch 1 of 8 iterations; no epoch checkpoint, the step's own instead
    assert _iterations(out) == [('1', str(i)) for i in range(1, k + 1)], _iterations(out)
    assert f'every decision made at step {k}' in out and f'{16 - k} of 16 planned iterations' in out
    assert sorted(p.name for p in work_dir.glob('*.pth')) == [f'iter_{k}.pth']
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / f'iter_{k}.pth')
    assert not (work_dir / PARTIAL_POLICY_JSON).exists()
    checkpoint = torch.load(work_dir / f'iter_{k}.pth', map_location='cpu')  # weights_only default
    state = checkpoint['ssps']
    assert checkpoint['meta']['iter'] == k and state['step'] == k and state['finished']
    assert state['fill'] == policy.meta['fill'] and state['fill'] is not None  # the fill came before the save
    fixed = {s: state['space']['masks'][s].sum(-1) for s in ('w', 'a')}
    assert all(bool((m == 1).all()) for m in fixed.values())  # the checkpoint holds the final policy

    again = run_search_tool(tiny_config, '--work-dir', work_dir, '--resume', *SHORT)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert f'the search was done at step {k}' in out and not _iterations(out)
    assert sorted(p.name for p in work_dir.glob('*.pth')) == [f'iter_{k}.pth']
    resumed = load_policy(work_dir / 'policy.json')
    assert resumed.final and resumed.layers == policy.layers and resumed.meta['totals'] == policy.meta['totals']
    assert 'policy:' in again.stdout  # the table and its cost are printed as after any search


class StopAt(Hook):
    """Sets ``stop_training`` in iteration ``at`` (1-based); records the hook calls after it."""

    priority = 'LOW'

    def __init__(self, at: int):
        self.at, self.iters, self.epochs, self.trained = at, 0, 0, False

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.iters += 1
        if self.iters == self.at:
            runner.train_loop.stop_training = True

    def after_train_epoch(self, runner):
        self.epochs += 1

    def after_train(self, runner):
        self.trained = True


def _epoch_runner(work_dir, loop_type: str, max_epochs: int = 2, custom_hooks=None, **loop):
    return Runner(
        model=dict(type='ToySSPSNet'), work_dir=str(work_dir),
        train_dataloader=dict(dataset=dict(type='ToySSPSData', size=64), sampler=dict(type='DefaultSampler'),
                              batch_size=8, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(type=loop_type, max_epochs=max_epochs, val_interval=1, **loop),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)), custom_hooks=custom_hooks,
        default_scope='mmpretrain', randomness=dict(seed=0), experiment_name=f'stop_{Path(work_dir).name}')


@pytest.mark.parametrize('at, iters, epochs', [(3, 3, 0), (8, 8, 1), (11, 11, 1)])
def test_the_loop_stops_after_the_iteration_that_sets_the_flag(tmp_path, at, iters, epochs):
    """8 iterations per epoch: a stop inside an epoch ends it there (no after_train_epoch, no
    epoch checkpoint); a stop at an epoch's last iteration ends that epoch as usual."""
    runner = _epoch_runner(tmp_path, LOOP_TYPE)
    stop = StopAt(at)
    runner.register_hook(stop)
    runner.train()
    assert isinstance(runner.train_loop, SSPSEpochBasedTrainLoop)
    assert (stop.iters, stop.epochs, stop.trained) == (iters, epochs, True)
    assert runner.iter == iters and runner.train_loop.stopped_mid_epoch == (at % 8 != 0)
    assert sorted(p.name for p in Path(tmp_path).glob('*.pth')) == [f'epoch_{e}.pth' for e in range(1, epochs + 1)]


def test_max_iters_ends_the_last_epoch_there(tmp_path):
    """A schedule in steps (time-to-model): 11 iterations of 2 epochs of 8; the second epoch ends
    after 3 of them as a whole one (its after_train_epoch hooks: the last checkpoint)."""
    runner = _epoch_runner(tmp_path, LOOP_TYPE, max_iters=11)
    stop = StopAt(100)
    runner.register_hook(stop)
    runner.train()
    assert (stop.iters, stop.epochs, runner.iter, runner.train_loop.max_iters) == (11, 2, 11, 11)
    assert sorted(p.name for p in Path(tmp_path).glob('*.pth')) == ['epoch_1.pth', 'epoch_2.pth']
    with pytest.raises(ValueError, match='max_iters=17 must be in 1..16'):
        _epoch_runner(tmp_path / 'bad', LOOP_TYPE, max_iters=17).train()


def test_mmengine_epoch_loop_would_run_to_the_end_of_the_epoch(tmp_path):
    """What the loop is for: mmengine's own reads the flag only between epochs."""
    runner = _epoch_runner(tmp_path, 'EpochBasedTrainLoop')
    stop = StopAt(3)
    runner.register_hook(stop)
    runner.train()
    assert (stop.iters, stop.epochs) == (8, 1)


def test_ssps_search_sets_the_loop_in_place_of_the_default_epoch_loop():
    assert LOOPS.get(train_loop.LOOP_TYPE) is SSPSEpochBasedTrainLoop and train_loop.LOOP_TYPE == LOOP_TYPE
    cases = [(dict(by_epoch=True, max_epochs=3, val_interval=1), dict(type=LOOP_TYPE, max_epochs=3, val_interval=1)),
             (dict(type='EpochBasedTrainLoop', max_epochs=2), dict(type=LOOP_TYPE, max_epochs=2)),
             (dict(by_epoch=False, max_iters=100), None),
             (dict(type='IterBasedTrainLoop', max_iters=100), None),
             (dict(type=LOOP_TYPE, max_epochs=2), None)]
    for given, expected in cases:
        cfg = Config(dict(train_cfg=given))
        assert train_loop.use_stopping_loop(cfg) == (expected is not None)
        assert cfg.train_cfg.to_dict() == (expected or given)


SHIPPED = sorted(p.name for p in (ROOT / 'mmdet_configs').glob('*_ssps*.py'))


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_configs_use_the_loop(name):
    if name.startswith('coco'):
        pytest.importorskip('mmdet')
    cfg = Config.fromfile(str(ROOT / 'mmdet_configs' / name))
    assert cfg.train_cfg.type == LOOP_TYPE and 'by_epoch' not in cfg.train_cfg and cfg.train_cfg.max_epochs >= 1


def test_an_iteration_based_search_stops_at_its_step(tmp_path):
    runner = toy_runner(tmp_path, max_iters=16, total_steps=3)  # all decided by step 3 of 16
    runner.train()
    policy = load_policy(tmp_path / 'policy.json')
    k = policy.meta['step']
    assert policy.final and k <= 3 and runner.iter == k
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / f'iter_{k}.pth')


def test_under_mmengine_epoch_loop_the_run_ends_with_the_epoch(tmp_path):
    """Another epoch loop: the fill still at the decision, a warning, the run ends with that epoch."""
    hook = dict(type='SSPSHook', budget='bitops=W4A4', candidates=(2, 4, 8), warmup_steps=1, calib_batches=1,
                total_steps=3)
    runner = _epoch_runner(tmp_path, 'EpochBasedTrainLoop', custom_hooks=[hook])
    runner.train()
    policy = load_policy(tmp_path / 'policy.json')
    k = policy.meta['step']
    assert policy.final and k <= 3 and runner.iter == 8 and policy.meta['fill'] is not None
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_1.pth']
    log = next(tmp_path.glob('*/*.log')).read_text()
    assert 'reads stop_training only between epochs' in log and '8 of 16 planned iterations' in log
