"""The fast data path measured: ``CIFAR10Folder`` (JPEGs decoded at every dataset build) against
``CIFAR10Cached`` (decoded once, memory-mapped from the cache), in one process.

    python -m ssps_nni.cli.benchmark.data_path [--data-root ../shared/data/cifar10] [--steps 20]
        [--loader-batches 100] [--workers 0] [--out work_dirs/data_path.json]

Per dataset type, on the config ``mmdet_configs/cifar10_resnet20_ssps_folder.py`` (its pipelines,
batch size and model; FP32 training steps, SGD):

- *build*: seconds to build the train and test datasets (what every ``ssps train`` / ``ssps
  search`` run pays before its first step; the cache's first fill is timed apart);
- *loader*: seconds per batch of the training dataloader alone (``--workers`` processes);
- *step*: seconds per training step, data loading included (forward, backward, SGD).

The two types are timed in turns, loader batches and steps alternating between them, so the
drift of a shared machine hits both alike; the ratios (folder / cached) are the result. The
epoch estimate is ``build + steps_per_epoch x step``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ..common import REPO

CONFIG = REPO / 'mmdet_configs' / 'cifar10_resnet20_ssps_folder.py'
TYPES = ('CIFAR10Folder', 'CIFAR10Cached')


def loaders(cfg, kind: str, workers: int):
    """``(train loader, build seconds)`` of dataset type ``kind`` (train and test datasets built)."""
    import copy

    from mmengine.registry import DATASETS, DefaultScope
    from mmengine.runner import Runner

    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        start = time.perf_counter()
        train = DATASETS.build(dict(copy.deepcopy(cfg.train_dataloader.dataset), type=kind))
        DATASETS.build(dict(copy.deepcopy(cfg.test_dataloader.dataset), type=kind))
        built = time.perf_counter() - start
        loader_cfg = dict(copy.deepcopy(cfg.train_dataloader), dataset=train, num_workers=workers,
                          persistent_workers=workers > 0)
        return Runner.build_dataloader(loader_cfg, seed=0), built


def measure(data_root: str, steps: int, loader_batches: int, workers: int) -> dict:
    import torch
    from mmengine.config import Config
    from mmengine.optim import OptimWrapper

    import ssps_nni.mmengine  # noqa: F401  (registrations)
    from ssps_nni.data_cache import cache_root
    from ssps_nni.mmengine.qat import build_model_from_cfg

    cfg = Config.fromfile(str(CONFIG))
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[split].dataset.data_root = data_root
    # the cache's first fill (decode + store), then warm builds in turns
    start = time.perf_counter()
    loaders(cfg, 'CIFAR10Cached', 0)
    first_fill = time.perf_counter() - start
    built = {k: [] for k in TYPES}
    made = {}
    for _ in range(2):
        for kind in TYPES:
            made[kind], seconds = loaders(cfg, kind, workers)
            built[kind].append(seconds)
    iters = {k: iter(made[k]) for k in TYPES}
    loader_s = {k: [] for k in TYPES}
    for _ in range(2):  # warm-up: worker start
        for kind in TYPES:
            next(iters[kind])
    for _ in range(loader_batches):
        for kind in TYPES:
            t = time.perf_counter()
            next(iters[kind])
            loader_s[kind].append(time.perf_counter() - t)
    model = build_model_from_cfg(cfg)
    model.train()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    step_s = {k: [] for k in TYPES}
    for i in range(steps + 2):
        for kind in TYPES:
            t = time.perf_counter()
            model.train_step(next(iters[kind]), optim_wrapper=wrapper)
            if i >= 2:
                step_s[kind].append(time.perf_counter() - t)
    per_epoch = len(made['CIFAR10Cached'])
    out = {'config': str(CONFIG.relative_to(REPO)), 'data_root': data_root, 'workers': workers,
           'batch_size': made['CIFAR10Cached'].batch_size, 'steps_per_epoch': per_epoch,
           'cache': str(cache_root() / 'datasets'), 'first_fill_s': first_fill, 'torch_threads': torch.get_num_threads()}
    for kind in TYPES:
        out[kind] = {'build_s': min(built[kind]), 'loader_batch_s': statistics.median(loader_s[kind]),
                     'step_s': statistics.median(step_s[kind])}
        out[kind]['epoch_s'] = out[kind]['build_s'] + per_epoch * out[kind]['step_s']
    folder, cached = out['CIFAR10Folder'], out['CIFAR10Cached']
    out['ratio_folder_over_cached'] = {k: folder[k] / cached[k] for k in ('build_s', 'loader_batch_s', 'step_s',
                                                                          'epoch_s')}
    return out


def main(argv=None) -> int:
    from ssps_nni.data import shared_data_root

    parser = argparse.ArgumentParser(prog='python -m ssps_nni.cli.benchmark.data_path',
                                     description=__doc__.split('\n', 1)[0])
    shared = shared_data_root()
    parser.add_argument('--data-root', default=str(shared / 'cifar10') if shared else None)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--loader-batches', type=int, default=100)
    parser.add_argument('--workers', type=int, default=0,
                        help='dataloader worker processes (default 0: the per-batch CPU cost in this process)')
    parser.add_argument('--out', default=str(REPO / 'work_dirs' / 'data_path.json'))
    args = parser.parse_args(argv)
    if not args.data_root or not (Path(args.data_root) / 'train').is_dir():
        parser.error(f'--data-root {args.data_root!r} has no train/ folder (the CIFAR-10 JPEG folders)')
    out = measure(str(Path(args.data_root).resolve()), args.steps, args.loader_batches, args.workers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + '\n')
    print(json.dumps(out, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
