"""Shared set-up of the mmengine driver tests: a tiny ResNet-20 search on the shipped subset.

The tiny config inherits the default run's config (``cifar10_resnet20_ssps_subset.py``) and cuts
it to 250 training images (every 20th, so all classes), 2 epochs of 8 iterations and one
calibration batch: a whole search in seconds on 2 CPU cores.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from mm_search_helpers import SUBSET_CONFIG, run_search_tool

TINY_CONFIG = """
_base_ = [{base!r}]
train_dataloader = dict(batch_size=32, dataset=dict(indices=list(range(0, 5000, 20))))
val_dataloader = dict(batch_size=100, dataset=dict(indices=list(range(0, 1000, 10))))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=2)
param_scheduler = dict(T_max=2)
custom_hooks = [dict(type='SSPSHook', budget='bitops=W4A4', candidates=(2, 4, 8),
                     warmup_steps=2, calib_batches=1)]
default_hooks = dict(logger=dict(interval=4))
randomness = dict(seed=1)
"""


@pytest.fixture(scope='session', autouse=True)
def profile_cache(tmp_path_factory):
    """``ssps search``'s cache of layer profiles in a fresh folder (not the user's), for every test."""
    folder = tmp_path_factory.mktemp('ssps_cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('SSPS_CACHE_DIR', str(folder))
        yield folder


@pytest.fixture(scope='session')
def tiny_config(tmp_path_factory) -> Path:
    """Path of the tiny config file (2 epochs x 8 iterations, 250 images)."""
    path = tmp_path_factory.mktemp('configs') / 'tiny_resnet20_ssps.py'
    path.write_text(TINY_CONFIG.format(base=str(SUBSET_CONFIG)))
    return path


@pytest.fixture(scope='session')
def search_tool():
    """``ssps search`` (``ssps_nni.cli.search``; its ``main(argv)`` runs in-process)."""
    from ssps_nni.cli import search

    return search


@pytest.fixture(scope='session')
def train_tool():
    """``ssps train`` (``ssps_nni.cli.train``; its ``main(argv)`` runs in-process)."""
    from ssps_nni.cli import train

    return train


@pytest.fixture(scope='session')
def full_run(tiny_config, tmp_path_factory) -> Path:
    """One uninterrupted tiny search through ``ssps search``; returns its work dir."""
    work_dir = tmp_path_factory.mktemp('full_run')
    result = run_search_tool(tiny_config, '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_epochs=2')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (work_dir / 'stdout.txt').write_text(result.stdout)
    return work_dir
