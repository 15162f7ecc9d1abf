"""The main job, ``ssps search``: a tiny search end to end, resume, and bad input; the one-shot
methods (``--method sensitivity`` / ``random``) on the shipped subset config, their policy
retrained by ``ssps train``, and their options' bad input.

The end-to-end and resume runs use fresh interpreters (the real command line); the bad-input
cases call ``main(argv)`` in-process, since they stop before training.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmpretrain')

import ssps_nni.mmengine  # noqa: E402,F401  (torch safe globals for the checkpoint checks)
from ssps_nni.policy import load_policy  # noqa: E402

from mm_search_helpers import ROOT, SUBSET_CONFIG, TRAIN_TOOL, run_search_tool, run_tool  # noqa: E402


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
    (['--candidates', '2,40'], 'weight candidate 40 is not an integer in 2..32'),
    (['--candidates', '1,2,4'], 'weight candidate 1 is below 2'),
    (['--resume'], 'found no checkpoint'),
    (['--load-from', 'no/such/checkpoint.pth'], 'not a local file'),
    (['--load-from', str(Path(__file__).resolve().parents[2] / 'README.md')], 'is not a PyTorch checkpoint'),
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


# -- one-shot methods: --method sensitivity / random ----------------------------------------------

ONE_SHOT = ('sensitivity', 'random')


@pytest.fixture(scope='module')
def fp32_checkpoint(tmp_path_factory):
    """An mmengine-style FP32 checkpoint of the config's model (initial weights): the ``--load-from``
    of these tests, so they do not depend on the shipped checkpoint being there."""
    from mmengine.config import Config

    from ssps_nni.mmengine.qat import build_model_from_cfg

    torch.manual_seed(0)
    model = build_model_from_cfg(Config.fromfile(str(SUBSET_CONFIG)))
    model.init_weights()
    path = tmp_path_factory.mktemp('fp32') / 'fp32.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def one_shot_runs(tmp_path_factory, fp32_checkpoint):
    """``ssps search --method M`` on the shipped subset config at W3A3 (4 sensitivity batches)."""
    runs = {}
    for method in ONE_SHOT:
        work_dir = tmp_path_factory.mktemp(f'{method}_run')
        extra = ['--sensitivity-batches', '4'] if method == 'sensitivity' else []
        result = run_search_tool(SUBSET_CONFIG, '--work-dir', work_dir, '--method', method, '--seed', '0',
                                 '--budget', 'bitops=W3A3', '--load-from', fp32_checkpoint, *extra)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        (work_dir / 'stdout.txt').write_text(result.stdout + result.stderr)
        runs[method] = work_dir
    return runs


@pytest.mark.parametrize('method', ONE_SHOT)
def test_one_shot_method_writes_a_policy_that_fills_the_budget(one_shot_runs, fp32_checkpoint, method):
    work_dir = one_shot_runs[method]
    data = json.loads((work_dir / 'policy.json').read_text())
    totals = data['totals']['bitops']
    assert 0.97 <= totals['policy'] / totals['target'] <= 1.0 + 1e-9
    policy = load_policy(work_dir / 'policy.json')  # valid, as ssps train and ssps export read it
    assert len(_searched(policy)) == 18
    assert policy.layers['backbone.conv1']['pinned'] and policy.layers['head.fc']['pinned']
    assert (work_dir / 'policy.png').stat().st_size > 0
    assert not list(work_dir.glob('*.pth')), 'a one-shot method trains nothing and saves no checkpoint'
    out = (work_dir / 'stdout.txt').read_text()
    assert 'cost / target' in out and 'target' in out and 'Traceback' not in out
    assert f'Load checkpoint from {fp32_checkpoint} (into the float model)' in out


def test_random_policy_depends_on_the_seed(one_shot_runs, fp32_checkpoint, tmp_path):
    result = run_search_tool(SUBSET_CONFIG, '--work-dir', tmp_path, '--method', 'random', '--seed', '1',
                             '--budget', 'bitops=W3A3', '--load-from', fp32_checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    seed0 = load_policy(one_shot_runs['random'] / 'policy.json')
    seed1 = load_policy(tmp_path / 'policy.json')
    assert seed0.bits() != seed1.bits()


def test_train_tool_retrains_a_one_shot_policy(one_shot_runs, fp32_checkpoint, tmp_path):
    """``ssps train --policy`` takes the policy unchanged (one epoch on 25 images, 20 test images)."""
    policy = one_shot_runs['sensitivity'] / 'policy.json'
    indices = '[' + ','.join(map(str, range(0, 5000, 200))) + ']'
    test = '[' + ','.join(map(str, range(0, 1000, 50))) + ']'
    result = run_tool(TRAIN_TOOL, SUBSET_CONFIG, '--policy', policy, '--work-dir', tmp_path,
                      '--load-from', fp32_checkpoint, '--cfg-options',
                      'train_cfg.max_epochs=1', 'train_dataloader.batch_size=8',
                      f'train_dataloader.dataset.indices={indices}', f'test_dataloader.dataset.indices={test}',
                      f'val_dataloader.dataset.indices={test}')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    res = json.loads((tmp_path / 'train_result.json').read_text())
    assert res['mode'] == 'policy' and 0 <= res['metrics']['accuracy/top1'] <= 100
    bitops = json.loads(policy.read_text())['totals']['bitops']['policy']
    assert res['bitops']['value'] == pytest.approx(bitops, rel=1e-6)


METHOD_INPUT = [
    (['--method', 'sensitivity', '--sensitivity-batches', '0'], '--sensitivity-batches must be >= 1'),
    (['--method', 'sensitivity', '--sensitivity-batches', '-3'], '--sensitivity-batches must be >= 1'),
    (['--method', 'random', '--sensitivity-batches', '4'], 'used only by --method sensitivity'),
    (['--sensitivity-batches', '4'], 'used only by --method sensitivity'),
    (['--method', 'random', '--resume'], 'nothing to resume'),
]


@pytest.mark.parametrize('args, message', METHOD_INPUT, ids=[' '.join(a) for a, _ in METHOD_INPUT])
def test_bad_method_options_exit_2(search_tool, tiny_config, tmp_path, capsys, args, message):
    code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and 'ssps search: error:' in err and 'Traceback' not in err
    assert not (tmp_path / 'policy.json').exists()


def test_unknown_method_and_bad_batches_from_the_command_line(tiny_config, tmp_path):
    for args, message in ((['--method', 'foo'], "invalid choice: 'foo'"),
                          (['--method', 'sensitivity', '--sensitivity-batches', 'x'], 'invalid int value'),
                          (['--method', 'sensitivity', '--sensitivity-batches', '0'], 'must be >= 1')):
        result = run_search_tool(tiny_config, '--work-dir', tmp_path, *args)
        assert result.returncode == 2, args
        assert message in result.stderr and 'ssps search: error:' in result.stderr
        assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'policy.json').exists()


def test_one_shot_method_refuses_an_unreachable_budget(search_tool, tiny_config, fp32_checkpoint, tmp_path,
                                                       capsys):
    code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), '--method', 'random',
                             '--budget', 'bitops=1000', '--load-from', str(fp32_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and 'unreachable' in err
    assert not (tmp_path / 'policy.json').exists()
