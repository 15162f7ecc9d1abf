"""Helpers of the mmengine driver tests (imported by ``conftest.py`` and the test files)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: subcommands of the ``ssps`` console command
SEARCH_TOOL = 'search'
TRAIN_TOOL = 'train'
EXPORT_TOOL = 'export'
SUBSET_CONFIG = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'


def run_search_tool(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``ssps search`` in a fresh interpreter from the repository root."""
    return run_tool(SEARCH_TOOL, *args, timeout=timeout)


def run_tool(command: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``ssps COMMAND`` (``python -m ssps_nni.cli``) in a fresh interpreter from the repository root."""
    return subprocess.run([sys.executable, '-m', 'ssps_nni.cli', command, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 120.0) -> None:
    """Poll ``ready()`` every 20 ms until it holds; fail if ``proc`` ends first or the wait times out
    (then ``proc``'s process group is killed: the tools run with ``start_new_session=True``)."""
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f'ssps {proc.args[2]} ended (status {proc.returncode}) before {what}')
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f'timed out waiting for {what}')
        time.sleep(0.02)


def metrics_recorder():
    """A new mmengine hook (LOWEST priority) keeping the metrics of every validation run."""
    from mmengine.hooks import Hook

    class MetricsRecorder(Hook):
        priority = 'LOWEST'

        def __init__(self):
            self.metrics = []

        def after_val_epoch(self, runner, metrics=None):
            self.metrics.append(dict(metrics or {}))

    return MetricsRecorder()


def shorten_search(cfg, steps: int):
    """Make ``cfg``'s one ``SSPSHook`` a ``steps``-step search; log every step, save no checkpoint."""
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    ssps = [h for h in cfg.custom_hooks if h['type'] == 'SSPSHook']
    assert len(ssps) == 1, cfg.custom_hooks
    ssps[0].update(total_steps=steps, warmup_steps=1, calib_batches=1)
    return cfg


def check_config_converts(cfg, budget: str, models, register_all_modules):
    """The config has one SSPSHook with ``budget``; its model builds offline and converts.

    ``models`` / ``register_all_modules``: the downstream package's (mmdet or mmpretrain).
    Returns the :class:`ssps_nni.search.SSPSSearch`.
    """
    from ssps_nni.search import SSPSSearch

    hooks = [h for h in cfg.custom_hooks if h['type'] == 'SSPSHook']
    assert len(hooks) == 1 and hooks[0]['budget'] == budget
    assert cfg.custom_imports['imports'] == ['ssps_nni.mmengine']
    register_all_modules()
    model = models.build(cfg.model)
    options = {k: v for k, v in hooks[0].items() if k not in ('type', 'calib_batches')}
    search = SSPSSearch(model, options)
    assert any(n.startswith('backbone.') for n in search.space.cells) and len(search.space.searched) > 10
    return search
