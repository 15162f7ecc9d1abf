"""Helpers of the mmengine driver tests (imported by ``conftest.py`` and the test files)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCH_TOOL = ROOT / 'tools' / 'search.py'
TRAIN_TOOL = ROOT / 'tools' / 'train.py'
EXPORT_TOOL = ROOT / 'tools' / 'export.py'
SUBSET_CONFIG = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'


def run_search_tool(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tools/search.py`` in a fresh interpreter from the repository root."""
    return run_tool(SEARCH_TOOL, *args, timeout=timeout)


def run_tool(tool: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py`` in a fresh interpreter from the repository root."""
    return subprocess.run([sys.executable, str(tool), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


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
