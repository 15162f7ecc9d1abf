"""The shipped CIFAR-10 subset and the data loaders of ``ssps_nni.data``."""
import shutil
from collections import Counter

import numpy as np
import pytest

from ssps_nni.data import (CIFAR10_CLASSES, DEFAULT_SUBSET, load_cifar10_folder,
                           load_cifar10_subset, shared_data_root)

EXPECTED = {'train': 500, 'test': 100}  # images per class


@pytest.fixture(scope='module')
def loaded():
    return {split: load_cifar10_subset(split) for split in EXPECTED}


@pytest.fixture(params=list(EXPECTED))
def subset(request, loaded):
    return request.param, loaded[request.param]


def test_classes_official_order():
    assert CIFAR10_CLASSES == ('airplane', 'automobile', 'bird', 'cat', 'deer',
                               'dog', 'frog', 'horse', 'ship', 'truck')


def test_subset_counts_and_balance(subset):
    split, items = subset
    assert len(items) == 10 * EXPECTED[split]
    labels = [item['gt_label'] for item in items]
    assert all(type(label) is int for label in labels)
    assert Counter(labels) == {label: EXPECTED[split] for label in range(10)}
    assert labels == sorted(labels)  # class order, deterministic


def test_subset_images(subset):
    _, items = subset
    assert all(set(item) == {'img', 'gt_label'} for item in items)
    assert all(item['img'].flags.writeable for item in items)
    imgs = np.stack([item['img'] for item in items])
    assert imgs.dtype == np.uint8 and imgs.shape[1:] == (32, 32, 3)
    # Real pictures: not blank, not all the same, colour (not grey), a wide value range.
    assert imgs.reshape(len(imgs), -1).std(axis=1).min() > 0
    assert len({img.tobytes() for img in imgs}) > 0.99 * len(imgs)
    assert np.abs(imgs[..., 0].astype(int) - imgs[..., 2]).mean() > 5
    assert imgs.min() == 0 and imgs.max() == 255
    assert 80 < imgs.mean() < 170


def test_subset_is_deterministic_and_path_argument(loaded, tmp_path):
    copy = tmp_path / 'copy.tar.gz'
    shutil.copy(DEFAULT_SUBSET, copy)
    again = load_cifar10_subset('test', path=copy)
    assert len(again) == len(loaded['test'])
    assert all(a['gt_label'] == b['gt_label'] and np.array_equal(a['img'], b['img'])
               for a, b in zip(again, loaded['test']))


def _shared_cifar10():
    root = shared_data_root()
    if root is None or not (root / 'cifar10' / 'train').is_dir():
        pytest.skip('../shared/data/cifar10 not available')
    return root / 'cifar10'


@pytest.mark.parametrize('split, index, cls, name', [
    ('train', 0, 'airplane', '0000.jpg'),
    ('train', 3 * 500 + 123, 'cat', '0123.jpg'),
    ('train', 9 * 500 + 499, 'truck', '0499.jpg'),
    ('test', 5 * 100 + 42, 'dog', '0042.jpg'),
])
def test_subset_matches_shared_folder(loaded, split, index, cls, name):
    from PIL import Image
    src = _shared_cifar10() / split / cls / name
    item = loaded[split][index]
    assert item['gt_label'] == CIFAR10_CLASSES.index(cls)
    assert np.array_equal(item['img'], np.asarray(Image.open(src).convert('RGB')))


def test_subset_stores_original_jpeg_bytes():
    import tarfile
    src = _shared_cifar10()
    wanted = {'cifar10_subset/train/airplane/0003.jpg', 'cifar10_subset/train/bird/0007.jpg'}
    with tarfile.open(DEFAULT_SUBSET) as tar:
        for member in tar:  # stream: stop once both are found
            if member.name in wanted:
                stored = tar.extractfile(member).read()
                assert stored == (src / member.name.split('/', 1)[1]).read_bytes()
                wanted.discard(member.name)
                if not wanted:
                    break
    assert not wanted


def test_folder_loader_matches_subset(subset):
    split, items = subset
    folder = load_cifar10_folder(_shared_cifar10(), split, limit_per_class=3)
    assert len(folder) == 30
    expected = [items[label * EXPECTED[split] + k] for label in range(10) for k in range(3)]
    for got, want in zip(folder, expected):
        assert got['gt_label'] == want['gt_label']
        assert np.array_equal(got['img'], want['img'])


def test_bad_split():
    with pytest.raises(ValueError, match="'train'.*'test'"):
        load_cifar10_subset('val')
    with pytest.raises(ValueError, match="'train'.*'test'"):
        load_cifar10_folder('.', 'val')


def test_missing_archive(tmp_path):
    missing = tmp_path / 'nope.tar.gz'
    with pytest.raises(FileNotFoundError, match='make_cifar_subset.py') as err:
        load_cifar10_subset('train', path=missing)
    assert str(missing) in str(err.value)


def test_corrupt_archive(tmp_path):
    bad = tmp_path / 'bad.tar.gz'
    bad.write_bytes(b'not a gzip file')
    with pytest.raises(ValueError, match='not a valid'):
        load_cifar10_subset('test', path=bad)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='airplane'):
        load_cifar10_folder(tmp_path, 'train')
    with pytest.raises(ValueError, match='limit_per_class'):
        load_cifar10_folder(tmp_path, 'train', limit_per_class=-1)


def test_folder_loader_small_tree(tmp_path, loaded):
    # Build a 2-image-per-class tree out of the shipped archive's images (no shared data needed).
    from PIL import Image
    items = loaded['test']
    for label, cls in enumerate(CIFAR10_CLASSES):
        (tmp_path / 'test' / cls).mkdir(parents=True)
        for k in (1, 0):  # written out of order: the loader must sort by name
            img = items[label * 100 + k]['img']
            Image.fromarray(img).save(tmp_path / 'test' / cls / f'{k:04d}.png')
    loaded = load_cifar10_folder(tmp_path, 'test')
    assert [x['gt_label'] for x in loaded] == [label for label in range(10) for _ in range(2)]
    assert np.array_equal(loaded[1]['img'], items[1]['img'])  # lossless PNG round trip
    assert len(load_cifar10_folder(tmp_path, 'test', limit_per_class=1)) == 10


def test_shared_data_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv('SSPS_SHARED_DATA', str(tmp_path))
    assert shared_data_root() == tmp_path.resolve()
    monkeypatch.setenv('SSPS_SHARED_DATA', str(tmp_path / 'missing'))
    with pytest.warns(UserWarning, match='SSPS_SHARED_DATA'):
        assert shared_data_root() is None


def test_default_subset_path():
    assert DEFAULT_SUBSET.name == 'cifar10_subset.tar.gz' and DEFAULT_SUBSET.is_file()
    assert DEFAULT_SUBSET.stat().st_size < 10 * 2**20
