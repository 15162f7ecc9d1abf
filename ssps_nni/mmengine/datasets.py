"""mmpretrain datasets for the offline CIFAR-10 copies (``ssps_nni.data``).

- :class:`CIFAR10Subset`: the real subset shipped in ``data/cifar10_subset.tar.gz``
  (5,000 train / 1,000 test images), the default run's data.
- :class:`CIFAR10Folder`: the per-class JPEG folders of ``../shared/data/cifar10``.

Both serve the same items as mmpretrain's ``CIFAR10`` (``{'img': uint8 HWC RGB, 'gt_label'}``),
so mmpretrain's CIFAR-10 pipelines and metrics apply unchanged; ``test_mode`` picks the split,
as in ``CIFAR10``.
"""
from __future__ import annotations

from mmpretrain.datasets.base_dataset import BaseDataset
from mmpretrain.datasets.categories import CIFAR10_CATEGORIES
from mmpretrain.registry import DATASETS

from ..data import load_cifar10_folder, load_cifar10_subset

__all__ = ['CIFAR10Subset', 'CIFAR10Folder']


@DATASETS.register_module()
class CIFAR10Subset(BaseDataset):
    """The CIFAR-10 subset shipped with the repository.

    Args:
        test_mode: True serves the 1,000 test images, False the 5,000 training images.
        archive: the ``.tar.gz``; defaults to ``data/cifar10_subset.tar.gz`` of the repository.
        **kwargs: other :class:`mmpretrain.datasets.BaseDataset` arguments (``pipeline``,
            ``indices``, ...).
    """

    METAINFO = {'classes': CIFAR10_CATEGORIES}

    def __init__(self, test_mode: bool = False, archive: str | None = None, **kwargs):
        self.archive = archive
        super().__init__(ann_file='', test_mode=test_mode, **kwargs)

    def load_data_list(self) -> list[dict]:
        return load_cifar10_subset('test' if self.test_mode else 'train', self.archive)

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
