"""``ssps train`` and ``QuantPolicyHook``: one schedule for every mode, uniform bits, bad input.

These stop before training (the config is resolved and the model built, no Runner), so they
call ``main(argv)`` in-process. The retraining itself runs in ``test_retrain_export.py``.
"""
from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip('mmpretrain')

from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg  # noqa: E402


def _hooks(cfg, kind):
    return [h for h in cfg.custom_hooks if h['type'] == kind]


def test_policy_uniform_and_fp32_share_one_schedule(train_tool, tiny_config, tmp_path):
    """The resolved configs differ only in the quantization hook's policy/uniform argument."""
    argv = [str(tiny_config), '--work-dir', str(tmp_path), '--seed', '3']
    cfgs = {mode: train_tool.build_config(train_tool.parse_args(argv + extra)) for mode, extra in
            (('policy', ['--policy', 'p.json']), ('uniform', ['--uniform', 'W4A4']), ('fp32', []))}
    quant = _hooks(cfgs['policy'], 'QuantPolicyHook')[0]
    assert quant['policy'] == 'p.json' and 'uniform' not in quant
    assert quant['calib_batches'] == 1 and quant['seed'] == 3  # carried over from the config's SSPSHook
    assert _hooks(cfgs['uniform'], 'QuantPolicyHook')[0]['uniform'] == 'W4A4'
    assert not any(_hooks(cfg, 'SSPSHook') for cfg in cfgs.values())
    assert not _hooks(cfgs['fp32'], 'QuantPolicyHook')

    def without_quant_argument(cfg):
        d = copy.deepcopy(cfg.to_dict())
        for hook in d['custom_hooks']:
            hook.pop('policy', None), hook.pop('uniform', None)
        return d

    assert without_quant_argument(cfgs['policy']) == without_quant_argument(cfgs['uniform'])
    fp32 = cfgs['fp32'].to_dict()
    policy = without_quant_argument(cfgs['policy'])
    policy['custom_hooks'] = [h for h in policy['custom_hooks'] if h['type'] != 'QuantPolicyHook']
    assert policy == fp32
    assert fp32['randomness']['seed'] == 3 and fp32['train_cfg'] == cfgs['policy'].train_cfg


def test_uniform_covers_the_searched_layers_and_keeps_pinned_bits(train_tool, tiny_config):
    cfg = train_tool.build_config(train_tool.parse_args([str(tiny_config), '--uniform', 'w3a5']))
    model = build_model_from_cfg(cfg)
    policy = QuantPolicyHook(uniform='W3A5').resolve(model)
    bits = policy.bits()
    assert len(bits) == 20
    assert bits.pop('backbone.conv1') == (8, 8) and bits.pop('head.fc') == (8, 8)
    assert set(bits.values()) == {(3, 5)}
    excluded = QuantPolicyHook(uniform='W4A4', exclude=['backbone.layer3.*']).resolve(model)
    assert excluded.layers['backbone.layer3.0.conv1'] == {'w_bits': 32, 'a_bits': 32, 'excluded': True}
    assert 'backbone.layer3.0.conv1' not in excluded.bits()


def _policy_file(tmp_path, train_tool, tiny_config, edit) -> str:
    """A policy of the tiny config's model (uniform W4A4 resolved), changed by ``edit(dict)``."""
    cfg = train_tool.build_config(train_tool.parse_args([str(tiny_config)]))
    data = QuantPolicyHook(uniform='W4A4').resolve(build_model_from_cfg(cfg)).to_dict()
    edit(data)
    path = tmp_path / 'policy.json'
    path.write_text(json.dumps(data))
    return str(path)


def _drop_last(data):
    data['layers'].pop('backbone.layer3.2.conv2')


def _add_extra(data):
    data['layers']['backbone.extra'] = {'w_bits': 8, 'a_bits': 8, 'pinned': True}


def _bits_33(data):
    data['layers']['backbone.layer1.0.conv1']['a_bits'] = 33


def _w_bits_1(data):
    data['layers']['backbone.conv1']['w_bits'] = 1


BAD_INPUT = {
    'missing layer': (lambda t, p: ['--policy', p(_drop_last)],
                      "model layer 'backbone.layer3.2.conv2' is missing from the policy"),
    'extra layer': (lambda t, p: ['--policy', p(_add_extra)], "policy layer 'backbone.extra' is not a Conv2d/Linear"),
    'bits 33': (lambda t, p: ['--policy', p(_bits_33)],
                "layer 'backbone.layer1.0.conv1' has a_bits=33; accepted: integers 1..32"),
    'weight bits 1': (lambda t, p: ['--policy', p(_w_bits_1)], "'backbone.conv1' has w_bits=1"),
    'not JSON': (lambda t, p: ['--policy', str(_write(t / 'bad.json', '{"format": '))], 'is not valid JSON'),
    'unreadable': (lambda t, p: ['--policy', str(t / 'none.json')], 'cannot read policy file'),
    'uniform W4': (lambda t, p: ['--uniform', 'W4'], 'not of the form WxAy'),
    'uniform W1A4': (lambda t, p: ['--uniform', 'W1A4'], 'weights need 2..32 bits'),
    'uniform W40A4': (lambda t, p: ['--uniform', 'W40A4'], 'not an integer in 1..32'),
    'missing load-from': (lambda t, p: ['--uniform', 'W4A4', '--load-from', str(t / 'no.pth')], 'is not a local file'),
    'load-from not a checkpoint': (lambda t, p: ['--uniform', 'W4A4', '--load-from', str(_write(t / 'text.pth', 'not a checkpoint'))],
                                   'is not a PyTorch checkpoint'),
}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize('case', list(BAD_INPUT))
def test_bad_input_exits_2_before_training(train_tool, tiny_config, tmp_path, capsys, case):
    make_args, message = BAD_INPUT[case]
    args = make_args(tmp_path, lambda edit: _policy_file(tmp_path, train_tool, tiny_config, edit))
    work_dir = tmp_path / 'work'
    code = train_tool.main([str(tiny_config), '--work-dir', str(work_dir), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith('ssps train: error: ') and err.count('\n') == 1, err
    assert message in err and 'Traceback' not in err
    assert not work_dir.exists()  # refused before the runner was built
