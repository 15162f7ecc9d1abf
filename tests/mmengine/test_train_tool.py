"""``ssps train`` and ``QuantPolicyHook``: one schedule for every mode, uniform bits
(bad input: the table of ``test_bad_input.py``).

These stop before training (the config is resolved and the model built, no Runner), so they
call ``main(argv)`` in-process. The retraining itself runs in ``test_retrain_export.py``.
"""
from __future__ import annotations

import copy

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

# The bad input of ssps train is in the table of test_bad_input.py.
