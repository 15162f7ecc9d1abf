"""Faults during a real search: SIGKILL at several points, Ctrl-C during a checkpoint save, then
``--resume``; the final policy must equal the uninterrupted run's (same config and seed).

Each run is ``ssps search`` on the tiny config (``conftest.py``: 2 epochs of 8 iterations, seed 1)
in a fresh interpreter of its own process group, started through ``fault_helpers.py``, which can
pause halfway through writing one checkpoint (``SSPS_TEST_SAVE_PAUSE``) so that a signal lands
inside the save. The uninterrupted run is the session's ``full_run``.

mmengine resumes at the boundary of the saved checkpoint (here the end of epoch 1): the steps
after it are trained again, with the sampler's order of that epoch, the dataloader workers'
seeds, the model, optimizer, scheduler and the SSPS search state (logits, sampler, decider,
logits Adam, step) all restored from the checkpoint, so the resumed run repeats them exactly.
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

from ssps_nni.policy import PARTIAL_POLICY_JSON, POLICY_JSON, load_policy  # noqa: E402

from mm_search_helpers import ROOT, run_search_tool, wait_for  # noqa: E402

HELPER = Path(__file__).with_name('fault_helpers.py')
EPOCHS = ('--cfg-options', 'train_cfg.max_epochs=2')  # as full_run


def start_search(tiny_config, work_dir: Path, pause: str | None = None) -> subprocess.Popen:
    """``ssps search`` of the tiny config in its own process group (stdout/stderr in files)."""
    env = dict(os.environ)
    env.pop('SSPS_TEST_SAVE_PAUSE', None)
    if pause:
        env['SSPS_TEST_SAVE_PAUSE'] = pause
    work_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(HELPER), 'search', str(tiny_config), '--work-dir', str(work_dir),
                             *EPOCHS], cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(work_dir.parent / f'{work_dir.name}.out', 'w'),
                            stderr=open(work_dir.parent / f'{work_dir.name}.err', 'w'))


def kill(proc: subprocess.Popen, sig=signal.SIGKILL, timeout: float = 60.0) -> int:
    """Send ``sig`` to the search's whole process group (dataloader workers too, as a terminal does)."""
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=timeout)


def partial_step(work_dir: Path) -> int:
    """The ``step`` of the snapshot ``policy.partial.json`` (-1 when there is none yet)."""
    try:
        return int(json.loads((work_dir / PARTIAL_POLICY_JSON).read_text()).get('step', -1))
    except (OSError, ValueError):
        return -1


def assert_nothing_final(work_dir: Path, train_tool, tiny_config, tmp_path, capsys) -> None:
    """After a kill: no policy.json; the snapshot is ``final: false`` and ``ssps train`` refuses it."""
    assert not (work_dir / POLICY_JSON).exists()
    partial = work_dir / PARTIAL_POLICY_JSON
    assert partial.is_file()
    assert load_policy(partial).final is False and json.loads(partial.read_text())['final'] is False
    capsys.readouterr()
    train_dir = tmp_path / 'train'
    code = train_tool.main([str(tiny_config), '--policy', str(partial), '--work-dir', str(train_dir)])
    err = capsys.readouterr().err
    assert code == 2 and 'is not a final policy' in err and '--allow-partial' in err, err
    assert 'Traceback' not in err and not train_dir.exists()


#: The warning of a run that takes over the work-dir lock of a killed one (ssps_nni.cli.lock).
LOCK_TAKEN_OVER = 'which is no longer running (killed?); this run takes it over'


def assert_resumes_to(full_run: Path, tiny_config, work_dir: Path, *expect_warnings: str) -> None:
    """``--resume`` finishes the search with the uninterrupted run's policy."""
    result = run_search_tool(tiny_config, '--work-dir', work_dir, '--resume', *EPOCHS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    for warning in expect_warnings:
        assert warning in result.stderr, result.stderr[-3000:]
    straight, resumed = load_policy(full_run / POLICY_JSON), load_policy(work_dir / POLICY_JSON)
    assert resumed.final and resumed.layers == straight.layers
    assert resumed.meta['totals'] == straight.meta['totals']
    assert not (work_dir / PARTIAL_POLICY_JSON).exists()


def test_kill_during_a_checkpoint_save_then_resume(full_run, tiny_config, train_tool, tmp_path, capsys):
    """SIGKILL halfway through writing epoch_2.pth: a truncated file. Here last_checkpoint is then
    made to name it (what a lost write leaves, e.g. a power cut after mmengine updated the pointer;
    a SIGKILL alone leaves the pointer at epoch_1.pth): --resume detects it, warns and falls back
    to epoch_1.pth, and the result equals the uninterrupted run's."""
    work_dir = tmp_path / 'work'
    proc = start_search(tiny_config, work_dir, pause='epoch_2.pth:120')
    wait_for(proc, lambda: (work_dir / 'epoch_2.pth.writing').exists(), 'the epoch-2 checkpoint save')
    assert kill(proc) == -signal.SIGKILL
    truncated = work_dir / 'epoch_2.pth'
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / 'epoch_1.pth')
    assert_nothing_final(work_dir, train_tool, tiny_config, tmp_path, capsys)
    (work_dir / 'epoch_2.pth.writing').unlink()
    (work_dir / 'last_checkpoint').write_text(str(truncated))
    assert_resumes_to(full_run, tiny_config, work_dir, f'resuming from the previous one, {work_dir / "epoch_1.pth"}',
                      LOCK_TAKEN_OVER)


def test_ctrl_c_during_a_checkpoint_save_exits_130_and_resumes(full_run, tiny_config, tmp_path):
    """Ctrl-C (SIGINT to the process group) halfway through writing epoch_1.pth: the save
    completes, the search stops there (the end of the step: no other checkpoint needed), one
    line says where it stopped, exit status 130, and --resume finishes it."""
    work_dir = tmp_path / 'work'
    proc = start_search(tiny_config, work_dir, pause='epoch_1.pth:3')
    wait_for(proc, lambda: (work_dir / 'epoch_1.pth.writing').exists(), 'the epoch-1 checkpoint save')
    assert kill(proc, signal.SIGINT) == 130
    err = (tmp_path / 'work.err').read_text()
    assert 'Traceback' not in err and 'Failed to format' not in err, err[-3000:]
    assert 'ssps search: SIGINT received: finishing the current step' in err
    ours = [line for line in err.splitlines() if line.startswith('ssps search:') and 'received' not in line]
    assert len(ours) == 1 and ours[0].startswith('ssps search: interrupted at step 8 of 16'), err[-3000:]
    assert 'resume with --resume' in ours[0] and err.rstrip().endswith(ours[0])
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(work_dir / 'epoch_1.pth')
    assert not (work_dir / POLICY_JSON).exists()
    (work_dir / 'epoch_1.pth.writing').unlink()
    assert_resumes_to(full_run, tiny_config, work_dir)


def test_sigterm_mid_epoch_saves_the_iteration_and_resumes_there(full_run, tiny_config, tmp_path):
    """SIGTERM (a scheduler's pre-emption, to the whole process group as Slurm sends it) in the
    middle of epoch 2: the step finishes, iter_N.pth of that iteration is saved and named by
    last_checkpoint, policy.partial.json is of step N, one line says how to resume, exit 143;
    --resume continues at iteration N + 1 (the epoch's first N - 8 batches loaded and skipped)
    and ends with the uninterrupted run's policy."""
    work_dir = tmp_path / 'work'
    proc = start_search(tiny_config, work_dir)
    wait_for(proc, lambda: (work_dir / 'epoch_1.pth').exists() and '[2][4/8]' in (tmp_path / 'work.out').read_text(),
             'the middle of epoch 2')
    assert kill(proc, signal.SIGTERM) == 143
    err = (tmp_path / 'work.err').read_text()
    assert 'Traceback' not in err, err[-3000:]
    assert 'ssps search: SIGTERM received: finishing the current step' in err
    last = [line for line in err.splitlines() if line.startswith('ssps search: stopped by SIGTERM')]
    assert len(last) == 1 and err.rstrip().endswith(last[0]), err[-3000:]
    step = int(last[0].split('at step ')[1].split()[0])
    assert 12 <= step < 16, last[0]  # mid-epoch 2 (iterations 9..16), one step per iteration
    checkpoint = work_dir / f'iter_{step}.pth'
    assert f'(epoch 2, iteration {step})' in last[0] and f'from {checkpoint}' in last[0]
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(checkpoint)
    meta = torch.load(checkpoint, map_location='cpu', weights_only=False)['meta']
    assert (meta['epoch'], meta['iter']) == (1, step)  # epoch 2 begun (0-based 1), `step` iterations done
    assert partial_step(work_dir) == step and not (work_dir / POLICY_JSON).exists()
    assert not (work_dir / '.ssps.lock').exists()  # released on the way out
    result = run_search_tool(tiny_config, '--work-dir', work_dir, '--resume', *EPOCHS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f'Resumed in epoch 2 after iteration {step}: its first {step - 8} batches' in log, log[-3000:]
    straight, resumed = load_policy(full_run / POLICY_JSON), load_policy(work_dir / POLICY_JSON)
    assert resumed.final and resumed.layers == straight.layers
    assert resumed.meta['totals'] == straight.meta['totals']


KILL_POINTS = {
    # the log line of iteration 4 of epoch 2 (logger interval 4): the middle of an epoch
    'mid-epoch': (None, lambda w, out: (w / 'epoch_1.pth').exists() and '[2][4/8]' in out.read_text()),
    # a decision of epoch 2 (the snapshot rewritten at a step after the epoch-1 checkpoint)
    'after a decision': (None, lambda w, out: (w / 'epoch_1.pth').exists() and partial_step(w) > 8),
    # halfway through writing epoch_2.pth (last_checkpoint still names epoch_1.pth)
    'during a checkpoint save': ('epoch_2.pth:120', lambda w, out: (w / 'epoch_2.pth.writing').exists()),
}


@pytest.mark.slow
@pytest.mark.parametrize('point', list(KILL_POINTS))
def test_kill_at_several_points_then_resume(full_run, tiny_config, train_tool, tmp_path, capsys, point):
    pause, ready = KILL_POINTS[point]
    work_dir = tmp_path / 'work'
    proc = start_search(tiny_config, work_dir, pause=pause)
    wait_for(proc, lambda: ready(work_dir, tmp_path / 'work.out'), point)
    assert kill(proc) == -signal.SIGKILL
    assert_nothing_final(work_dir, train_tool, tiny_config, tmp_path, capsys)
    (work_dir / 'epoch_2.pth.writing').unlink(missing_ok=True)
    assert_resumes_to(full_run, tiny_config, work_dir, LOCK_TAKEN_OVER)


# -- what the tools do with a killed search's snapshot -----------------------------------------

def _snapshot(tiny_config, path: Path) -> Path:
    """A snapshot like a killed search's: the tiny model's layers, final false, 2.47x its budget."""
    from mmengine.config import Config

    from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg

    data = QuantPolicyHook(uniform='W4A4').resolve(build_model_from_cfg(Config.fromfile(str(tiny_config)))).to_dict()
    data.update(final=False, num_decided=14, num_decisions=36, step=120,
                budgets=[{'cost': 'bitops', 'spec': 'bitops=W4A4', 'target': 1.0}],
                totals={'bitops': {'policy': 2.47, 'target': 1.0}})
    path.write_text(json.dumps(data))
    return path


def test_train_allow_partial_warns_with_the_cost_and_passes_the_option(train_tool, tiny_config, tmp_path, capsys):
    partial = _snapshot(tiny_config, tmp_path / PARTIAL_POLICY_JSON)
    args = train_tool.parse_args([str(tiny_config), '--policy', str(partial), '--allow-partial',
                                  '--work-dir', str(tmp_path / 'work')])
    train_tool.check_policy(args)
    err = capsys.readouterr().err
    assert err.startswith('ssps train: warning: using') and '14 of 36 decisions made' in err
    assert 'bitops 2.47x its budget bitops=W4A4' in err
    cfg = train_tool.build_config(args)
    quant = [h for h in cfg.custom_hooks if h['type'] == 'QuantPolicyHook'][0]
    assert quant['allow_partial'] is True and quant['policy'] == str(partial)
    train_tool.validate(cfg)  # the hook accepts it too
    assert not (tmp_path / 'work').exists()


def test_export_maps_the_names_and_uses_them_in_the_nni_config(tiny_config, tmp_path, capsys):
    """An mmengine-route policy (``backbone.*``) exported on the plain resnet20 (``--model``):
    the mapping is printed, the NNI config_list names the plain model's layers."""
    pytest.importorskip('onnx')
    pytest.importorskip('nni')
    from ssps_nni.cli import export
    from ssps_nni.models import resnet20

    partial = _snapshot(tiny_config, tmp_path / PARTIAL_POLICY_JSON)
    checkpoint = tmp_path / 'float.pth'
    torch.save(resnet20().state_dict(), checkpoint)
    argv = ['--policy', str(partial), '--checkpoint', str(checkpoint), '--model', 'resnet20', '--calibrate', '8',
            '--output', str(tmp_path / 'r20.onnx'), '--nni-config', str(tmp_path / 'config_list.json')]
    assert export.main(argv) == 2
    assert '--allow-partial' in capsys.readouterr().err
    assert export.main([*argv, '--allow-partial']) == 0
    out, err = capsys.readouterr()
    assert 'ssps export: warning: using' in err and 'bitops 2.47x its budget' in err
    assert 'backbone.' in out, out  # the one line of the name mapping
    names = {c['op_names'][0] for c in json.loads((tmp_path / 'config_list.json').read_text())}
    assert names and not any(n.startswith('backbone.') for n in names)
    assert (tmp_path / 'r20.onnx').is_file()
