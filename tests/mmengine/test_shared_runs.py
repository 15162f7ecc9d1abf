"""A real search's outputs on a shared machine, and the LUT table from the command line.

The refusals (an output folder that cannot be written, a work dir held by another run, a nested
option of the wrong form) are rows of ``test_bad_input.py``; the lock and the file modes
themselves are checked in ``tests/test_shared_outputs.py``.
"""
from __future__ import annotations

import json
import stat

import pytest

pytest.importorskip('mmpretrain')

from ssps_nni.policy import POLICY_JSON  # noqa: E402


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_search_results_are_as_readable_as_its_checkpoints(full_run):
    """policy.json and policy.png get the mode of mmengine's checkpoints and logs (the umask's)."""
    checkpoint = full_run / 'epoch_2.pth'
    assert _mode(checkpoint) & 0o044  # readable by group and others under the usual umask 022
    for name in (POLICY_JSON, 'policy.png', 'last_checkpoint'):
        assert _mode(full_run / name) == _mode(checkpoint), name
    assert not (full_run / '.ssps.lock').exists()  # released at the end of the run
