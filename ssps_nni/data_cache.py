"""CIFAR-10 JPEG folders decoded once into a cached uint8 array (the fast data path).

``ssps_nni.data.load_cifar10_folder`` decodes 60,000 JPEGs every time a dataset is built: about
ten seconds of every run on 2 CPU cores, paid again by every retraining of a sweep. Here the
decoded split is kept on disk as two ``.npy`` files (images ``(N, 32, 32, 3)`` uint8 RGB HWC,
labels ``(N,)`` int64) and memory-mapped, so a later build costs a fraction of a second and
parallel runs share one copy in the page cache.

Cache folder: ``$SSPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ssps-nni``, else ``~/.cache/ssps-nni``
(the rule of ``ssps_nni.cli.cost_check``), under ``datasets/``. The key is the folder's
contents as listed: every image's relative path, size and modification time, the split, the
per-class limit and the Pillow version (the decoder); a changed file gives a new key. A cache
that cannot be written is skipped (the decoded arrays are returned all the same).

Imports only numpy, Pillow and the standard library.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .data import CIFAR10_CLASSES, DEFAULT_SUBSET, SPLITS, load_cifar10_folder, load_cifar10_subset

__all__ = ['cache_root', 'folder_key', 'cached_cifar10_folder', 'cached_cifar10_subset']

#: Bump when the stored layout changes.
FORMAT = 1
_SUFFIXES = ('.jpg', '.jpeg', '.png')


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')


def cache_root() -> Path:
    """``$SSPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ssps-nni``, else ``~/.cache/ssps-nni``."""
    if os.environ.get('SSPS_CACHE_DIR'):
        return Path(os.environ['SSPS_CACHE_DIR'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'ssps-nni'


def folder_key(root: str | os.PathLike, split: str, limit_per_class: int | None = None) -> str:
    """sha1 of what :func:`~ssps_nni.data.load_cifar10_folder` would read (names, sizes, times).

    Raises:
        FileNotFoundError: a class folder is missing.
    """
    import PIL

    _check_split(split)
    digest = hashlib.sha1(json.dumps([FORMAT, split, limit_per_class, PIL.__version__]).encode())
    for cls in CIFAR10_CLASSES:
        folder = Path(root) / split / cls
        if not folder.is_dir():
            raise FileNotFoundError(f'CIFAR-10 class folder not found: {folder}')
        with os.scandir(folder) as entries:
            files = sorted((e.name, e.stat()) for e in entries if e.name.lower().endswith(_SUFFIXES))
        for name, st in files[:limit_per_class]:
            digest.update(f'{cls}/{name}:{st.st_size}:{st.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def _load(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        images = np.load(folder / 'images.npy', mmap_mode='r')
        labels = np.load(folder / 'labels.npy')
    except (OSError, ValueError):
        return None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or labels.shape != (len(images),):
        return None
    return images, labels


def _cached(name: str, key: str, decode, cache_dir) -> tuple[np.ndarray, np.ndarray]:
    """The arrays cached as ``<cache>/<name>-<key>``, or ``decode()``'s items stored there first."""
    base = Path(cache_dir) if cache_dir is not None else cache_root() / 'datasets'
    folder = base / f'{name}-{key[:20]}'
    found = _load(folder) if folder.is_dir() else None
    if found is not None:
        return found
    items = decode()
    images = np.stack([d['img'] for d in items]) if items else np.zeros((0, 32, 32, 3), np.uint8)
    labels = np.array([d['gt_label'] for d in items], dtype=np.int64)
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=base))
        np.save(tmp / 'labels.npy', labels)
        np.save(tmp / 'images.npy', images)
        try:
            os.replace(tmp, folder)  # atomic; another process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only cache: serve the decoded arrays
    images.setflags(write=False)
    return images, labels


def cached_cifar10_folder(root: str | os.PathLike, split: str = 'train', limit_per_class: int | None = None,
                          cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The split of a CIFAR-10 JPEG folder as arrays, decoded once and cached.

    Args:
        root: the ``cifar10`` folder (``train/`` and ``test/`` with one folder per class).
        split: ``'train'`` or ``'test'``. limit_per_class: first this many images per class.
        cache_dir: where to keep the arrays (default :func:`cache_root` ``/ 'datasets'``).

    Returns:
        ``(images, labels)``: ``images`` uint8 ``(N, 32, 32, 3)`` RGB HWC (read-only, memory
        mapped when cached), ``labels`` int64 ``(N,)`` in ``0..9``; the same samples in the same
        order as ``load_cifar10_folder`` (class order, then file name).

    Raises:
        ValueError: bad ``split`` or ``limit_per_class``. FileNotFoundError: a class folder is missing.
    """
    if limit_per_class is not None and limit_per_class < 0:
        raise ValueError(f'limit_per_class must be >= 0 or None, got {limit_per_class}')
    key = folder_key(root, split, limit_per_class)
    return _cached(f'cifar10-{split}', key, lambda: load_cifar10_folder(root, split, limit_per_class), cache_dir)


def cached_cifar10_subset(split: str = 'train', path: str | os.PathLike | None = None,
                          cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped subset (``load_cifar10_subset``) as arrays, decoded once and cached.

    The key is the archive's sha1 (1.9 MB), the split and the Pillow version. Same returns and
    errors as :func:`cached_cifar10_folder` / ``load_cifar10_subset``.
    """
    import PIL

    _check_split(split)
    path = Path(path) if path is not None else DEFAULT_SUBSET
    if not path.is_file():
        load_cifar10_subset(split, path)  # its FileNotFoundError, with how to rebuild the archive
    digest = hashlib.sha1(json.dumps([FORMAT, split, PIL.__version__]).encode())
    digest.update(path.read_bytes())
    return _cached(f'cifar10-subset-{split}', digest.hexdigest(), lambda: load_cifar10_subset(split, path), cache_dir)
