"""mmpretrain datasets for the offline CIFAR-10 copies (``ssps_nni.data``).

- :class:`CIFAR10Subset`: the real subset shipped in ``data/cifar10_subset.tar.gz``
  (5,000 train / 1,000 test images), the default run's data.
- :class:`CIFAR10Folder`: the per-class JPEG folders of ``../shared/data/cifar10``, decoded at
  every build.
- :class:`CIFAR10Cached`: the same folders decoded once into a cached uint8 array: the fast
  data path.

``CIFAR10Subset`` and ``CIFAR10Cached`` keep the decoded split in the cache
(``ssps_nni.data_cache``: ``$SSPS_CACHE_DIR`` or ``~/.cache/ssps-nni``, keyed by the data's
contents), memory-mapped, and build items from the arrays on access (:class:`ArrayCIFAR10`):
a build takes a fraction of a second instead of decoding thousands of JPEGs.

All three serve the same items as mmpretrain's ``CIFAR10`` (``{'img': uint8 HWC RGB,
'gt_label'}``), so mmpretrain's CIFAR-10 pipelines and metrics apply unchanged; ``test_mode``
picks the split, as in ``CIFAR10``.
"""
from __future__ import annotations

import numpy as np
from mmpretrain.datasets.base_dataset import BaseDataset
from mmpretrain.datasets.categories import CIFAR10_CATEGORIES
from mmpretrain.registry import DATASETS

from ..data import load_cifar10_folder
from ..data_cache import cached_cifar10_folder, cached_cifar10_subset

__all__ = ['ArrayCIFAR10', 'CIFAR10Subset', 'CIFAR10Folder', 'CIFAR10Cached']


class ArrayCIFAR10(BaseDataset):
    """A CIFAR-10 split held as two arrays (images uint8 ``(N, 32, 32, 3)`` RGB HWC, labels ``(N,)``).

    Subclasses give :meth:`arrays`. Items are built on access: ``{'img': writeable copy of the
    image, 'gt_label': int, 'sample_idx': int}``, as mmpretrain's ``CIFAR10`` serves them; no
    per-sample dicts are kept or pickled (``serialize_data`` does not apply). ``indices``
    follows ``BaseDataset``: an int keeps the first that many, a sequence those samples.

    Attributes:
        subset_indices: the ``indices`` argument (None: every sample), kept here rather than
            passed on: ``BaseDataset`` slices its per-sample ``data_list``, which is not built.
    """

    METAINFO = {'classes': CIFAR10_CATEGORIES}

    def __init__(self, indices=None, **kwargs):
        self.images = self.labels = None
        self.subset_indices = indices
        kwargs['serialize_data'] = False  # the arrays are already one compact buffer
        super().__init__(ann_file='', **kwargs)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def full_init(self):
        if self._fully_initialized:
            return
        images, labels = self.arrays()
        subset = self.subset_indices
        if subset is not None:
            keep = (np.arange(min(int(subset), len(labels))) if isinstance(subset, int)
                    else np.asarray(list(subset), dtype=np.int64))
            images, labels = images[keep], labels[keep]
        self.images, self.labels = images, labels
        self.data_list = []
        self._fully_initialized = True

    def load_data_list(self) -> list[dict]:
        """Every item as a dict (not used by :meth:`full_init`; for ``BaseDataset`` APIs that ask)."""
        self.full_init()
        return [self.get_data_info(i) for i in range(len(self))]

    def __len__(self) -> int:
        if not self._fully_initialized:
            self.full_init()
        return len(self.labels)

    def get_data_info(self, idx: int) -> dict:
        if not self._fully_initialized:
            self.full_init()
        idx = int(idx) if idx >= 0 else len(self) + int(idx)
        return {'img': np.array(self.images[idx]), 'gt_label': int(self.labels[idx]), 'sample_idx': idx}


@DATASETS.register_module()
class CIFAR10Subset(ArrayCIFAR10):
    """The CIFAR-10 subset shipped with the repository (decoded once, cached).

    Args:
        test_mode: True serves the 1,000 test images, False the 5,000 training images.
        archive: the ``.tar.gz``; defaults to ``data/cifar10_subset.tar.gz`` of the repository.
        cache_dir: where the decoded arrays are kept (default ``$SSPS_CACHE_DIR/datasets``).
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments (``pipeline``,
            ``indices``, ...).
    """

    def __init__(self, test_mode: bool = False, archive: str | None = None, cache_dir: str | None = None,
                 **kwargs):
        self.archive, self.cache_dir = archive, cache_dir
        super().__init__(test_mode=test_mode, **kwargs)

    def arrays(self):
        return cached_cifar10_subset('test' if self.test_mode else 'train', self.archive, self.cache_dir)

    def extra_repr(self) -> list[str]:
        return [f'Archive: \t{self.archive or "data/cifar10_subset.tar.gz (shipped)"}']


@DATASETS.register_module()
class CIFAR10Folder(BaseDataset):
    """CIFAR-10 as per-class JPEG folders: ``<data_root>/{train,test}/<class>/NNNN.jpg``.

    Args:
        data_root: the ``cifar10`` folder, e.g. ``'../shared/data/cifar10'``.
        test_mode: True reads ``test/``, False ``train/``.
        limit_per_class: keep the first this many images of each class (None: all).
        part: ``'all'`` (default), or a part of :func:`ssps_nni.proxy.holdout_split` (one image
            in ten held out): ``'fit'`` (the other nine) or ``'holdout'``, a validation split of
            the training set on which defaults are chosen (docs/algorithm.md §9).
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments.

    Raises:
        ValueError: an unknown ``part``.
    """

    METAINFO = {'classes': CIFAR10_CATEGORIES}
    PARTS = ('all', 'fit', 'holdout')

    def __init__(self, data_root: str, test_mode: bool = False, limit_per_class: int | None = None,
                 part: str = 'all', **kwargs):
        if part not in self.PARTS:
            raise ValueError(f'CIFAR10Folder part must be one of {self.PARTS}, got {part!r}')
        self.limit_per_class = limit_per_class
        self.part = part
        super().__init__(ann_file='', data_root=data_root, test_mode=test_mode, **kwargs)

    def load_data_list(self) -> list[dict]:
        split = 'test' if self.test_mode else 'train'
        data = load_cifar10_folder(self.data_root, split, self.limit_per_class)
        if self.part == 'all':
            return data
        from ..proxy import holdout_split

        fit, held = holdout_split(len(data))
        return [data[i] for i in (fit if self.part == 'fit' else held)]

    def extra_repr(self) -> list[str]:
        return [f'Folder: \t{self.data_root}', f'Part: \t{self.part}']


@DATASETS.register_module()
class CIFAR10Cached(ArrayCIFAR10):
    """CIFAR-10 JPEG folders as :class:`CIFAR10Folder` serves them, decoded once and cached.

    The first build decodes the split and stores it (``ssps_nni.data_cache``, keyed by the
    folder's file names, sizes and times); later builds memory-map it in well under a second.
    Same samples in the same order as :class:`CIFAR10Folder`.

    Args:
        data_root: the ``cifar10`` folder (``train/`` and ``test/``).
        test_mode: True serves ``test/``, False ``train/``.
        limit_per_class: the first this many images of each class (None: all).
        cache_dir: where the arrays are kept (default ``$SSPS_CACHE_DIR/datasets`` or
            ``~/.cache/ssps-nni/datasets``).
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments.
    """

    def __init__(self, data_root: str, test_mode: bool = False, limit_per_class: int | None = None,
                 cache_dir: str | None = None, **kwargs):
        self.limit_per_class, self.cache_dir = limit_per_class, cache_dir
        super().__init__(data_root=data_root, test_mode=test_mode, **kwargs)

    def arrays(self):
        split = 'test' if self.test_mode else 'train'
        return cached_cifar10_folder(self.data_root, split, self.limit_per_class, self.cache_dir)

    def extra_repr(self) -> list[str]:
        return [f'Folder: \t{self.data_root} (cached uint8 array)']
