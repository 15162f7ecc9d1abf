"""``ssps search``'s command line: its options, their cheap checks, and the run's mmengine config.

Only the standard library is imported until :func:`build_config` (which imports mmengine's
``Config``): ``--help`` and malformed options answer at once. The budget and the candidates'
range are checked by the typed config (:func:`ssps_nni.cli.hook_config.search_config`).
"""
from __future__ import annotations

import argparse

from .common import (CANDIDATE_FORM, DEFAULT_CONFIG_NAME, InputError, add_budget, add_candidates, add_cfg_options,
                     add_config, add_device_amp, add_load_from, add_seed, add_ssps_imports, add_work_dir, apply_amp,
                     check_data_paths, check_load_from, check_output_dir, config_path, default_work_dir,
                     merge_cfg_options, select_device, work_dir_room)
from .hook_config import ssps_hook_cfg
from .methods import add_score_options, check_score_options
from .train_loop import use_stopping_loop

PROG = 'ssps search'
METHODS = ('ssps', 'sensitivity', 'random')
DEFAULT_SENSITIVITY_BATCHES = 128


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The command line; argparse exits with status 2 on a malformed one."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='SSPS mixed-precision policy search on an mmengine config. With no CONFIG: '
                    f'ResNet-20 on the shipped real CIFAR-10 subset ({DEFAULT_CONFIG_NAME}, a few minutes on CPU).')
    add_config(parser)
    add_budget(parser)
    add_candidates(parser)
    add_work_dir(parser, 'work_dirs/<config name>')
    parser.add_argument('--resume', action='store_true',
                        help='continue the search from the latest checkpoint in the work dir')
    add_seed(parser, 'the run and of the path sampler')
    add_load_from(parser, 'full-precision or SSPS')
    add_cfg_options(parser)
    add_device_amp(parser)  # --device, --amp (common.py)
    parser.add_argument('--lut', metavar='FILE',
                        help='JSON look-up table of a lut budget (--budget lut=VALUE); sets the SSPSHook\'s '
                             'cost_options.lut.path')
    parser.add_argument('--method', choices=METHODS, default='ssps',
                        help='ssps: the SSPS search (default); sensitivity: per-layer sensitivity on '
                             'training batches, no training; random: a random policy within the budget')
    parser.add_argument('--sensitivity-batches', type=int, metavar='N',
                        help=f'training batches the sensitivity method measures on (default '
                             f'{DEFAULT_SENSITIVITY_BATCHES}; --method sensitivity only)')
    add_score_options(parser)
    return parser.parse_args(argv)


def check_args(args) -> None:
    """The checks that need no import: ``--method`` and its options, the form of ``--candidates``.
    Fills the ``--sensitivity-batches`` default. The budget and the candidates' range are the
    typed config's (:func:`ssps_nni.cli.hook_config.search_config`; docs/algorithm.md §1, §4).

    Raises:
        InputError: ``--sensitivity-batches`` below 1 or without ``--method sensitivity``;
            ``--resume`` with a method that has no search to resume; candidates that are no
            list of integers.
    """
    if args.sensitivity_batches is not None:
        if args.method != 'sensitivity':
            raise InputError(f'--sensitivity-batches is used only by --method sensitivity '
                             f'(this run: --method {args.method})')
        if args.sensitivity_batches < 1:
            raise InputError(f'--sensitivity-batches must be >= 1 (training batches to measure on), '
                             f'got {args.sensitivity_batches}')
    elif args.method == 'sensitivity':
        args.sensitivity_batches = DEFAULT_SENSITIVITY_BATCHES
    check_score_options(args)
    if args.resume and args.method != 'ssps':
        raise InputError(f'--resume continues an interrupted SSPS search; --method {args.method} does not '
                         'train and has nothing to resume (leave out --resume)')
    if args.candidates is not None:
        split_candidates(args.candidates)


def split_candidates(text: str) -> tuple[int, ...]:
    """``'2,4,8'`` -> ``(2, 4, 8)``: the form only; the typed config checks their range.

    Raises:
        InputError: an entry that is not an integer.
    """
    try:
        return tuple(int(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise InputError(f'--candidates {text!r} is not a list of bit-widths; accepted: {CANDIDATE_FORM}') from None


def apply_args(cfg, args) -> None:
    """Put the command-line options into ``cfg`` (CLI > config)."""
    if args.cfg_options:
        merge_cfg_options(cfg, args.cfg_options)
    apply_amp(cfg, args)
    add_ssps_imports(cfg)
    use_stopping_loop(cfg)  # the search ends right after its last decision, not at the epoch's end
    hook = ssps_hook_cfg(cfg)
    if args.budget is not None:
        hook['budget'] = args.budget
    if args.candidates is not None:
        hook['candidates'] = split_candidates(args.candidates)
    if getattr(args, 'lut', None) is not None and isinstance(hook.get('cost_options', None) or {}, dict):
        # (cost_options of another type is left for the typed config to refuse, with the form)
        options = dict(hook.get('cost_options', None) or {})
        hook['cost_options'] = dict(options, lut=dict(options.get('lut', None) or {}, path=args.lut))
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness', None) or {}, seed=args.seed)
        hook['seed'] = args.seed
    cfg.work_dir = args.work_dir if args.work_dir is not None else default_work_dir(cfg, args.config)
    if args.load_from is not None:
        cfg.load_from = args.load_from
    if args.resume:
        cfg.resume = True
        if args.load_from is None:
            # the config's start weights are not where a search continues: mmengine resumes from
            # load_from when it is set, so clear it to resume from the work dir's latest checkpoint
            cfg.load_from = None


def build_config(args):
    """The resolved config of this run (CLI > config), before its checks (``ssps_nni.cli.search``).

    ``args.config`` None becomes the default run's config (``mmdet_configs/`` of the repository).
    The config's ``custom_imports`` are not imported yet (that loads the training stack):
    :func:`ssps_nni.cli.hook_config.import_custom` does it once the cheap checks have passed.

    Raises:
        InputError: the config file does not exist.
    """
    select_device(args)  # before anything initialises CUDA
    from mmengine.config import Config

    args.config = config_path(args.config)
    cfg = Config.fromfile(args.config, import_custom_modules=False)
    apply_args(cfg, args)
    return cfg


def check_inputs(cfg) -> None:
    """The work dir can be written, the data paths and ``load_from`` exist (no training stack imported).

    Raises:
        InputError: a work dir that cannot be written (not a folder, no permission, no space),
            the first missing path, or a ``load_from`` that is no checkpoint.
    """
    check_output_dir(cfg.work_dir, 'work dir', work_dir_room(cfg.get('load_from', None)))
    check_data_paths(cfg)
    check_load_from(cfg.get('load_from', None),
                    'Give the path of a full-precision checkpoint of this model (--load-from PTH), or '
                    '--cfg-options load_from=None to search from the initial weights.')
