"""Settings and helpers every section of ``ssps benchmark`` shares.

The sections, candidate sets and budgets, the settings of each mode (``full``, ``--quick``,
``--standard``, ``--smoke``), the machine description written with the results, the
mean ± std summary of a row's runs and a policy's mean selection certainty.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

from ..common import REPO as ROOT

SECTIONS = ('step-cost', 'sequential', 'quality', 'time-to-model')
#: What runs when no section is named (time-to-model only when named: hours of training on a CPU).
DEFAULT_SECTIONS = ('step-cost', 'sequential', 'quality')
#: The sections made of mmengine runs (``ssps search`` / ``ssps train``), which share the cached runs.
MMENGINE_SECTIONS = ('sequential', 'quality', 'time-to-model')
#: Budgets of the time-to-model section (``MODES[mode]['ttm']``).
TTM_BUDGETS = ('2.5-bit', 'W3A3')
CANDIDATE_SETS = {2: (4, 8), 4: (2, 4, 6, 8), 6: (2, 3, 4, 5, 6, 8)}
UNIFORM_BUDGETS = ('W2A2', 'W3A3', 'W4A4')
MIB = 2 ** 20
#: The budget midway in BitOPs between uniform W2A2 and W3A3 (given to the search as absolute BitOPs).
MIDPOINT = '2.5-bit'
MIDPOINT_OF = ('W2A2', 'W3A3')
#: The best uniform policies within a budget (all retrained, the better one reported); default: the budget's own.
BUDGET_UNIFORMS = {MIDPOINT: ('W2A3', 'W3A2')}
#: Methods of the quality section: searched, uniform, random within the budget, sensitivity.
QUALITY_METHODS = ('ssps', 'uniform', 'random', 'sensitivity')
#: FP32 start of the standard mode (trained once elsewhere; its .json beside it: top1, command).
STANDARD_FP32 = 'checkpoints/resnet20_cifar10_fp32.pth'

# Settings per mode. Step cost: (warm-up steps, timed steps). mmengine runs: epochs and
# learning rates of the FP32 training, the search (from the FP32 checkpoint) and the retraining
# (QAT from the FP32 checkpoint, the same for every policy).
MODES = {
    'full': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=3, steps=20,
        config='mmdet_configs/cifar10_resnet20_ssps_folder.py', seeds=(0, 1, 2),
        fp32=dict(epochs=200, lr=0.1), search=dict(epochs=30, lr=0.01), retrain=dict(epochs=30, lr=0.01),
        budgets=UNIFORM_BUDGETS, methods=('uniform', 'ssps'), ttm=dict(budgets=TTM_BUDGETS)),
    'quick': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=2, steps=8, steps_resnet18=(1, 3),
        config='mmdet_configs/cifar10_resnet20_ssps_subset.py', seeds=(0, 1),
        fp32=dict(epochs=4, lr=0.05), search=dict(epochs=1, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=UNIFORM_BUDGETS, methods=('uniform', 'ssps'), ttm=dict(budgets=TTM_BUDGETS)),
    # The quality instrument: full CIFAR-10 from the shipped FP32 checkpoint (FP32 is not trained:
    # its top-1 is read from the JSON beside it); every policy retrained from it on one schedule.
    # About 6-7 minutes per search or retraining on 2 CPU cores, a few hours in all (cached runs,
    # so it can be stopped and continued). Step cost: the quick settings.
    'standard': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=2, steps=8, steps_resnet18=(1, 3),
        config='mmdet_configs/cifar10_resnet20_ssps_folder.py', seeds=(0, 1), sensitivity_seeds=1, uniform_seeds=1,
        fp32=dict(checkpoint=STANDARD_FP32), search=dict(epochs=1, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=('W3A3', MIDPOINT, 'W4A4'), methods=QUALITY_METHODS, ttm=dict(budgets=TTM_BUDGETS)),
    # Only keeps the benchmark working (the test suite): every code path, numbers meaningless.
    'smoke': dict(
        networks=('resnet20',), candidates=(2,), warmup=1, steps=1, batch=8,
        config='mmdet_configs/cifar10_resnet20_ssps_subset.py', seeds=(0,),
        fp32=dict(epochs=1, lr=0.05), search=dict(epochs=2, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=('W4A4',), methods=QUALITY_METHODS, sensitivity_batches=2, ttm=dict(budgets=('W4A4',)),
        train_indices=list(range(0, 5000, 200)), test_indices=list(range(0, 1000, 50))),
}


# -- environment ---------------------------------------------------------------------------------

def environment(device: str) -> dict:
    """Machine and library versions, for the results."""
    import mmengine
    import torch

    try:
        import nni
        nni_version = nni.__version__
    except ImportError:  # e.g. a GPU machine carrying only the mmengine stack: no DARTS rows there
        nni_version = None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        'python': platform.python_version(), 'torch': torch.__version__, 'nni': nni_version,
        'mmengine': mmengine.__version__, 'platform': platform.platform(), 'cpu': cpu,
        'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'device': device,
    }
    if device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(0)
        env['cuda'] = torch.version.cuda
    try:
        env['commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env['commit'] = None
    return env


def spread(values: list[float]) -> dict:
    """``{mean, std, min, max, n}`` of the values that are not None (all None and ``n = 0`` if none is)."""
    values = [v for v in values if v is not None]
    if not values:
        return {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'n': len(values)}


def mean_certainty(policy_path: str) -> float | None:
    """Mean selection certainty (max probability) of a policy's searched decisions when fixed."""
    from ssps_nni.policy import load_policy

    layers = load_policy(policy_path).layers.values()
    values = [e['certainty'] for e in layers if not e.get('pinned') and e.get('certainty') is not None]
    return statistics.fmean(values) if values else None
