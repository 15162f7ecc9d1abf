"""Package-level checks: the core imports no driver, and the docstring examples run."""
from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ("quant", "sampler", "cell", "convert", "cost", "penalty", "decider", "policy", "search", "errors",
        "export", "checkpoint", "calibrate", "layer_names", "apply_policy", "plots")
#: Helpers of the mmengine driver that need no mmengine, moved out of ``ssps_nni/mmengine/`` (issue 23).
DRIVER_HELPERS = ("cost_report", "calibration_data", "calibrate_scores")
OPENMMLAB = ("mmengine", "mmpretrain", "mmcv", "mmdet")


def test_core_imports_neither_nni_nor_mmengine():
    code = (
        "import sys\n"
        + "".join(f"import ssps_nni.{m}\n" for m in CORE)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nni', 'mmengine', 'mmcv', 'mmdet'))\n"
        + "assert not bad, bad\n"
        + "assert 'ssps_nni.nni' not in sys.modules and 'ssps_nni.mmengine' not in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_driver_helpers_outside_the_mmengine_package_load_no_openmmlab():
    """Each module, imported alone in a fresh interpreter, loads neither ``ssps_nni.mmengine`` nor mmengine."""
    code = (
        "import importlib, sys\n"
        f"for name in {DRIVER_HELPERS!r}:\n"
        "    importlib.import_module('ssps_nni.' + name)\n"
        f"    bad = sorted(m for m in sys.modules\n"
        f"                 if m.split('.')[0] in {OPENMMLAB!r} or m.startswith('ssps_nni.mmengine'))\n"
        "    assert not bad, f'importing ssps_nni.{name} loaded {bad[:5]}'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["quant", "sampler", "penalty", "decider", "cost"])
def test_doctests(name):
    module = importlib.import_module(f"ssps_nni.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failed == 0
    if name != "cost":  # cost.py has no examples yet
        assert attempted > 0
