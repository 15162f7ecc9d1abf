"""The main job, ``ssps search``: a tiny search end to end, resume, and bad input; the one-shot
methods (``--method sensitivity`` / ``random``) on the shipped subset config, their policy
retrained by ``ssps train``, and their options' bad input.

The end-to-end and resume runs use fresh interpreters (the real command line); the bad input
is in the table of ``test_bad_input.py`` (in-process ``main(argv)``), faults and interruptions in
``test_faults.py``.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip('mmpretrain')

import ssps_nni.mmengine  # noqa: E402,F401  (torch safe globals for the checkpoint checks)
from ssps_nni.policy import load_policy  # noqa: E402

from mm_search_helpers import SUBSET_CONFIG, TRAIN_TOOL, run_search_tool, run_tool  # noqa: E402


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


# The bad input of ssps search (budgets, candidates, configs, checkpoints, LUT files, method options)
# is in the table of test_bad_input.py.


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


def test_one_shot_method_refuses_an_unreachable_budget(search_tool, tiny_config, fp32_checkpoint, tmp_path,
                                                       capsys):
    code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), '--method', 'random',
                             '--budget', 'bitops=1000', '--load-from', str(fp32_checkpoint)])
    err = capsys.readouterr().err
    assert code == 2 and 'unreachable' in err
    assert not (tmp_path / 'policy.json').exists()


def test_a_diverging_search_exits_3_with_one_line_and_no_policy(search_tool, tiny_config, tmp_path, capsys):
    """A learning rate of 1e6: the loss is NaN within the first epoch; exit 3, not bad input (2)."""
    work_dir = tmp_path / 'work'
    status = search_tool.main([str(tiny_config), '--work-dir', str(work_dir),
                               '--cfg-options', 'optim_wrapper.optimizer.lr=1e6'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 3
    assert len(err) == 1 and err[0].startswith('ssps search: error: SSPS search diverged at step ')
    assert 'the training loss is nan' in err[0] and 'LUT is' not in err[0]
    assert not (work_dir / 'policy.json').exists() and not list(work_dir.glob('*.pth'))
