"""End-to-end SSPS search of ResNet-18 (mmpretrain) on the shared ImageNet validation subset.

A few training iterations at 112 px, validation with mmpretrain's Accuracy, and the policy file
written by ``SSPSHook``. Skipped when ``../shared/data/imagenet_val_mini`` is absent.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

pytest.importorskip('mmpretrain')

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mm_search_helpers import check_config_converts, metrics_recorder, shorten_search  # noqa: E402
from ssps_nni.data import shared_data_root  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'mmdet_configs' / 'imagenet_resnet18_ssps_mini.py'


@pytest.fixture(scope='module')
def imagenet_root() -> Path:
    shared = shared_data_root()
    root = shared / 'imagenet_val_mini' if shared else None
    if root is None or not (root / 'labels.csv').is_file():
        pytest.skip('shared data imagenet_val_mini not found (../shared/data/imagenet_val_mini)')
    return root


def write_ann_file(labels_csv: Path, out: Path) -> int:
    """labels.csv (file,label,wnid,name) -> mmpretrain's list format ``file label``."""
    with open(labels_csv, newline='') as f:
        rows = [(r['file'], int(r['label'])) for r in csv.DictReader(f)]
    out.write_text(''.join(f'{name} {label}\n' for name, label in rows))
    return len(rows)


def mini_config(root: Path, work_dir: Path, crop: int = 96, batch: int = 8, steps: int = 4,
                val_images: int = 16) -> Config:
    ann_file = work_dir / 'imagenet_val_mini.txt'
    assert write_ann_file(root / 'labels.csv', ann_file) == 500
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'test_imagenet_{time.time_ns()}'
    cfg.randomness = dict(seed=0)
    for name, images, size in (('train_dataloader', batch * steps, batch), ('val_dataloader', val_images, 8),
                               ('test_dataloader', val_images, 8)):
        loader = cfg[name]
        loader.batch_size = size
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_prefix = str(root / 'images')
        loader.dataset.ann_file = str(ann_file)
        loader.dataset.indices = images
    cfg.train_dataloader.dataset.pipeline[1].scale = crop          # RandomResizedCrop
    for name in ('val_dataloader', 'test_dataloader'):
        pipeline = cfg[name].dataset.pipeline
        pipeline[1].scale = crop * 8 // 7                         # ResizeEdge
        pipeline[2].crop_size = crop                              # CenterCrop
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.param_scheduler = dict(type='ConstantLR', factor=1.0, by_epoch=True)
    return shorten_search(cfg, steps)


@pytest.mark.parametrize('name, budget', [
    ('imagenet_resnet18_ssps.py', 'bitops=W4A4'),
    ('imagenet_resnet34_ssps.py', 'bitops=W4A4'),
    ('imagenet_resnet50_ssps.py', 'bitops=W4A4'),
    ('imagenet_mobilenetv2_ssps.py', 'bitops=W4A8'),
    ('imagenet_resnet18_ssps_mini.py', 'bitops=W4A4'),
])
def test_config_builds_and_converts(name, budget):
    """Every ImageNet config loads, builds offline and converts into a search space."""
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    cfg = Config.fromfile(str(REPO / 'mmdet_configs' / name))
    check_config_converts(cfg, budget, MODELS, register_all_modules)


def test_ann_file_matches_labels(imagenet_root, tmp_path):
    out = tmp_path / 'ann.txt'
    assert write_ann_file(imagenet_root / 'labels.csv', out) == 500
    lines = out.read_text().splitlines()
    name, label = lines[0].rsplit(' ', 1)
    assert (imagenet_root / 'images' / name).is_file() and 0 <= int(label) < 1000


def test_resnet18_search_imagenet_mini(imagenet_root, tmp_path):
    cfg = mini_config(imagenet_root, tmp_path)
    runner = Runner.from_cfg(cfg)
    recorder = metrics_recorder()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()

    assert any(type(h).__name__ == 'SSPSHook' for h in runner.hooks)
    assert runner.iter == 4
    assert recorder.metrics, 'validation did not run'
    metrics = recorder.metrics[-1]
    assert 'accuracy/top1' in metrics, metrics
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0

    policies = sorted(tmp_path.rglob('policy.json'))
    assert policies, f'no policy.json under {tmp_path}: {sorted(p.name for p in tmp_path.rglob("*"))}'
    policy = load_policy(policies[0])
    bits = policy.bits()
    assert 'backbone.conv1' in bits and 'head.fc' in bits
    searched = [v for v in policy.layers.values() if not v.get('pinned') and not v.get('excluded')]
    assert searched and all(v['w_bits'] in policy.candidates['w'] for v in searched)
