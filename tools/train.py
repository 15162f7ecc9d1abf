"""Retrain a searched policy (quantization-aware training) on an mmengine config, then evaluate.

    python tools/train.py CONFIG --policy work_dirs/search/policy.json [--load-from FP.pth]
    python tools/train.py CONFIG --uniform W4A4      # a uniform baseline, same schedule
    python tools/train.py CONFIG                     # FP32 (e.g. to train the starting checkpoint)
        [--work-dir DIR] [--seed N] [--cfg-options KEY=VALUE ...]

The config is the search's own (``mmdet_configs/*_ssps*.py``): its ``SSPSHook`` is removed and,
with ``--policy`` or ``--uniform``, a ``QuantPolicyHook`` takes its place (the search's layer
selection and calibration options carried over), so the three modes share one schedule.
Afterwards mmengine's test loop (the val loop if the config has none) evaluates the final model;
the metrics, BitOPs and size are printed and written to ``WORK_DIR/train_result.json``.
Bad input (an unreadable or non-JSON policy, a policy that does not match the model, a
malformed ``--uniform``, a missing ``--load-from`` or data folder) exits with status 2 and one
``train.py: error:`` line before anything is trained.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os.path as osp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'
RESULT_JSON = 'train_result.json'
HOOK_TYPES = ('QuantPolicyHook', 'ssps_nni.mmengine.QuantPolicyHook')
SSPS_TYPES = ('SSPSHook', 'ssps_nni.mmengine.SSPSHook')
#: SSPSHook options that QuantPolicyHook shares (which layers; calibration).
SHARED_OPTIONS = ('include', 'exclude', 'pinned', 'pinned_bits', 'calib_batches', 'calib_batch_size', 'seed')


class InputError(Exception):
    """Bad command-line or config input; the message is shown as is."""


def _search_tool():
    """``tools/search.py`` as a module (its config checks are shared)."""
    module = sys.modules.get('ssps_search_tool')
    if module is None:
        spec = importlib.util.spec_from_file_location('ssps_search_tool', ROOT / 'tools' / 'search.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules['ssps_search_tool'] = module
    return module


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Quantization-aware retraining of an SSPS policy (or a uniform WxAy baseline, or FP32) '
                    'on an mmengine config, then evaluation.')
    parser.add_argument('config', nargs='?', default=str(DEFAULT_CONFIG),
                        help=f'config file (default: {DEFAULT_CONFIG.relative_to(ROOT)})')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--policy', help='policy.json written by tools/search.py')
    mode.add_argument('--uniform', metavar='WxAy',
                      help='every searched layer at x-bit weights, y-bit inputs (pinned layers at their bits)')
    parser.add_argument('--load-from', help='checkpoint to start from (full-precision, search or QAT)')
    parser.add_argument('--work-dir', help='output folder (default: work_dirs/<config name>_qat)')
    parser.add_argument('--seed', type=int, help='random seed of the run and of the calibration samples')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    return parser.parse_args(argv)


def quant_hook_cfg(cfg, args) -> dict | None:
    """Replace the config's ``SSPSHook`` by a ``QuantPolicyHook`` (None: FP32, no hook)."""
    hooks, shared = [], {}
    for hook in cfg.get('custom_hooks', None) or []:
        if hook.get('type') in SSPS_TYPES:
            shared = {k: hook[k] for k in SHARED_OPTIONS if k in hook}
        elif hook.get('type') not in HOOK_TYPES:
            hooks.append(hook)
    quant = None
    if args.policy is not None or args.uniform is not None:
        quant = dict(type='QuantPolicyHook', **shared)
        if args.policy is not None:
            quant['policy'] = args.policy
        else:
            quant['uniform'] = args.uniform
        if args.seed is not None:
            quant['seed'] = args.seed
        hooks.insert(0, quant)
    cfg.custom_hooks = hooks
    return quant


def build_config(args):
    """The resolved config of this run (CLI > config): ``SSPSHook`` swapped, paths, seed."""
    from mmengine.config import Config

    if not osp.isfile(args.config):
        raise InputError(f'config file {args.config!r} does not exist; give a path to an mmengine config, '
                         f'or none for {DEFAULT_CONFIG.relative_to(ROOT)}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    custom_imports = cfg.get('custom_imports', None) or dict(imports=[], allow_failed_imports=False)
    if 'ssps_nni.mmengine' not in custom_imports.get('imports', []):
        custom_imports['imports'] = list(custom_imports.get('imports', [])) + ['ssps_nni.mmengine']
    cfg.custom_imports = custom_imports
    quant_hook_cfg(cfg, args)
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness', None) or {}, seed=args.seed)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0] + '_qat')
    if args.load_from is not None:
        cfg.load_from = args.load_from
    return cfg


def validate(cfg) -> None:
    """Check ``load_from``, data paths, the quantization options and the policy against the model.

    Raises:
        InputError, SSPSError: one-line messages; the policy's names the first mismatching layer.
    """
    from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg

    load_from = cfg.get('load_from', None)
    if load_from and not osp.isfile(load_from):
        raise InputError(f'load_from = {load_from!r} is not a local file; give the path of a checkpoint '
                         '(full-precision, search or QAT) of this model, or none (no network: URLs are not fetched)')
    if load_from:
        from ssps_nni.checkpoint import checkpoint_problem

        problem = checkpoint_problem(load_from)
        if problem:
            raise InputError(f'load_from: {problem}; give a checkpoint to start from (--load-from PTH)')
    search_tool = _search_tool()
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split, None)
        for key, path in search_tool._dataset_paths(loader.get('dataset') if isinstance(loader, dict) else None):
            if not osp.exists(path):
                raise InputError(f'{split}.dataset.{key} = {path!r} does not exist; set it to your local copy '
                                 f'with --cfg-options {split}.dataset.{key}=PATH (no data is downloaded)')
    for hook in cfg.custom_hooks:
        if hook.get('type') in HOOK_TYPES:
            options = {k: v for k, v in hook.items() if k not in ('type', 'priority')}
            try:
                quant = QuantPolicyHook(**options)
            except TypeError as err:
                raise InputError(f'invalid QuantPolicyHook option: {err}') from None
            quant.resolve(build_model_from_cfg(cfg))  # PolicyError names the first mismatching layer


def evaluate(runner, cfg) -> dict:
    """mmengine's test loop (val loop if the config has no test loop) on the final model."""
    has_test = all(cfg.get(k, None) is not None for k in ('test_dataloader', 'test_cfg', 'test_evaluator'))
    metrics = runner.test() if has_test else runner.val()
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def result(runner, cfg, args, metrics: dict) -> dict:
    """Metrics next to the BitOPs and size of the trained model; the ``train_result.json`` content."""
    from mmengine.model import is_model_wrapper

    from ssps_nni.mmengine.calibration import calibration_loader, forward_fn
    from ssps_nni.mmengine.qat import QAT_POLICY_JSON, model_costs

    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    loader = calibration_loader(runner.train_dataloader, 1, seed=args.seed or 0)
    costs = model_costs(model, *forward_fn(model, loader))
    work_dir = Path(cfg.work_dir)
    last = work_dir / 'last_checkpoint'
    mode = 'policy' if args.policy else 'uniform' if args.uniform else 'fp32'
    return {
        'mode': mode, 'policy': args.policy, 'uniform': args.uniform, 'config': args.config,
        'load_from': cfg.get('load_from', None), 'metrics': metrics,
        'bitops': costs['bitops'], 'size': costs['size'],
        'checkpoint': last.read_text().strip() if last.is_file() else None,
        'qat_policy': str(work_dir / QAT_POLICY_JSON) if mode != 'fp32' else None,
    }


def summary(res: dict) -> str:
    what = {'policy': f'policy {res["policy"]}', 'uniform': f'uniform {res["uniform"]}', 'fp32': 'FP32'}[res['mode']]
    metrics = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in res['metrics'].items())
    b, s = res['bitops'], res['size']
    return (f'{what}: {metrics} | bitops {b["text"]} (FP32 {b["fp32_text"]}) | size {s["text"]} '
            f'(FP32 {s["fp32_text"]})')


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.errors import SSPSError
    from ssps_nni.policy import atomic_write

    try:
        cfg = build_config(args)
        validate(cfg)
        runner = Runner.from_cfg(cfg)
        runner.train()
        metrics = evaluate(runner, cfg)
    except (InputError, SSPSError) as err:
        print(f'train.py: error: {err}', file=sys.stderr)
        return 2
    res = result(runner, cfg, args, metrics)
    if is_main_process():
        path = atomic_write(Path(cfg.work_dir) / RESULT_JSON, json.dumps(res, indent=2) + '\n')
        print(summary(res))
        print(f'result: {path}  checkpoint: {res["checkpoint"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
