"""The main job, ``tools/search.py``: a tiny search end to end, resume, and bad input.

The end-to-end and resume runs use fresh interpreters (the real command line); the bad-input
cases call ``main(argv)`` in-process, since they stop before training.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip('mmpretrain')

import ssps_nni.mmengine  # noqa: E402,F401  (torch safe globals for the checkpoint checks)
from ssps_nni.policy import load_policy  # noqa: E402

from mm_search_helpers import ROOT, run_search_tool  # noqa: E402


def _searched(policy):
    return {n: v for n, v in policy.layers.items() if not v.get('pinned') and not v.get('excluded')}


def test_main_job_writes_a_valid_policy_within_budget(full_run):
    policy = load_policy(full_run / 'policy.json')
    assert (full_run / 'policy.png').stat().st_size > 0
    totals = policy.meta['totals']['bitops']
    assert totals['policy'] <= totals['target'] * (1 + 1e-9)
    assert policy.meta['num_decided'] == policy.meta['num_decisions'] == 2 * len(_searched(policy))
    assert len(_searched(policy)) == 18  # ResNet-20: 19 convs + 1 linear; stem and classifier pinned
    assert all(v['decided_at'] is not None for v in _searched(policy).values())
    assert policy.layers['backbone.conv1']['pinned'] and policy.layers['head.fc']['pinned']
    stdout = (full_run / 'stdout.txt').read_text()
    for word in ('layer', 'target', 'FP32', 'W8A8', 'min', 'max'):
        assert word in stdout


def test_main_job_logs_search_scalars(full_run):
    scalars = [json.loads(line) for path in full_run.glob('*/vis_data/scalars.json')
               for line in path.read_text().splitlines()]
    keys = set().union(*scalars)
    assert {'loss_ssps', 'ssps/ratio/bitops', 'ssps/num_decided', 'ssps/log10_space', 'ssps/tau'} <= keys
    assert [s['ssps/num_decided'] for s in scalars if 'ssps/num_decided' in s][-1] == 36


def test_checkpoint_loads_weights_only_and_holds_search_state(full_run):
    checkpoint = torch.load(full_run / 'epoch_1.pth', map_location='cpu')  # weights_only default
    decided = checkpoint['ssps']['decider']['decided']
    assert 0 < len(decided) < 36, 'the epoch-1 checkpoint should be taken mid-search'
    assert checkpoint['ssps']['step'] == 8


def test_resume_gives_the_same_policy(full_run, tiny_config, tmp_path):
    """Stop after epoch 1 (mid-search), resume: the same final policy as the uninterrupted run."""
    shutil.copy(full_run / 'epoch_1.pth', tmp_path / 'epoch_1.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    result = run_search_tool(tiny_config, '--work-dir', tmp_path, '--resume')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Auto resumed' in result.stdout + result.stderr or 'resumed' in (result.stdout + result.stderr).lower()
    straight = load_policy(full_run / 'policy.json')
    resumed = load_policy(tmp_path / 'policy.json')
    assert resumed.layers == straight.layers
    assert resumed.meta['totals'] == straight.meta['totals']


BAD_INPUT = [
    (['--budget', 'bitops=W4'], 'accepted forms'),
    (['--budget', 'latency=3ms'], 'accepted'),
    (['--candidates', '2,x,8'], 'comma-separated'),
    (['--candidates', '2,40'], 'bit-width 40 outside 2..32'),
    (['--candidates', '1,2,4'], 'bit-width 1 outside 2..32'),
    (['--resume'], 'found no checkpoint'),
    (['--load-from', 'no/such/checkpoint.pth'], 'not a local file'),
    (['--cfg-options', 'train_dataloader.dataset.archive=/no/such/subset.tar.gz'], 'does not exist'),
]


@pytest.mark.parametrize('args, message', BAD_INPUT, ids=[' '.join(a) for a, _ in BAD_INPUT])
def test_bad_input_fails_before_training(search_tool, tiny_config, tmp_path, capsys, args, message):
    code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and 'Traceback' not in err
    assert not (tmp_path / 'policy.json').exists()


def test_missing_data_root_is_refused(search_tool, tmp_path, capsys):
    config = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps.py'
    code = search_tool.main([str(config), '--work-dir', str(tmp_path), '--cfg-options',
                             'train_dataloader.dataset.data_root=/no/such/cifar10'])
    err = capsys.readouterr().err
    assert code == 2 and 'data_root' in err and '/no/such/cifar10' in err
    assert not (tmp_path / 'policy.json').exists()


def test_unreachable_budget_fails_before_the_first_step(search_tool, tiny_config, tmp_path, capsys):
    code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), '--budget', 'bitops=1000'])
    err = capsys.readouterr().err
    assert code == 2 and 'unreachable' in err and 'Reachable range' in err
    assert not (tmp_path / 'policy.json').exists()
    assert not list(tmp_path.glob('*.pth'))


def test_bad_input_from_the_command_line_has_no_traceback(tiny_config, tmp_path):
    result = run_search_tool(tiny_config, '--work-dir', tmp_path, '--budget', 'bitops=W4A4A4')
    assert result.returncode == 2
    assert 'accepted forms' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'policy.json').exists()


@pytest.mark.slow
def test_default_run(tmp_path):
    """The default command, as a user runs it (about 10 minutes on 2 CPU cores)."""
    result = run_search_tool('--work-dir', tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    policy = load_policy(tmp_path / 'policy.json')
    totals = policy.meta['totals']['bitops']
    assert totals['policy'] <= totals['target'] * (1 + 1e-9)
    assert policy.meta['num_decided'] == policy.meta['num_decisions']
