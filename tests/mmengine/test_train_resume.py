"""``ssps train`` stopped by SIGTERM and resumed (``ssps_nni.cli.train_resume``, ``cli.stop``).

A uniform W4A4 retraining of the tiny config (``conftest.py``: 2 epochs of 8 iterations, seed 1,
from the config's FP32 checkpoint) is stopped by SIGTERM in the middle of epoch 2, as a
scheduler's pre-emption, then resumed with ``--resume``: it must end with the weights and step
sizes of an uninterrupted run (the resumed run loads the quantized model, optimizer and
schedulers, and does not calibrate the step sizes again). ``--resume`` with nothing of an
``ssps train`` run to continue is refused with one line and exit 2.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmpretrain')

from mm_search_helpers import ROOT, run_tool, wait_for  # noqa: E402

HELPER = Path(__file__).with_name('fault_helpers.py')
MODE = ('--uniform', 'W4A4')


def train(tiny_config, work_dir: Path, *extra) -> subprocess.CompletedProcess:
    return run_tool('train', tiny_config, *MODE, '--work-dir', work_dir, *extra)


def start_train(tiny_config, work_dir: Path) -> subprocess.Popen:
    """``ssps train`` in its own process group (stdout/stderr in files next to the work dir)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != 'SSPS_TEST_SAVE_PAUSE'}
    return subprocess.Popen([sys.executable, str(HELPER), 'train', str(tiny_config), *MODE, '--work-dir',
                             str(work_dir)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(work_dir.parent / f'{work_dir.name}.out', 'w'),
                            stderr=open(work_dir.parent / f'{work_dir.name}.err', 'w'))


def state(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def uninterrupted(tiny_config, tmp_path_factory) -> Path:
    """The work dir of one uninterrupted W4A4 retraining."""
    work_dir = tmp_path_factory.mktemp('train_straight')
    result = train(tiny_config, work_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work_dir


def test_sigterm_mid_epoch_saves_the_iteration_and_resume_ends_as_an_uninterrupted_run(
        uninterrupted, tiny_config, train_tool, tmp_path, capsys):
    work_dir = tmp_path / 'work'
    proc = start_train(tiny_config, work_dir)
    wait_for(proc, lambda: (work_dir / 'epoch_1.pth').exists() and '[2][4/8]' in (tmp_path / 'work.out').read_text(),
             'the middle of epoch 2')
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, as Slurm sends it
    assert proc.wait(timeout=60) == 143
    err = (tmp_path / 'work.err').read_text()
    assert 'Traceback' not in err, err[-3000:]
    assert 'ssps train: SIGTERM received: finishing the current step' in err
    last = [line for line in err.splitlines() if line.startswith('ssps train: stopped by SIGTERM')]
    assert len(last) == 1 and err.rstrip().endswith(last[0]), err[-3000:]
    done = int(last[0].split('at iteration ')[1].split()[0])
    assert 12 <= done < 16 and f'iteration {done} of 16 (epoch 2)' in last[0], last[0]
    checkpoint = work_dir / f'iter_{done}.pth'
    assert 'resume with --resume' in last[0] and f'from {checkpoint}' in last[0], last[0]
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(checkpoint)
    assert (state(checkpoint)['meta']['epoch'], state(checkpoint)['meta']['iter']) == (1, done)
    assert not (work_dir / 'train_result.json').exists() and not (work_dir / '.ssps.lock').exists()

    # --resume with another mode or other bits than the stopped run's: refused before anything runs
    for argv, problem in (([], 'is a quantization-aware (QAT) checkpoint'),
                          (['--uniform', 'W3A3'], 'the interrupted run trained other bits')):
        capsys.readouterr()
        code = train_tool.main([str(tiny_config), *argv, '--work-dir', str(work_dir), '--resume'])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith('ssps train: error: --resume: ') and problem in err, err
        assert len(err.splitlines()) == 1 and 'give the --policy or --uniform of the interrupted run' in err
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(checkpoint)

    result = train(tiny_config, work_dir, '--resume')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f'Resumed in epoch 2 after iteration {done}: its first {done - 8} batches' in log, log[-3000:]
    assert 'QAT: step sizes from the checkpoint' in log and 'QAT: calibrated' not in log, log[-3000:]
    res, straight = (json.loads((w / 'train_result.json').read_text()) for w in (work_dir, uninterrupted))
    assert res['checkpoint'] == str(work_dir / 'epoch_2.pth') and res['metrics'] == straight['metrics']
    resumed, reference = state(work_dir / 'epoch_2.pth'), state(uninterrupted / 'epoch_2.pth')
    assert resumed['meta']['iter'] == reference['meta']['iter'] == 16
    assert resumed['state_dict'].keys() == reference['state_dict'].keys()
    for key, value in reference['state_dict'].items():  # weights and step sizes of the uninterrupted run
        assert torch.equal(resumed['state_dict'][key], value), key


def test_resume_in_a_search_work_dir_is_refused(full_run, tiny_config, train_tool, capsys):
    """The search's own checkpoint is not a retraining's to resume (--policy starts a new run from it)."""
    files = sorted(p.name for p in full_run.iterdir())
    capsys.readouterr()
    code = train_tool.main([str(tiny_config), '--policy', str(full_run), '--work-dir', str(full_run), '--resume'])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f'ssps train: error: --resume: {full_run}') and 'is a checkpoint of an SSPS search' in err
    assert 'leave out --resume' in err
    assert sorted(p.name for p in full_run.iterdir()) == files


@pytest.mark.parametrize('mode', ['uniform', 'search policy'])
def test_resume_without_a_checkpoint_of_its_own_is_refused(mode, request, tiny_config, train_tool, tmp_path, capsys):
    """An empty work dir: nothing to resume, also with --policy SEARCH_WORK_DIR (whose checkpoint
    starts a new run, not a resumed one)."""
    argv = list(MODE) if mode == 'uniform' else ['--policy', str(request.getfixturevalue('full_run'))]
    work_dir = tmp_path / 'empty'
    work_dir.mkdir()
    capsys.readouterr()
    code = train_tool.main([str(tiny_config), *argv, '--work-dir', str(work_dir), '--resume'])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert 'found no checkpoint of an earlier training run' in err
    assert 'give the --work-dir of the interrupted run' in err
    assert not any(work_dir.iterdir())
