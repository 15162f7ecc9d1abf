"""``ssps sweep`` stopped by Ctrl-C (SIGINT) or SIGTERM, and its refusal of a ``--metric`` the runs lack.

The sweep runs with faked runs (``tests/sweep_fake.py``: the sweep's machinery is real, a run
takes milliseconds), one of which hangs as ``ssps train`` does before its first step: inside
``GracefulStop`` and mmengine's config formatting, which turns the ``KeyboardInterrupt`` of a
signal into a ``SyntaxError``. Expected, with ``--jobs 1`` (runs in the sweep's process) and
``--jobs 2`` (worker processes): the sweep stops (exit 130 / 143) with one line naming the runs
done and how to resume, never records the stopped run as failed, starts no other run, ends its
workers, and the same command resumes from the finished runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_sweep import children

ROOT = Path(__file__).resolve().parent.parent
FAKE = ['--candidates', '2,4', '--budgets', 'W2A4', '--methods', 'random', '--seeds', '1', '--retrain-epochs', '0']
RUNS = 8  # fp32, the random policy, 5 uniform points (W2A2..W4A4, W8A8), its retraining (= uniform W2A4)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    return dict(os.environ, SSPS_CACHE_DIR=str(tmp_path_factory.mktemp('ssps_cache')), OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))


def fake_sweep(work: Path, env: dict, *extra, hang: str | None = None) -> subprocess.Popen:
    """The faked sweep in a session of its own (a signal to its group: what a terminal's Ctrl-C does)."""
    env = dict(env, **({'SWEEP_FAKE_HANG': hang} if hang else {}))
    return subprocess.Popen([sys.executable, str(ROOT / 'tests' / 'sweep_fake.py'), '--work-dir', str(work), *FAKE,
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(paths, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not all(p() if callable(p) else p.exists() for p in paths):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f'the sweep ended or hung before the run to stop started:\n{out[-2000:]}\n{err[-3000:]}')
        time.sleep(0.1)


def sweep_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith('ssps sweep')]


@pytest.mark.parametrize('jobs, sig, to_group', [(1, signal.SIGINT, True),
                                                 pytest.param(2, signal.SIGINT, True, marks=pytest.mark.slow),
                                                 (2, signal.SIGTERM, False)],
                         ids=['jobs1-ctrl-c', 'jobs2-ctrl-c', 'jobs2-sigterm-to-the-sweep'])
def test_a_signal_stops_the_sweep_keeps_the_finished_runs_and_resumes(jobs, sig, to_group, tmp_path, env):
    work = tmp_path / 'sweep'
    # --jobs 1: fp32 finishes, the policy hangs; --jobs 2: the policy and uniform W2A2 hang, one per worker
    proc = fake_sweep(work, env, '--jobs', str(jobs), hang='random_,uniform_')
    hanging = [work / 'runs' / name / 'hanging' for name in ('random_bitops-W2A4_p0', 'uniform_W2A2_s0')[:jobs]]
    wait_for([*hanging, work / 'runs' / 'fp32' / 'done.json'], proc)
    workers = children(proc.pid)
    time.sleep(0.3)  # well inside the config formatting
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f'the sweep did not stop on {sig.name}:\n{out[-2000:]}\n{err[-3000:]}')
    assert proc.returncode == 128 + sig, err[-3000:]
    what = 'interrupted' if sig == signal.SIGINT else 'stopped by SIGTERM'
    assert sweep_lines(err) == [f'ssps sweep: {what} after 1 of {RUNS} runs; run the same command again to resume '
                                f'(finished runs in {work / "runs"} are reused)'], err[-3000:]
    assert 'FAILED' not in out and 'Traceback' not in err, out[-2000:] + err[-3000:]
    assert not [h for h in hanging if (h.parent / 'done.json').exists()]
    assert sorted(p.name for p in work.glob('runs/*')) == sorted(['fp32', *(h.parent.name for h in hanging)]), \
        'a run started after the signal'
    assert json.loads((work / 'frontier.json').read_text())['runs_finished'] == 1
    if jobs > 1:
        assert workers
        deadline = time.time() + 15
        while any(Path(f'/proc/{pid}').exists() for pid in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if Path(f'/proc/{pid}').exists()], 'workers left running'
    if jobs == 1:  # the same command resumes: the finished run reused, the stopped one run again
        again = fake_sweep(work, env, '--jobs', str(jobs))
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err[-3000:]
        assert f'{RUNS - 2} runs done, 2 reused' in out  # fp32 and the retraining (= uniform W2A4)
        assert json.loads((work / 'frontier.json').read_text())['complete']


def test_a_metric_the_runs_do_not_report_is_refused_and_overwrites_nothing(tmp_path, env):
    """--metric foo/bar: refused after the first finished evaluation (one line naming the metrics the
    runs report) before any frontier file is written; on a rerun, before any output."""
    work = tmp_path / 'sweep'
    work.mkdir()
    earlier = {name: f'earlier {name}\n' for name in ('frontier.json', 'frontier.md')}
    for name, text in earlier.items():
        (work / name).write_text(text)
    for attempt in ('first', 'rerun'):
        proc = fake_sweep(work, env, '--metric', 'foo/bar')
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-3000:]
        assert sweep_lines(err) == ["ssps sweep: error: --metric 'foo/bar' is not reported by the runs; they report "
                                    'accuracy/top1, accuracy/top5: give one of these (the finished runs are kept and '
                                    'reused; no frontier file was written)'], (attempt, err[-3000:])
        assert {name: (work / name).read_text() for name in earlier} == earlier, attempt
        assert (work / 'runs' / 'fp32' / 'done.json').is_file()  # kept for the corrected command
        assert not list(work.glob('runs/uniform_*')), attempt
        if attempt == 'first':
            (work / 'sweep.json').write_text('earlier\n')
    assert (work / 'sweep.json').read_text() == 'earlier\n'  # a rerun is refused before any output
