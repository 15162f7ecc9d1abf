"""Real CIFAR-10 data without a network: the shipped subset and the shared JPEG folder.

Both loaders return what mmpretrain's ``CIFAR10.load_data_list`` returns, so the result can be
fed to an mmpretrain dataset (``BaseDataset.load_data_list`` override) or wrapped in a torch
``Dataset``: a list of ``{'img': np.ndarray, 'gt_label': int}`` where ``img`` is uint8, shape
``(32, 32, 3)``, RGB, HWC, and ``gt_label`` is the class index in :data:`CIFAR10_CLASSES`.

The images are the JPEGs of ``../shared/data/cifar10`` (libjpeg quality 75, lossy), decoded
with Pillow; see ``../shared/data/README.md``. This module imports only numpy, Pillow and
the standard library.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['CIFAR10_CLASSES', 'SPLITS', 'DEFAULT_SUBSET', 'load_cifar10_subset',
           'load_cifar10_folder', 'shared_data_root']

#: The official CIFAR-10 class names; index = label (also alphabetical order).
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer',
                   'dog', 'frog', 'horse', 'ship', 'truck')
#: Accepted ``split`` values.
SPLITS = ('train', 'test')

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: The subset shipped in the repository (built by ``tools/make_cifar_subset.py``).
DEFAULT_SUBSET = _REPO_ROOT / 'data' / 'cifar10_subset.tar.gz'
_PREFIX = 'cifar10_subset/'


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')


def _decode(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to a writeable uint8 RGB array of shape (H, W, 3)."""
    with Image.open(io.BytesIO(data), formats=('JPEG', 'PNG')) as img:
        # np.array (not asarray): a writeable copy, as in-place transforms and torch expect.
        return np.array(img if img.mode == 'RGB' else img.convert('RGB'), dtype=np.uint8)


def load_cifar10_subset(split: str = 'train', path: str | os.PathLike | None = None) -> list[dict]:
    """Load the CIFAR-10 subset shipped with the repository.

    The subset holds the first 500 training and the first 100 test images of each class, in
    class order (label 0 first), then by rank inside the class.

    Args:
        split: ``'train'`` (5,000 images) or ``'test'`` (1,000 images).
        path: The ``.tar.gz`` archive; defaults to ``data/cifar10_subset.tar.gz`` at the
            repository root.

    Returns:
        A list of dicts ``{'img': np.ndarray, 'gt_label': int}``: ``img`` is a writeable uint8
        RGB array of shape ``(32, 32, 3)`` (HWC, values 0..255), ``gt_label`` is in ``0..9``.

    Raises:
        ValueError: ``split`` is not ``'train'`` or ``'test'``, or the archive is not a valid
            gzip tar with ``cifar10_subset/manifest.csv`` and the images it lists.
        FileNotFoundError: The archive does not exist.
    """
    _check_split(split)
    path = Path(path) if path is not None else DEFAULT_SUBSET
    if not path.is_file():
        raise FileNotFoundError(
            f'CIFAR-10 subset not found: {path}. Rebuild it from the shared data with '
            f'`python tools/make_cifar_subset.py --src <shared>/data/cifar10` (or `make data`).')
    # Decompress once (about 8 MB), then read members by random access in memory.
    try:
        tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(path.read_bytes())), mode='r:')
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    except (OSError, EOFError, tarfile.TarError) as err:
        raise ValueError(f'{path} is not a valid .tar.gz archive ({err}); rebuild it with '
                         f'`python tools/make_cifar_subset.py`') from err
    with tar:

        def read(name: str) -> bytes:
            member = members.get(_PREFIX + name)
            if member is None:
                raise ValueError(f'{path}: archive has no member {_PREFIX + name}')
            return tar.extractfile(member).read()

        rows = list(csv.DictReader(io.StringIO(read('manifest.csv').decode())))
        out = []
        for row in rows:
            if row['split'] != split:
                continue
            label = int(row['label'])
            if not 0 <= label < len(CIFAR10_CLASSES) or CIFAR10_CLASSES[label] != row['class']:
                raise ValueError(f'{path}: bad label {label} / class {row["class"]!r} for {row["path"]}')
            out.append({'img': _decode(read(row['path'])), 'gt_label': label})
    return out


def load_cifar10_folder(root: str | os.PathLike, split: str = 'train',
                        limit_per_class: int | None = None) -> list[dict]:
    """Load CIFAR-10 from the per-class JPEG folder layout of ``../shared/data/cifar10``.

    Reads ``<root>/<split>/<class>/NNNN.jpg`` for the classes of :data:`CIFAR10_CLASSES`, in
    class order, then sorted by file name (the rank inside the class in CIFAR-10 order).

    Args:
        root: The ``cifar10`` folder (holding ``train/`` and ``test/``).
        split: ``'train'`` (5,000 images per class) or ``'test'`` (1,000 per class).
        limit_per_class: Keep only the first this many images of each class; ``None`` keeps all.

    Returns:
        A list of dicts ``{'img': np.ndarray, 'gt_label': int}``: ``img`` is uint8 RGB of
        shape ``(32, 32, 3)`` (HWC), ``gt_label`` is in ``0..9``.

    Raises:
        ValueError: ``split`` is not ``'train'`` or ``'test'``, or ``limit_per_class`` < 0.
        FileNotFoundError: A class folder ``<root>/<split>/<class>`` does not exist.
    """
    _check_split(split)
    if limit_per_class is not None and limit_per_class < 0:
        raise ValueError(f'limit_per_class must be >= 0 or None, got {limit_per_class}')
    out = []
    for label, cls in enumerate(CIFAR10_CLASSES):
        folder = Path(root) / split / cls
        if not folder.is_dir():
            raise FileNotFoundError(f'CIFAR-10 class folder not found: {folder}')
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(('.jpg', '.jpeg', '.png')))
        for name in names[:limit_per_class]:
            out.append({'img': _decode((folder / name).read_bytes()), 'gt_label': label})
    return out


def shared_data_root() -> Path | None:
    """Find the shared offline data folder (``cifar10/``, ``coco_mini/``, ...).

    The environment variable ``SSPS_SHARED_DATA`` wins when set and non-empty; otherwise the
    folder ``shared/data`` beside the repository root (``<repo>/../shared/data``) is used.

    Returns:
        The folder as an absolute ``Path``, or ``None`` when it does not exist (a warning is
        issued when ``SSPS_SHARED_DATA`` is set but is not a directory).
    """
    env = os.environ.get('SSPS_SHARED_DATA')
    if env:
        path = Path(env).expanduser().resolve()
        if path.is_dir():
            return path
        warnings.warn(f'SSPS_SHARED_DATA={env!r} is not a directory; no shared data', stacklevel=2)
        return None
    path = _REPO_ROOT.parent / 'shared' / 'data'
    return path if path.is_dir() else None
