"""``ssps train --policy`` continues the search (``ssps_nni.cli.search_start``): given the search's
work dir it starts from the search's last checkpoint, with its weights and the step sizes the
search trained for the policy's bits (``QuantPolicyHook`` takes each layer's row of the
supernet's per-candidate step sizes); ``--load-from`` or ``load_from`` in ``--cfg-options``
starts elsewhere; a one-shot method's policy has no search to continue."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip('mmpretrain')

from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import ssps_nni.mmengine  # noqa: E402,F401  (registrations; torch safe globals)
from ssps_nni.checkpoint import quant_cells  # noqa: E402
from ssps_nni.cli.search_start import search_checkpoint  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402


class FirstStep(Hook):
    """Before the first training step: every cell's step sizes and weight; then stop after it."""

    priority = 'LOWEST'  # after QuantPolicyHook's before_train (calibration of what is missing)

    def __init__(self):
        self.seen = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.seen is None:
            self.seen = {n: {k: getattr(c, k).detach().clone() for k in ('w_scale', 'a_scale', 'weight')}
                         for n, c in quant_cells(runner.model).items()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        runner.train_loop.stop_training = True


def test_train_from_the_search_work_dir_starts_from_its_weights_and_step_sizes(full_run, tiny_config, train_tool,
                                                                              tmp_path, capsys):
    args = train_tool.parse_args([str(tiny_config), '--policy', str(full_run), '--work-dir', str(tmp_path),
                                  '--cfg-options', 'train_cfg.max_epochs=1'])
    train_tool.check_policy(args)
    assert args.policy == str(full_run / 'policy.json')
    cfg = train_tool.build_config(args)
    start = (full_run / 'last_checkpoint').read_text().strip()
    assert cfg.load_from == start == args.continued_from
    train_tool.validate(cfg)
    runner = Runner.from_cfg(cfg)
    first = FirstStep()
    runner.register_hook(first)
    runner.train()

    policy = load_policy(full_run / 'policy.json')
    state = torch.load(start, map_location='cpu')['state_dict']  # weights_only default
    cands = {s: sorted(policy.candidates[s]) for s in ('w', 'a')}
    assert len(first.seen) == 20
    for name, seen in first.seen.items():
        w_bits, a_bits = policy.bits()[name]
        w_rows, a_rows = state[f'{name}.w_scale'], state[f'{name}.a_scale']
        pinned = policy.layers[name]['pinned']  # one candidate in the search too
        w_row = w_rows[0] if pinned else w_rows[cands['w'].index(w_bits)]
        a_row = a_rows[0] if pinned else a_rows[cands['a'].index(a_bits)]
        assert torch.equal(seen['w_scale'], w_row.unsqueeze(0)), name
        assert torch.equal(seen['a_scale'], a_row.unsqueeze(0)), name
        assert torch.equal(seen['weight'], state[f'{name}.weight']), name
    out = capsys.readouterr().out
    assert 'step sizes of the policy\'s bits taken for 18 of its 18 per-candidate layers' in out
    assert 'QAT: step sizes from the checkpoint' in out and 'QAT: calibrated' not in out


def test_another_start_is_kept(full_run, tiny_config, train_tool, tmp_path):
    fp32 = str(tmp_path / 'fp32.pth')
    torch.save({'state_dict': {}}, fp32)
    for extra, expected in ((['--load-from', fp32], fp32), (['--cfg-options', f'load_from={fp32}'], fp32)):
        args = train_tool.parse_args([str(tiny_config), '--policy', str(full_run / 'policy.json'),
                                      '--work-dir', str(tmp_path / 'w'), *extra])
        train_tool.check_policy(args)
        cfg = train_tool.build_config(args)
        assert cfg.load_from == expected and not getattr(args, 'continued_from', None)


def test_no_search_to_continue(full_run, tmp_path):
    assert search_checkpoint(str(full_run / 'policy.json')) == (full_run / 'last_checkpoint').read_text().strip()
    one_shot = tmp_path / 'policy.json'  # a sensitivity policy next to some checkpoint: not a search's
    one_shot.write_text(json.dumps(dict(json.loads((full_run / 'policy.json').read_text()), method='sensitivity')))
    (tmp_path / 'last_checkpoint').write_text((full_run / 'last_checkpoint').read_text())
    assert search_checkpoint(str(one_shot)) is None
    (tmp_path / 'policy.json').write_text((full_run / 'policy.json').read_text())
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'missing.pth'))
    assert search_checkpoint(str(one_shot)) is None  # the checkpoint it names is gone


def test_a_folder_without_a_policy_is_refused(train_tool, tiny_config, tmp_path, capsys):
    code = train_tool.main([str(tiny_config), '--policy', str(tmp_path), '--work-dir', str(tmp_path / 'w')])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and 'is a folder without policy.json' in err, err
    assert not (tmp_path / 'w').exists()
