"""The fast data path: CIFAR-10 decoded once into cached uint8 arrays (``ssps_nni.data_cache``) and
served by ``CIFAR10Cached`` / ``CIFAR10Subset`` with the same samples as the JPEG loaders."""
from __future__ import annotations

import gzip
import io
import os
import tarfile

import numpy as np
import pytest

import ssps_nni.mmengine  # noqa: F401  (registrations)
from mmpretrain.registry import DATASETS
from ssps_nni.data import CIFAR10_CLASSES, DEFAULT_SUBSET, load_cifar10_folder, load_cifar10_subset
from ssps_nni.data_cache import cached_cifar10_folder, cached_cifar10_subset, folder_key


@pytest.fixture()
def folder(tmp_path):
    """A CIFAR-10 folder of 3 train / 2 test JPEGs per class, the shipped subset's original bytes."""
    tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(DEFAULT_SUBSET.read_bytes())))
    root = tmp_path / 'cifar10'
    for split, count in (('train', 3), ('test', 2)):
        for cls in CIFAR10_CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                data = tar.extractfile(f'cifar10_subset/{split}/{cls}/{i:04d}.jpg').read()
                (root / split / cls / f'{i:04d}.jpg').write_bytes(data)
    return root


def test_cached_folder_equals_the_jpeg_loader_and_is_reused(folder, tmp_path):
    cache = tmp_path / 'cache'
    images, labels = cached_cifar10_folder(folder, 'train', cache_dir=cache)
    items = load_cifar10_folder(folder, 'train')
    assert images.dtype == np.uint8 and images.shape == (30, 32, 32, 3)
    assert labels.tolist() == [d['gt_label'] for d in items]
    assert all(np.array_equal(images[i], d['img']) for i, d in enumerate(items))
    stored = sorted(p.name for p in cache.iterdir())
    assert len(stored) == 1 and stored[0].startswith('cifar10-train-')
    again, _ = cached_cifar10_folder(folder, 'train', cache_dir=cache)
    assert isinstance(again, np.memmap) and np.array_equal(again, images)  # read back, not decoded
    # a changed file is another key: decoded again
    key = folder_key(folder, 'train')
    target = folder / 'train' / 'cat' / '0001.jpg'
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10 ** 9))
    assert folder_key(folder, 'train') != key
    cached_cifar10_folder(folder, 'train', cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    assert cached_cifar10_folder(folder, 'train', limit_per_class=1, cache_dir=cache)[1].tolist() == list(range(10))


def test_cached_dataset_serves_the_folder_dataset_items(folder, tmp_path):
    common = dict(data_root=str(folder), test_mode=True)
    plain = DATASETS.build(dict(type='CIFAR10Folder', **common))
    fast = DATASETS.build(dict(type='CIFAR10Cached', cache_dir=str(tmp_path / 'c'), **common))
    assert len(fast) == len(plain) == 20 and fast.metainfo['classes'] == plain.metainfo['classes']
    for i in (0, 7, 19, -1):
        a, b = plain.get_data_info(i), fast.get_data_info(i)
        assert np.array_equal(a['img'], b['img']) and a['gt_label'] == b['gt_label']
        assert a['sample_idx'] == b['sample_idx']
        assert b['img'].flags.writeable  # a copy: in-place transforms do not touch the cache
    subset = DATASETS.build(dict(type='CIFAR10Cached', cache_dir=str(tmp_path / 'c'), indices=[3, 18],
                                 pipeline=[dict(type='PackInputs')], **common))
    assert len(subset) == 2 and subset[1]['data_samples'].gt_label.item() == 9
    first = DATASETS.build(dict(type='CIFAR10Cached', cache_dir=str(tmp_path / 'c'), indices=5, **common))
    assert first.labels.tolist() == [0, 0, 1, 1, 2]


def test_cached_subset_equals_the_archive_loader(tmp_path):
    images, labels = cached_cifar10_subset('test', cache_dir=tmp_path)
    items = load_cifar10_subset('test')
    assert len(images) == 1000 and labels.tolist() == [d['gt_label'] for d in items]
    assert all(np.array_equal(images[i], items[i]['img']) for i in range(0, 1000, 37))
    with pytest.raises(FileNotFoundError, match='make_cifar_subset.py'):
        cached_cifar10_subset('test', path=tmp_path / 'missing.tar.gz', cache_dir=tmp_path)
