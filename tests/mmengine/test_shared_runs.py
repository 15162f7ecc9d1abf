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


def test_lut_option_sets_the_table_of_a_lut_budget(search_tool, tiny_config, tmp_path, capsys):
    """``ssps search --budget lut=X --lut FILE`` is the hook's cost_options.lut.path: the typed
    config reads the table and the budget check answers from it (reachable and unreachable)."""
    from mmengine.config import Config

    from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg

    names = list(QuantPolicyHook(uniform='W4A4').resolve(build_model_from_cfg(Config.fromfile(str(tiny_config))))
                 .to_dict()['layers'])
    bits = (2, 4, 8, 32)
    table = {'unit': 'ms', 'layers': {n: {f'w{w}a{a}': w * a / 64 for w in bits for a in bits} for n in names}}
    lut = tmp_path / 'lut.json'
    lut.write_text(json.dumps(table))
    argv = [str(tiny_config), '--budget', f'lut={len(names) * 0.25}', '--lut', str(lut),
            '--work-dir', str(tmp_path / 'work')]
    args = search_tool.parse_args(argv)
    search_tool.check_args(args)
    cfg = search_tool.build_config(args)
    config = search_tool.search_config(cfg)
    assert config.cost_options == {'lut': {'path': str(lut)}}
    search_tool.check_budget_reachable(cfg, config)  # W4A4 everywhere costs 0.25 ms a layer: reachable
    args = search_tool.parse_args([*argv[:2], 'lut=0.001', *argv[3:]])
    cfg = search_tool.build_config(args)
    with pytest.raises(search_tool.InputError, match='unreachable'):
        search_tool.check_budget_reachable(cfg, search_tool.search_config(cfg))
    assert not (tmp_path / 'work').exists()
