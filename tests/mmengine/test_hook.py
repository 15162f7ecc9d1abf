"""``SSPSHook`` stage by stage on small runners: registry scopes, optimizer group and schedulers,
the loss entry, checkpoint state, ``load_from`` of a full-precision checkpoint."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import DATASETS, MODELS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from ssps_nni.cell import QuantCellMixin  # noqa: E402
from ssps_nni.mmengine import SSPSHook  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402


@MODELS.register_module(force=True)
class ToySSPSNet(BaseModel):
    """Two convs, a BN and a classifier; ``mode='loss'`` returns ``{'loss_cls': ...}``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        x = F.relu(self.conv1(x))
        x = F.relu(self.bn(self.conv3(F.relu(self.conv2(x)))))
        logits = self.fc(x.mean((2, 3)))
        if mode == 'loss':
            return {'loss_cls': F.cross_entropy(logits, torch.as_tensor(data_samples))}
        return logits


@DATASETS.register_module(force=True)
class ToySSPSData(Dataset):
    def __init__(self, size: int = 64):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return dict(inputs=torch.randn(3, 8, 8, generator=generator), data_samples=index % 4)


class Recorder(Hook):
    """Checks run in the same stages as the hook under test, after it."""

    priority = 'LOW'

    def __init__(self):
        self.lrs, self.outputs = [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        groups = runner.optim_wrapper.optimizer.param_groups
        self.lrs.append((groups[0]['lr'], groups[-1]['lr'], groups[-1]['weight_decay']))
        self.outputs.append(dict(outputs))


def toy_runner(work_dir, scope='mmpretrain', max_iters=8, schedulers=None, model='ToySSPSNet', **hook):
    hook = dict(dict(type='SSPSHook', budget='bitops=W4A4', candidates=(2, 4, 8), warmup_steps=2,
                     calib_batches=2), **hook)
    return Runner(
        model=dict(type=model),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=dict(type='ToySSPSData'), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=8, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=schedulers,
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False)),
        custom_hooks=[hook],
        default_scope=scope,
        randomness=dict(seed=0),
    )


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet'])
def test_hook_found_and_searches_under_scope(scope, tmp_path):
    if scope == 'mmdet':
        pytest.importorskip('mmdet')
    runner = toy_runner(tmp_path, scope=scope)
    assert any(isinstance(h, SSPSHook) for h in runner.hooks)
    runner.train()
    policy = load_policy(tmp_path / 'policy.json')
    assert set(policy.layers) == {'conv1', 'conv2', 'conv3', 'fc'}
    assert policy.meta['num_decided'] == policy.meta['num_decisions'] == 4
    assert isinstance(runner.model.conv2, QuantCellMixin)


def test_step_sizes_follow_group_0_through_warmup_and_cosine(tmp_path):
    schedulers = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=4),
                  dict(type='CosineAnnealingLR', by_epoch=False, begin=4, end=8, T_max=4)]
    runner = toy_runner(tmp_path, schedulers=schedulers, stop_when_done=False)
    recorder = Recorder()
    runner.register_hook(recorder)
    runner.train()
    assert len(recorder.lrs) == 8
    for lr0, lr_scale, wd in recorder.lrs:
        assert lr_scale == pytest.approx(lr0, rel=1e-12) and wd == 0
    names = {id(p) for g in runner.optim_wrapper.optimizer.param_groups[-1:] for p in g['params']}
    expected = {id(p) for n, p in runner.model.named_parameters() if n.endswith(('w_scale', 'a_scale'))}
    assert names == expected
    # the constraint loss is in the loss dict (zero in warm-up, then positive), and logged
    assert all('loss_ssps' in out for out in recorder.outputs)
    assert float(recorder.outputs[0]['loss_ssps'].detach()) == 0 and float(recorder.outputs[-1]['loss_ssps'].detach()) >= 0


def test_checkpoint_state_round_trip(tmp_path):
    runner = toy_runner(tmp_path, max_iters=8)
    runner.train()
    checkpoint = torch.load(tmp_path / 'iter_4.pth', map_location='cpu')  # weights_only default
    state = checkpoint['ssps']
    assert state['step'] == 4
    assert {'space', 'decider', 'logits_optimizer'} <= set(state)
    assert any(k.endswith('w_scale') for k in checkpoint['state_dict'])


def test_load_from_full_precision_checkpoint(tmp_path):
    """Every key of an FP ResNet-20 checkpoint loads into the supernet, values unchanged."""
    from mm_search_helpers import SUBSET_CONFIG
    from mmengine.registry import init_default_scope

    import ssps_nni.mmengine  # noqa: F401

    cfg = Config.fromfile(str(SUBSET_CONFIG))
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS

    fp_model = PRETRAIN_MODELS.build(cfg.model)
    fp_model.init_weights()
    fp_state = {k: v.clone() for k, v in fp_model.state_dict().items()}
    torch.save({'state_dict': fp_state, 'meta': {}}, tmp_path / 'fp32.pth')

    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from = str(tmp_path / 'fp32.pth')
    cfg.train_dataloader.dataset.indices = list(range(0, 5000, 80))
    cfg.train_dataloader.batch_size = 32
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10)
    cfg.param_scheduler = dict(type='ConstantLR', factor=1.0)
    cfg.custom_hooks = [dict(type='SSPSHook', candidates=(2, 4, 8), calib_batches=1)]
    seen = {}

    class Check(Hook):
        def before_train(self, runner):
            seen.update({k: v.clone() for k, v in runner.model.state_dict().items()})

    runner = Runner.from_cfg(cfg)
    runner.register_hook(Check(), priority='LOWEST')
    runner.train()
    missing = [k for k in fp_state if k not in seen]
    assert not missing
    assert all(torch.equal(seen[k], v) for k, v in fp_state.items())
    new = {k.rsplit('.', 1)[-1] for k in seen if k not in fp_state}
    assert new <= {'w_scale', 'a_scale', 'w_mask', 'a_mask', 'a_signed', 'initialized'}
    assert load_policy(tmp_path / 'work' / 'policy.json').meta['num_decided'] == 36


# -- divergence, interim vs final files, nothing to search (docs/algorithm.md §6-§8) ---------------

class Poison(Hook):
    """Puts a NaN into ``conv2``'s weight before iteration ``at`` (0-based), as a blown-up step would."""

    priority = 'LOWEST'

    def __init__(self, at: int):
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at:
            with torch.no_grad():
                runner.model.conv2.weight[0, 0, 0, 0] = float('nan')


class Files(Hook):
    """After every iteration: which policy files the work dir holds, and the snapshot's flag."""

    priority = 'LOWEST'

    def __init__(self):
        self.seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        import json
        from pathlib import Path

        work = Path(runner.work_dir)
        partial = work / 'policy.partial.json'
        data = json.loads(partial.read_text()) if partial.is_file() else None
        self.seen.append(((work / 'policy.json').exists(), data and (data['final'], len(data['open']))))


def test_nan_loss_stops_on_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from ssps_nni.errors import SearchDivergedError

    runner = toy_runner(tmp_path, max_iters=8)
    runner.register_hook(Poison(at=5))
    with pytest.raises(SearchDivergedError) as err:
        runner.train()
    message = str(err.value)
    assert 'diverged at step 6 of 8 (iteration 6, epoch 1): the training loss is nan' in message
    assert 'the first layer whose output was not finite is conv2 (QuantConv2d)' in message
    assert 'optim_wrapper.optimizer.lr is 0.1' in message and str(tmp_path / 'iter_4.pth') in message
    assert not (tmp_path / 'policy.json').exists()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_4.pth']  # none saved after the NaN step
    assert (tmp_path / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')
    assert torch.load(tmp_path / 'iter_4.pth', map_location='cpu')['ssps']['step'] == 4


def test_snapshots_are_partial_and_policy_json_appears_only_at_the_end(tmp_path):
    from ssps_nni.policy import load_policy as load

    (tmp_path / 'policy.json').write_text('{"an earlier search": true}')
    runner = toy_runner(tmp_path, max_iters=8, stop_when_done=False, threshold=None)
    files = Files()
    runner.register_hook(files)
    runner.train()
    assert (tmp_path / 'policy.earlier.json').read_text() == '{"an earlier search": true}'
    assert not any(exists for exists, _ in files.seen)  # no policy.json while searching
    snapshots = [s for _, s in files.seen if s]
    assert snapshots and all(final is False for final, _ in snapshots) and any(n > 0 for _, n in snapshots)
    policy = load(tmp_path / 'policy.json')
    assert policy.final and policy.meta['open'] == [] and (tmp_path / 'policy.png').is_file()
    assert not (tmp_path / 'policy.partial.json').exists() and not (tmp_path / 'policy.partial.png').exists()


@pytest.mark.parametrize('hook, reason', [
    (dict(candidates=(4,)), 'every decision has one candidate'),
    (dict(budget='bitops=W2A2'), 'the budget bitops=W2A2 leaves one feasible policy'),
])
def test_nothing_to_search_writes_the_policy_without_training(tmp_path, hook, reason):
    runner = toy_runner(tmp_path, max_iters=8, **hook)
    files = Files()
    runner.register_hook(files)
    runner.train()
    assert files.seen == []  # not one iteration
    policy = load_policy(tmp_path / 'policy.json')
    assert policy.final and policy.meta['settled'].startswith(reason)
    bits = {(4, 4)} if 'candidates' in hook else {(2, 2)}
    assert {b for n, b in policy.bits().items() if n in ('conv2', 'conv3')} == bits
    import logging
    from pathlib import Path

    log_files = [h.baseFilename for h in runner.logger.handlers if isinstance(h, logging.FileHandler)]
    log = Path(log_files[0]).read_text()
    assert f'SSPS: nothing to search, {reason}' in log and 'no training step runs' in log
    assert not list(tmp_path.glob('*.pth'))


@MODELS.register_module(force=True)
class ToyOwnStepNet(ToySSPSNet):
    """A ``train_step`` of its own that computes the loss without ``forward(mode='loss')``."""

    def train_step(self, data, optim_wrapper):
        data = self.data_preprocessor(data, True)
        logits = self(data['inputs'], mode='tensor')
        loss = F.cross_entropy(logits, torch.as_tensor(data['data_samples']))
        optim_wrapper.update_params(loss)
        return {'loss': loss.detach()}


def test_a_nan_loss_the_forward_hook_did_not_see_still_stops_the_search(tmp_path):
    from ssps_nni.errors import SearchDivergedError

    runner = toy_runner(tmp_path, max_iters=8, model='ToyOwnStepNet')
    runner.register_hook(Poison(at=5))
    with pytest.raises(SearchDivergedError, match=r'step 6 of 8 \(iteration 6, epoch 1; this step already updated '
                                                  r'the weights\): the training loss is nan'):
        runner.train()
    assert not (tmp_path / 'policy.json').exists() and not (tmp_path / 'iter_8.pth').exists()


def test_reference_text_names_only_the_references_a_cost_has():
    """A LUT need not price FP32 or W8A8: the hook's budget line must not need them (KeyError before)."""
    from ssps_nni.cost_report import reference_text

    assert reference_text({'min': 1.0, 'max': 2.0}, str) == 'min 1.0, max 2.0'
    assert reference_text({'fp32': 4, 'w8a8': 3, 'min': 1, 'max': 2}, str) == 'FP32 4, W8A8 3, min 1, max 2'
