"""One rank of a CPU data-parallel SSPS search; launched by test_distributed.py via torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/mmengine/dist_search.py \
        CONFIG WORK_DIR OUT_DIR [--cfg-options k=v ...]

mmengine's own launch path assumes CUDA: ``init_dist('pytorch')`` calls
``torch.cuda.set_device`` and the default DDP wrapper passes ``device_ids``. So this script
initialises a gloo process group itself (the runner then skips ``init_dist``) and wraps with a
DDP subclass that drops ``device_ids``. Everything else is the ordinary runner and hook.

Rank r runs in ``WORK_DIR/rank<r>`` (so the test can see which rank wrote what) and writes
``OUT_DIR/rank<r>.json``: after every training iteration the decided labels with
their bits and decision step, plus a digest of the logits; at the end the full logits. Nothing
else is written outside ``WORK_DIR/rank<r>``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def find_search(hook):
    """The ``SSPSSearch`` the hook owns (found by type, not by attribute name)."""
    from ssps_nni.search import SSPSSearch

    for value in vars(hook).values():
        if isinstance(value, SSPSSearch):
            return value
    raise AttributeError(f'{type(hook).__name__} holds no SSPSSearch; attributes: {sorted(vars(hook))}')


def snapshot(search) -> dict:
    logits = [p.detach().double().cpu() for p in search.space.sampler.parameters()]
    digest = hashlib.sha256(b''.join(t.numpy().tobytes() for t in logits)).hexdigest()
    decided = {label: {'bits': info.get('bits'), 'step': info.get('step')}
               for label, info in sorted(search.decider.decided.items())}
    return {'decided': decided, 'logits_sha256': digest, 'logits': [t.tolist() for t in logits]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    parser.add_argument('work_dir')
    parser.add_argument('out_dir')
    parser.add_argument('--cfg-options', nargs='+', default=[])
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    rank = dist.get_rank()

    from mmengine.config import Config, DictAction  # noqa: F401 (DictAction: same parsing as tools)
    from mmengine.hooks import Hook
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS
    from mmengine.runner import Runner

    @MODEL_WRAPPERS.register_module(force=True)
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """DDP on CPU: gloo refuses ``device_ids``."""

        def __init__(self, module, device_ids=None, **kwargs):
            super().__init__(module=module, device_ids=None, **kwargs)

    class DecisionRecorder(Hook):
        priority = 'LOWEST'  # after SSPSHook's after_train_iter (it decides there)

        def __init__(self):
            self.hook = None
            self.per_iter = []

        def before_train(self, runner):
            self.hook = next(h for h in runner.hooks if type(h).__name__ == 'SSPSHook')

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            snap = snapshot(find_search(self.hook))
            snap.pop('logits')
            self.per_iter.append({'iter': runner.iter + 1, **snap})

    options = {}
    for item in args.cfg_options:
        key, value = item.split('=', 1)
        options[key] = json.loads(value) if value[:1] in '[{0123456789-' or value in ('true', 'false', 'null') else value
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(options)
    # One work_dir per rank, so that a file written by rank 1 is told apart from rank 0's.
    cfg.work_dir = os.path.join(args.work_dir, f'rank{rank}')
    cfg.launcher = 'pytorch'
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel', broadcast_buffers=False,
                                 find_unused_parameters=False)
    cfg.experiment_name = 'dist_search'
    runner = Runner.from_cfg(cfg)
    recorder = DecisionRecorder()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()

    search = find_search(recorder.hook)
    inner = runner.model.module if hasattr(runner.model, 'module') else runner.model
    reduced = [n for n, _ in inner.named_parameters()]
    result = {
        'rank': rank,
        'world_size': dist.get_world_size(),
        'wrapper': type(runner.model).__name__,
        'per_iter': recorder.per_iter,
        'final': snapshot(search),
        'num_model_params': len(reduced),
        'params_sha256': hashlib.sha256(b''.join(
            p.detach().cpu().double().numpy().tobytes() for p in inner.parameters())).hexdigest(),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f'rank{rank}.json').write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
