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
        "export", "checkpoint", "calibrate")


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


@pytest.mark.parametrize("name", ["quant", "sampler", "penalty", "decider", "cost"])
def test_doctests(name):
    module = importlib.import_module(f"ssps_nni.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failed == 0
    if name != "cost":  # cost.py has no examples yet
        assert attempted > 0
