"""``ssps search --resume`` with other search options than the checkpoint's search.

The checkpoint's search state records the budgets and candidates it was searched with
(``SSPSSearch.state_dict``); ``--resume`` with another ``--budget`` or other ``--candidates`` is
refused before the runner is built (exit 2, one ``ssps search: error:`` line, nothing written in
the work dir), and so is the same resume through ``SSPSHook`` alone (an ``SSPSError``). A
checkpoint saved before they were recorded: its candidates are compared by the logits' widths,
its budget not at all. The same options, in another spelling, still resume.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmpretrain')

from ssps_nni.errors import SSPSError  # noqa: E402
from ssps_nni.policy import POLICY_JSON, load_policy  # noqa: E402

from mm_search_helpers import run_search_tool  # noqa: E402

EPOCHS = ('--cfg-options', 'train_cfg.max_epochs=2')  # as full_run


@pytest.fixture
def work(full_run, tmp_path) -> Path:
    """A copy of the finished tiny search's work dir, its ``last_checkpoint`` naming its own copy."""
    work = tmp_path / 'work'
    shutil.copytree(full_run, work)
    named = Path((work / 'last_checkpoint').read_text().strip())
    (work / 'last_checkpoint').write_text(str(work / named.name))
    return work


def _checkpoint(work: Path) -> str:
    return (work / 'last_checkpoint').read_text().strip()


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*')}


@pytest.mark.parametrize('options, then, now', [
    (['--budget', 'bitops=W3A3'], 'searched with budget bitops=W4A4', '(given now: bitops=W3A3)'),
    (['--budget', 'bitops=W4A4,size=1MB'], 'searched with budget bitops=W4A4', '(given now: bitops=W4A4,size=1MB)'),
    (['--candidates', '2,3,4,8'], 'searched with candidates 2,4,8', '(given now: 2,3,4,8)'),
])
def test_resume_with_other_options_is_refused(options, then, now, work, tiny_config, search_tool, capsys):
    before, policy = _listing(work), (work / POLICY_JSON).read_bytes()
    capsys.readouterr()
    code = search_tool.main([str(tiny_config), '--work-dir', str(work), '--resume', *options, *EPOCHS])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith('ssps search: warning:')]
    assert len(lines) == 1 and lines[0].startswith('ssps search: error: --resume: '), err
    assert then in err and now in err and 'or a new --work-dir to start a new search' in err, err
    assert _listing(work) == before and (work / POLICY_JSON).read_bytes() == policy


def test_resume_with_the_same_options_resumes(work, full_run, tiny_config):
    state = torch.load(_checkpoint(work), map_location='cpu', weights_only=False)['ssps']
    assert state['budgets'] == ['bitops=W4A4'] and state['candidates'] == {'w': [2, 4, 8], 'a': [2, 4, 8]}
    # the config's own budget and candidates, given again in other spellings
    result = run_search_tool(tiny_config, '--work-dir', work, '--resume', '--budget', 'bitops=w4a4',
                             '--candidates', '8,4,2', *EPOCHS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'error' not in result.stderr
    straight, resumed = load_policy(full_run / POLICY_JSON), load_policy(work / POLICY_JSON)
    assert resumed.final and resumed.layers == straight.layers


def test_a_checkpoint_without_the_record_compares_the_candidates_only(work):
    from ssps_nni.search_config import SearchConfig, searched_with_other

    state = torch.load(_checkpoint(work), map_location='cpu', weights_only=False)['ssps']
    del state['budgets'], state['candidates']
    assert searched_with_other(state, SearchConfig(budget='bitops=W3A3', candidates=(2, 4, 8))) is None
    other = searched_with_other(state, SearchConfig(budget='bitops=W4A4', candidates=(2, 3, 4, 8)))
    assert other == '3 weight and 3 activation candidates (given now: 2,3,4,8)'


@pytest.mark.parametrize('legacy', [False, True])
def test_the_hook_refuses_a_checkpoint_of_other_candidates(work, tiny_config, legacy):
    """``resume=True`` in a config, without ``ssps search``: an SSPSError, not the logits' ValueError."""
    from mmengine.config import Config

    from ssps_nni.mmengine.hook import SSPSHook
    from ssps_nni.mmengine.qat import build_model_from_cfg
    from ssps_nni.search import SSPSSearch

    checkpoint = torch.load(_checkpoint(work), map_location='cpu', weights_only=False)
    if legacy:
        del checkpoint['ssps']['budgets'], checkpoint['ssps']['candidates']
    hook = SSPSHook(budget='bitops=W4A4', candidates=(2, 3, 4, 8), total_steps=16)
    hook.search = SSPSSearch(build_model_from_cfg(Config.fromfile(str(tiny_config))), hook.search_config(16))
    with pytest.raises(SSPSError, match='SSPSHook: the checkpoint\'s search was searched with .*candidates'):
        hook.after_load_checkpoint(None, checkpoint)


def test_resume_with_other_searched_layers_is_one_error_line(work, tiny_config, search_tool, capsys):
    """Another ``exclude`` (so other searched layers): an SSPSError from the space, one error line, exit 2."""
    state = torch.load(_checkpoint(work), map_location='cpu', weights_only=False)['ssps']
    last = state['space']['searched'][-1]
    policy = (work / POLICY_JSON).read_bytes()
    capsys.readouterr()
    code = search_tool.main([str(tiny_config), '--work-dir', str(work), '--resume', *EPOCHS,
                             f'custom_hooks.0.exclude={last}'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if line.startswith('ssps search: error:')]
    assert len(lines) == 1 and 'other layers than this search space' in lines[0], err
    assert f"only then: ['{last}']" in lines[0] and 'resume with the include, exclude and pinned' in lines[0], err
    assert (work / POLICY_JSON).read_bytes() == policy
