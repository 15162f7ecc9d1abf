"""End-to-end SSPS search of RetinaNet-R18 (mmdet) on the shared COCO subset, on CPU.

A few training iterations at 320x192, validation with mmdet's CocoMetric, and the policy file
written by ``SSPSHook``. Skipped when ``../shared/data/coco_mini`` is absent.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip('mmdet')
pytest.importorskip('pycocotools')

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mm_search_helpers import check_config_converts, metrics_recorder, shorten_search  # noqa: E402
from ssps_nni.data import shared_data_root  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'mmdet_configs' / 'coco_retinanet_r18_ssps_mini.py'


@pytest.fixture(scope='module')
def coco_root() -> Path:
    shared = shared_data_root()
    root = shared / 'coco_mini' if shared else None
    if root is None or not (root / 'annotations' / 'instances_val2017.json').is_file():
        pytest.skip('shared data coco_mini not found (../shared/data/coco_mini)')
    return root


def mini_config(coco_root: Path, work_dir: Path, train_images: int = 8, val_images: int = 2,
                steps: int = 4) -> Config:
    """The repository's coco_mini config, shortened to ``steps`` iterations of batch 2."""
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'test_detection_{time.time_ns()}'
    cfg.randomness = dict(seed=0)
    data_root = str(coco_root) + '/'
    for name, images in (('train_dataloader', train_images), ('val_dataloader', val_images),
                         ('test_dataloader', val_images)):
        loader = cfg[name]
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_root = data_root
        loader.dataset.indices = images
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = data_root + 'annotations/instances_val2017.json'
    assert cfg.train_dataloader.batch_size * steps == train_images
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=1)
    # A detector with random weights scores every anchor near its prior (0.01), below the
    # default threshold 0.05: keep a few low-score boxes so that COCOeval has results to score.
    cfg.model.test_cfg.update(score_thr=0.0, nms_pre=100, max_per_img=20)
    return shorten_search(cfg, steps)


@pytest.mark.parametrize('name, budget', [
    ('coco_retinanet_r18_ssps.py', 'bitops=W4A4'),
    ('coco_retinanet_r50_ssps.py', 'bitops=W4A4'),
    ('coco_faster_rcnn_r50_ssps.py', 'bitops=W4A4'),
    ('coco_retinanet_r18_ssps_mini.py', 'bitops=W4A4'),
])
def test_config_builds_and_converts(name, budget):
    """Every COCO config loads, keeps the base hooks, builds offline and converts."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    cfg = Config.fromfile(str(REPO / 'mmdet_configs' / name))
    assert cfg.model.backbone.init_cfg is None  # no torchvision:// download
    check_config_converts(cfg, budget, MODELS, register_all_modules)


def test_retinanet_r18_search_coco_mini(coco_root, tmp_path):
    cfg = mini_config(coco_root, tmp_path)
    runner = Runner.from_cfg(cfg)
    recorder = metrics_recorder()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()

    assert any(type(h).__name__ == 'SSPSHook' for h in runner.hooks)
    assert runner.iter == 4
    # CocoMetric ran on the validation images and scored the detections.
    assert recorder.metrics, 'validation did not run'
    metrics = recorder.metrics[-1]
    assert 'coco/bbox_mAP' in metrics, metrics
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0

    policies = sorted(tmp_path.rglob('policy.json'))
    assert policies, f'no policy.json under {tmp_path}: {sorted(p.name for p in tmp_path.rglob("*"))}'
    policy = load_policy(policies[0])
    bits = policy.bits()
    assert 'backbone.conv1' in bits
    assert any(name.startswith('bbox_head.') for name in bits)
    cands = set(policy.candidates['w'])
    searched = [v for v in policy.layers.values() if not v.get('pinned') and not v.get('excluded')]
    assert searched and all(v['w_bits'] in cands and v['a_bits'] in set(policy.candidates['a']) for v in searched)
