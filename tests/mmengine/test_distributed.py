"""Two CPU processes (gloo DDP, torchrun) search a tiny CIFAR ResNet-20 with ``SSPSHook``.

Checks that both ranks take identical decisions at identical steps, end with bitwise-equal
logits and weights, and that only rank 0 writes the hook's files. The run itself is
``dist_search.py`` (it works around mmengine's CUDA-only launch path).
Uses the default run's config on the CIFAR-10 subset shipped in ``data/``; no shared data needed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('mmpretrain')

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name('dist_search.py')
WORLD = 2
BATCH = 8      # per rank
STEPS = 8      # optimizer steps = iterations of the single epoch

SUBSET_CONFIG = REPO / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'
# The default run's config (shipped CIFAR-10 subset), cut to one epoch of STEPS iterations per
# rank; training images spread over all classes (the subset is stored class by class).
TINY_CONFIG = f"""
_base_ = [{str(SUBSET_CONFIG)!r}]
train_dataloader = dict(batch_size={BATCH}, num_workers=0,
                        dataset=dict(indices=list(range(0, 5000, 39))[:{WORLD * BATCH * STEPS}]))
val_dataloader = dict(batch_size=32, num_workers=0, dataset=dict(indices=list(range(0, 1000, 16))))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = dict(T_max=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=1))
custom_hooks = [dict(type='SSPSHook', budget='bitops=W4A4', candidates=(2, 3, 4, 5, 6, 8),
                     total_steps={STEPS}, warmup_steps=1, interval=1, calib_batches=1)]
randomness = dict(seed=0)
"""


@pytest.fixture(scope='module')
def dist_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dist')
    config = tmp / 'cifar10_resnet20_tiny.py'
    config.write_text(TINY_CONFIG)
    work, out = tmp / 'work', tmp / 'out'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={WORLD}',
           str(SCRIPT), str(config), str(work), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f'torchrun exited {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-6000:]}'
                    f'\n--- stderr (tail) ---\n{proc.stderr[-12000:]}', pytrace=False)
    ranks = [json.loads((out / f'rank{r}.json').read_text()) for r in range(WORLD)]
    return work, ranks


def test_both_ranks_ran_ddp(dist_run):
    _, ranks = dist_run
    assert [r['rank'] for r in ranks] == list(range(WORLD))
    for r in ranks:
        assert r['world_size'] == WORLD
        assert r['wrapper'] == 'CPUDistributedDataParallel'
        assert [it['iter'] for it in r['per_iter']] == list(range(1, STEPS + 1))


def test_identical_decisions_at_identical_steps(dist_run):
    _, (r0, r1) = dist_run
    for a, b in zip(r0['per_iter'], r1['per_iter']):
        assert a['decided'] == b['decided'], f"ranks disagree on decisions after iteration {a['iter']}"
    for a, b in zip(r0['per_iter'], r1['per_iter']):
        assert a['logits_sha256'] == b['logits_sha256'], f"logits differ after iteration {a['iter']}"
    final0, final1 = r0['final'], r1['final']
    assert final0['decided'] == final1['decided']
    assert final0['logits'] == final1['logits']
    # Something was decided during the run, not only at the end.
    assert any(it['decided'] for it in r0['per_iter'])


def test_weights_equal_across_ranks(dist_run):
    _, (r0, r1) = dist_run
    assert r0['num_model_params'] == r1['num_model_params']
    assert r0['params_sha256'] == r1['params_sha256'], 'model parameters (incl. step sizes) differ across ranks'


def test_only_rank0_writes_hook_files(dist_run):
    work, _ = dist_run
    rank0 = sorted(p.relative_to(work / 'rank0').as_posix() for p in (work / 'rank0').rglob('*') if p.is_file())
    rank1 = sorted(p.relative_to(work / 'rank1').as_posix() for p in (work / 'rank1').rglob('*') if p.is_file())
    assert any(Path(p).name == 'policy.json' for p in rank0), rank0
    hook_files = [p for p in rank1 if 'policy' in p.lower() or 'ssps' in p.lower() or p.endswith('.pth')]
    assert not hook_files, f'rank 1 wrote {hook_files}'
    from ssps_nni.policy import load_policy

    load_policy(next((work / 'rank0').rglob('policy.json')))
