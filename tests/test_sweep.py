"""``ssps sweep`` end to end on a tiny setting, its reuse and resume, and its refusals of bad input.

The tiny sweep: the shipped subset restricted to 40 training and 40 test images, candidates 2 and
4, two budgets, the sensitivity and random methods, two paired seeds, ``--retrain-epochs 0``
(the metric after calibration only). It checks the files, the pairing and the statistics'
plumbing, not accuracy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssps_nni.cli.sweep import command

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--candidates', '2,4', '--budgets', 'W2A4,W4A4', '--methods', 'sensitivity,random', '--seeds', '2',
        '--retrain-epochs', '0', '--sensitivity-batches', '2',
        '--cfg-options', 'train_dataloader.batch_size=8',
        'train_dataloader.dataset.indices=[' + ','.join(str(i) for i in range(0, 5000, 125)) + ']',
        'test_dataloader.dataset.indices=[' + ','.join(str(i) for i in range(0, 1000, 25)) + ']',
        'val_dataloader.dataset.indices=[' + ','.join(str(i) for i in range(0, 1000, 25)) + ']']


@pytest.fixture(scope='module')
def cache_env(tmp_path_factory):
    return dict(os.environ, SSPS_CACHE_DIR=str(tmp_path_factory.mktemp('ssps_cache')))


def sweep(work: Path, env: dict, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'ssps_nni.cli.main', 'sweep', '--work-dir', str(work), *TINY, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_tiny_sweep_writes_the_frontier_reuses_and_resumes(tmp_path, cache_env):
    work = tmp_path / 'sweep'
    first = sweep(work, cache_env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ('frontier.json', 'frontier.md', 'frontier.png', 'sensitivity.png'):
        assert (work / name).is_file(), name
    data = json.loads((work / 'frontier.json').read_text())
    assert data['complete'] and data['metric'] == 'accuracy/top1' and data['seeds'] == [0, 1]
    assert data['test_samples'] == 40
    names = {u['name'] for u in data['uniform']}
    assert {'W2A2', 'W2A4', 'W4A2', 'W4A4', 'W8A8'} <= names  # the range, its bracket below, the reference
    assert data['references']['fp32']['metric'] is not None
    assert len(data['points']) == 4
    for p in data['points']:
        assert set(p['runs']) == {'0', '1'} and p['cost_ratio'] <= 1 + 1e-9
        v = p['vs_uniform']
        assert v['n'] == 2 and v['se'] is not None and v['verdict'] in ('above', 'below', 'inside the noise')
        assert set(p['vs_methods']) == {'sensitivity', 'random'} - {p['method']}
    # the W4A4 budget with candidates 2, 4: the only policy filling it is uniform W4A4, whose run it reuses
    top = [p for p in data['points'] if p['target'] == max(q['target'] for q in data['points'])]
    assert all(p['same_as_uniform'] == 'W4A4' for p in top)
    md = (work / 'frontier.md').read_text()
    assert 'vs uniform line' in md and any(v in md for v in ('inside the noise', 'above', 'below'))
    assert 'ETA' in first.stdout
    total = data['runs_total']

    # run again after a kill during three runs (their folders lack done.json): those three run
    # again, every other run is reused, and the frontier is the same
    redone = 0
    for name in ('uniform_W2A4_s1', 'retrain_random_bitops-W2A4_s1', 'sensitivity_bitops-W2A4_p0'):
        marker = work / 'runs' / name / 'done.json'
        if marker.is_file():  # (a uniform random policy has no run of its own: it reused a uniform one)
            marker.unlink()
            redone += 1
    assert redone >= 2
    resumed = sweep(work, cache_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'{redone} runs done, {total - redone} reused' in resumed.stdout
    assert json.loads((work / 'frontier.json').read_text())['points'] == data['points']


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for status in Path('/proc').glob('[0-9]*/status'):
        try:
            fields = dict(line.split(':', 1) for line in status.read_text().splitlines() if ':' in line)
        except OSError:
            continue
        if int(fields.get('PPid', '0').strip() or 0) == pid:
            found.append(int(status.parent.name))
    return found


@pytest.mark.slow
def test_killed_sweep_resumes(tmp_path, cache_env):
    """SIGKILL in the middle of a sweep; the same command finishes it, reusing what was done."""
    import signal
    import time

    work = tmp_path / 'sweep'
    proc = subprocess.Popen([sys.executable, '-m', 'ssps_nni.cli.main', 'sweep', '--work-dir', str(work), *TINY,
                             '--jobs', '2'], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=cache_env)
    deadline = time.time() + 300
    while len(list(work.glob('runs/*/done.json'))) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers  # --jobs 2: worker processes
    deadline = time.time() + 30  # they notice that the sweep is gone and end
    while any(Path(f'/proc/{pid}').exists() for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f'/proc/{pid}').exists()]
    finished = len(list(work.glob('runs/*/done.json')))
    assert finished >= 8
    again = sweep(work, cache_env)
    assert again.returncode == 0, again.stderr[-3000:]
    data = json.loads((work / 'frontier.json').read_text())
    assert data['complete']
    reused = int(again.stdout.rsplit(' reused', 1)[0].rsplit(' ', 1)[1])
    assert reused >= finished
    assert (work / 'frontier.png').is_file()


BAD = [
    (['--budgets', ''], 'is empty'),
    (['--budgets', ','], 'is empty'),
    (['--methods', 'ssps,bogus'], "unknown method 'bogus'"),
    (['--methods', ''], 'is empty'),
    (['--seeds', '0'], '--seeds must be >= 1'),
    (['--budgets', 'lut=3b'], "cost 'lut'"),
    (['--budgets', '1b'], 'outside the reachable range'),
    (['--budgets', '3b,40b'], 'outside 1..32'),
    (['--budgets', 'bitops=1e15'], 'outside the reachable range'),
    (['--budgets', 'size=1KB'], 'outside the reachable range'),
    (['--budget-range', 'min:W4A4:1'], 'N must be >= 2'),
    (['--budget-range', 'W4A4:W2A2:3'], 'is above TO'),
    (['--budget-range', '1b:W4A4:3'], 'outside the reachable range'),
    # options for every run, checked by the run's own parser before any run (--dry-run: none would start)
    (['--train-args=--foo', '--dry-run'], "--train-args '--foo': ssps train refused it: unrecognized arguments: --foo"),
    (['--search-args', '--method bogus', '--dry-run'], "ssps search refused it: argument --method: invalid choice"),
    (['--train-args=--help', '--dry-run'], 'ssps train refused it: it prints its help'),
    (['--train-args=--seed 3', '--dry-run'], "sets --seed, which ssps sweep sets for every run of ssps train (give "
                                             "the sweep's --seeds instead)"),
    (['--search-args=--cand 2,8', '--dry-run'], "sets --candidates, which ssps sweep sets"),
]


@pytest.mark.parametrize('args, message', BAD, ids=[' '.join(a) for a, _ in BAD])
def test_bad_input_is_refused_before_any_run(args, message, tmp_path, cache_env, capsys, monkeypatch):
    monkeypatch.setenv('SSPS_CACHE_DIR', cache_env['SSPS_CACHE_DIR'])
    cwd = os.getcwd()
    status = command.main(['--work-dir', str(tmp_path / 'w'), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith('ssps sweep: error: ') and err.count('\n') == 1, err
    assert message in err, err
    assert not (tmp_path / 'w').exists()
    assert os.getcwd() == cwd


def test_unwritable_work_dir_and_missing_gpu_are_refused_before_any_run(tmp_path, cache_env, capsys, monkeypatch):
    import torch

    monkeypatch.setenv('SSPS_CACHE_DIR', cache_env['SSPS_CACHE_DIR'])
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES', ''))  # restored after
    (tmp_path / 'afile').write_text('')
    cases = [(['--work-dir', str(tmp_path / 'afile' / 'wd')], 'is not a folder but a file')]
    if not torch.cuda.is_available():
        cases.append((['--work-dir', str(tmp_path / 'w'), '--device', 'cuda'], 'no CUDA device'))
    for args, message in cases:
        status = command.main([*args, '--budgets', '3b', '--methods', 'random', '--retrain-epochs', '0'])
        err = capsys.readouterr().err
        assert status == 2 and err.startswith('ssps sweep: error: ') and message in err, err
    assert not (tmp_path / 'w').exists()


def test_frontier_labels_of_coinciding_points_are_joined():
    """Uniform points a few pixels apart (same cost, close accuracy) share one label; others keep theirs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from ssps_nni.cli.sweep.plots import label_points

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([0.1, 0.9], [0, 100], 'o')
    label_points(ax, [('W3A4', 0.5, 65.3), ('W4A3', 0.5, 65.0), ('W2A8', 0.5, 20.0), ('W8A2', 0.8, 65.0)])
    texts = sorted(t.get_text() for t in ax.texts)
    plt.close(fig)
    assert texts == ['W2A8', 'W3A4/W4A3', 'W8A2']
