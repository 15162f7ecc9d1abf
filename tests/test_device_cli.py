"""``--device`` and ``--amp`` of ``ssps search`` / ``ssps train`` (ssps_nni/cli/common.py).

The CPU side: the refusals (exit 2, one line, before any model is built) and the optimiser
wrapper ``--amp`` writes into the config. The CUDA side runs on a GPU (tools/gpu_check.sh).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ssps_nni.cli import search as search_cli
from ssps_nni.cli import train as train_cli
from ssps_nni.cli.common import apply_amp

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('main', [search_cli.main, train_cli.main], ids=['search', 'train'])
def test_amp_on_cpu_is_refused_before_anything_is_built(main, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')  # restored after the test (--device cpu sets it)
    rc = main(['--device', 'cpu', '--amp', 'bf16', '--work-dir', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert '--amp bf16 needs a CUDA device' in err[0]
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_device_cuda_without_a_gpu_is_refused(capsys, tmp_path):
    rc = search_cli.main(['--device', 'cuda', '--work-dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and '--device cuda: no CUDA device is visible' in err


def test_amp_sets_mmengine_amp_optim_wrapper():
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'))
    lr = cfg.optim_wrapper.optimizer.lr
    apply_amp(cfg, argparse.Namespace(amp='bf16'))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.optim_wrapper.loss_scale == 'dynamic' and cfg.optim_wrapper.optimizer.lr == lr
    apply_amp(cfg, argparse.Namespace(amp='fp16'))
    assert cfg.optim_wrapper.dtype == 'float16'
    apply_amp(cfg, argparse.Namespace(amp='none'))
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'dtype' not in cfg.optim_wrapper
    assert 'loss_scale' not in cfg.optim_wrapper and cfg.optim_wrapper.optimizer.lr == lr
    before = cfg.optim_wrapper.to_dict()
    apply_amp(cfg, argparse.Namespace(amp=None))  # not given: the config's own
    assert cfg.optim_wrapper.to_dict() == before
