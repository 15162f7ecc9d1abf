"""A policy travels between the two routes (docs/algorithm.md §8, layer names across routes).

The NNI strategy names layers as in the plain model (``layer1.0.conv1``), the mmengine route as
in the OpenMMLab model (``backbone.layer1.0.conv1``). Both directions with real policies:

- NNI -> OpenMMLab: a real SSPS search through NNI (4 steps on real CIFAR-10 images), its
  ``SSPS.save_policy`` file retrained by the train tool on the tiny ResNet-20 config;
- OpenMMLab -> NNI: the search tool's ``policy.json`` (``full_run``) applied to the plain
  ResNet-20 and frozen into NNI's fixed model, which NNI's evaluator then trains.
"""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip('mmpretrain')
pytest.importorskip('nni')

import ssps_nni.nni as sn  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.space import RawFormatModelSpace  # noqa: E402
from ssps_nni.cell import QuantCellMixin  # noqa: E402
from ssps_nni.models import resnet20  # noqa: E402
from ssps_nni.apply_policy import apply_policy  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402

from mm_search_helpers import TRAIN_TOOL, run_tool  # noqa: E402

CANDIDATES = (2, 4, 8)


@pytest.fixture(scope='module')
def nni():
    """``tests/nni/nni_helpers.py`` (real CIFAR-10 tensors, NNI's Classification evaluator; on the
    import path by pytest.ini's ``pythonpath``) and its CIFAR-10 splits."""
    import nni_helpers as helpers

    return helpers, helpers.cifar_splits()


@pytest.fixture(scope='module')
def nni_policy(nni, tmp_path_factory):
    """``SSPS.save_policy`` of a real 4-step NNI search of ResNet-20 (W4A4 BitOPs, bits 2/4/8)."""
    helpers, cifar = nni
    root = tmp_path_factory.mktemp('nni_search')
    torch.manual_seed(0)
    space = sn.quantization_space(resnet20(), candidates=CANDIDATES)
    strategy = sn.SSPS(budget='bitops=W4A4', unit='step', interval=1)
    strategy.initialize(RawFormatModelSpace(space, helpers.make_evaluator(cifar, max_epochs=1, root=root,
                                                                          limit_val_batches=1)),
                        SequentialExecutionEngine())
    strategy.run()
    policy = strategy.save_policy(root / 'policy.json')
    assert policy.final and 'layer1.0.conv1' in policy.layers and 'conv1' in policy.layers
    return root / 'policy.json'


def test_nni_policy_retrains_with_the_openmmlab_train_tool(nni_policy, tiny_config, tmp_path):
    result = run_tool(TRAIN_TOOL, tiny_config, '--policy', nni_policy, '--work-dir', tmp_path, '--cfg-options',
                      'train_cfg.max_epochs=1', 'param_scheduler.T_max=1',
                      f'train_dataloader.dataset.indices={list(range(0, 5000, 80))}', timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert ("policy layer names matched to ImageClassifier by dotted suffix: 'backbone.' added to 19 "
            "(e.g. conv1 -> backbone.conv1), 'head.' added to 1 (e.g. fc -> head.fc)") in out
    searched = load_policy(nni_policy)
    retrained = load_policy(tmp_path / 'qat_policy.json')
    expected = {('head.' if n == 'fc' else 'backbone.') + n: b for n, b in searched.bits().items()}
    assert retrained.bits() == expected
    res = json.loads((tmp_path / 'train_result.json').read_text())
    assert res['bitops']['value'] == pytest.approx(searched.meta['totals']['bitops']['policy'], rel=1e-9)


def test_openmmlab_policy_freezes_into_the_nni_space_and_trains(full_run, nni, tmp_path):
    helpers, cifar = nni
    policy = load_policy(full_run / 'policy.json')
    assert 'backbone.layer1.0.conv1' in policy.layers and policy.final
    lines = []
    plain = resnet20()
    cells = apply_policy(plain, policy, log=lines.append)
    assert lines and "'backbone.' removed from 19" in lines[0] and "'head.' removed from 1" in lines[0]
    renamed = policy.for_model(resnet20(), log=lambda line: None)
    assert {n: c.bits() for n, c in cells.items()} == renamed.bits()

    space = sn.quantization_space(resnet20(), candidates=sorted(policy.candidates['w']))
    sample = {f'{n}.{s}_bits': b for n, (w, a) in renamed.bits().items() if n in space.searched
              for s, b in (('w', w), ('a', a))}
    assert set(sample) == set(space.simplify())
    fixed = space.freeze(sample)
    ops = {n: m for n, m in fixed.model.named_modules() if isinstance(m, QuantCellMixin)}
    assert {n: m.bits() for n, m in ops.items()} == renamed.bits()
    evaluator = helpers.make_evaluator(cifar, max_epochs=1, root=tmp_path, limit_train_batches=2,
                                       limit_val_batches=1)
    evaluator.evaluate(fixed)
    assert evaluator.trainer.global_step == 2
