"""Search a mixed-precision quantization policy with SSPS on an mmengine config (the main job).

    python tools/search.py                       # ResNet-20 on the shipped real CIFAR-10 subset
    python tools/search.py CONFIG [--budget bitops=W4A4] [--candidates 2,3,4,6,8]
        [--work-dir DIR] [--resume] [--seed N] [--load-from PTH] [--cfg-options KEY=VALUE ...]

Built on mmengine's ``Config`` and ``Runner`` like mmpretrain's ``tools/train.py``; the search
itself is the config's ``SSPSHook`` (added with defaults when the config has none). Inputs are
checked before the runner is built; bad input exits with status 2, one message, no traceback
and no ``policy.json``. At the end it prints the policy table, its cost, the target and the
reference costs (FP32, W8A8, all-minimum, all-maximum).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'
CANDIDATE_FORM = 'comma-separated integer bit-widths in 2..32, e.g. 2,3,4,6,8 (32 = not quantized)'


class InputError(Exception):
    """Bad command-line or config input; the message is shown as is."""


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    from ssps_nni.cost import BUDGET_FORMS

    parser = argparse.ArgumentParser(
        description='SSPS mixed-precision policy search on an mmengine config. With no CONFIG: '
                    'ResNet-20 on the shipped real CIFAR-10 subset (a few minutes on CPU).')
    parser.add_argument('config', nargs='?', default=str(DEFAULT_CONFIG),
                        help=f'config file (default: {DEFAULT_CONFIG.relative_to(ROOT)})')
    parser.add_argument('--budget', help=f'hardware budget(s), comma-separated; accepted forms: {BUDGET_FORMS}')
    parser.add_argument('--candidates', help=f'candidate bit-widths: {CANDIDATE_FORM}')
    parser.add_argument('--work-dir', help='output folder (default: work_dirs/<config name>)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the search from the latest checkpoint in the work dir')
    parser.add_argument('--seed', type=int, help='random seed of the run and of the path sampler')
    parser.add_argument('--load-from', help='full-precision (or SSPS) checkpoint to start from')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_epochs=2')
    return parser.parse_args(argv)


def parse_candidates(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise InputError(f'--candidates {text!r} is not a list of bit-widths; accepted: {CANDIDATE_FORM}') from None
    if not values:
        raise InputError(f'--candidates is empty; accepted: {CANDIDATE_FORM}')
    bad = [v for v in values if not 2 <= v <= 32]
    if bad:
        raise InputError(f'--candidates {text!r} has bit-width {bad[0]} outside 2..32; accepted: {CANDIDATE_FORM}')
    return values


def ssps_hook_cfg(cfg) -> dict:
    """The config's ``SSPSHook`` entry, appended with defaults when there is none."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    for hook in hooks:
        if hook.get('type') in ('SSPSHook', 'ssps_nni.mmengine.SSPSHook'):
            cfg.custom_hooks = hooks
            return hook
    hooks.append(dict(type='SSPSHook'))
    cfg.custom_hooks = hooks
    return hooks[-1]


def apply_args(cfg, args) -> None:
    """Put the command-line options into ``cfg`` (CLI > config)."""
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    custom_imports = cfg.get('custom_imports', None) or dict(imports=[], allow_failed_imports=False)
    if 'ssps_nni.mmengine' not in custom_imports.get('imports', []):
        custom_imports['imports'] = list(custom_imports.get('imports', [])) + ['ssps_nni.mmengine']
    cfg.custom_imports = custom_imports
    hook = ssps_hook_cfg(cfg)
    if args.budget is not None:
        hook['budget'] = args.budget
    if args.candidates is not None:
        hook['candidates'] = parse_candidates(args.candidates)
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness', None) or {}, seed=args.seed)
        hook['seed'] = args.seed
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.load_from is not None:
        cfg.load_from = args.load_from
    if args.resume:
        cfg.resume = True


def _dataset_paths(dataset) -> list[tuple[str, str]]:
    """``(key, path)`` of the local data a dataset config points at (wrappers included)."""
    if not isinstance(dataset, dict):
        return []
    found = []
    if dataset.get('data_root'):
        found.append(('data_root', str(dataset['data_root'])))
    elif isinstance(dataset.get('data_prefix'), str) and dataset['data_prefix']:
        found.append(('data_prefix', dataset['data_prefix']))
    if dataset.get('archive'):
        found.append(('archive', str(dataset['archive'])))
    for key in ('dataset', 'datasets'):
        inner = dataset.get(key)
        for sub in inner if isinstance(inner, (list, tuple)) else [inner]:
            found += _dataset_paths(sub)
    return found


def validate(cfg) -> None:
    """Check the SSPS options, data paths and ``load_from`` before building the runner.

    Raises:
        InputError: with a one-paragraph message naming what is accepted.
    """
    from ssps_nni.errors import SSPSError
    from ssps_nni.mmengine import SSPSHook

    options = {k: v for k, v in ssps_hook_cfg(cfg).items() if k not in ('type', 'priority')}
    try:
        SSPSHook(**options)
    except (SSPSError, ValueError, TypeError) as err:
        raise InputError(f'invalid SSPS option: {err}') from None
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split, None)
        for key, path in _dataset_paths(loader.get('dataset') if isinstance(loader, dict) else None):
            if not osp.exists(path):
                raise InputError(
                    f'{split}.dataset.{key} = {path!r} does not exist (relative to {os.getcwd()}). '
                    f'Set it to your local copy with --cfg-options {split}.dataset.{key}=PATH, or run '
                    'tools/search.py with no CONFIG to use the shipped CIFAR-10 subset. '
                    'No data is downloaded: there is no network.')
    load_from = cfg.get('load_from', None)
    if load_from and not osp.isfile(load_from):
        raise InputError(
            f'load_from = {load_from!r} is not a local file. Give the path of a full-precision '
            'checkpoint of this model (--load-from PTH), or none to search from the initial weights; '
            'URLs are not fetched (no network).')


def print_result(work_dir: str) -> None:
    """The policy table, its cost vs the target and the reference costs."""
    from ssps_nni.mmengine.report import cost_lines
    from ssps_nni.policy import load_policy

    path = Path(work_dir) / 'policy.json'
    policy = load_policy(path)
    print('\n' + policy.table())
    print()
    for line in cost_lines(policy):
        print(line)
    print(f'policy: {path}  figure: {path.with_suffix(".png")}')


def build_config(args):
    """The resolved config of this run (CLI > config), before :func:`validate`.

    Raises:
        InputError: the config file does not exist.
    """
    from mmengine.config import Config

    if not osp.isfile(args.config):
        raise InputError(f'config file {args.config!r} does not exist; give a path to an mmengine '
                         f'config, or none for {DEFAULT_CONFIG.relative_to(ROOT)}')
    cfg = Config.fromfile(args.config)
    apply_args(cfg, args)
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.runner import Runner

    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.errors import SSPSError

    try:
        cfg = build_config(args)
        validate(cfg)
        if args.resume and cfg.get('load_from') is None and not osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')):
            raise InputError(f'--resume found no checkpoint of an earlier search in {cfg.work_dir} '
                             '(no last_checkpoint file); give the --work-dir of the interrupted run, '
                             'or leave out --resume to start a new search')
        runner = Runner.from_cfg(cfg)
        runner.train()
    except (InputError, SSPSError) as err:
        print(f'search.py: error: {err}', file=sys.stderr)
        return 2
    print_result(cfg.work_dir)
    return 0


if __name__ == '__main__':
    sys.exit(main())
