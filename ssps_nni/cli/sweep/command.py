"""``ssps sweep``'s command line: options, their checks (exit 2 before any run) and the run itself."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from ..common import REPO, InputError, add_config, add_load_from, check_output_dir, fail, select_device

PROG = 'ssps sweep'
METHODS = ('ssps', 'sensitivity', 'random')
#: ``--standard``: the standard frontier (full CIFAR-10, the shipped FP32 ResNet-20).
STANDARD = dict(config='mmdet_configs/cifar10_resnet20_ssps_folder.py', budgets='2.25b,2.5b,3b,3.5b,4b,size=2.5b',
                methods='ssps,sensitivity,random', seeds=3, retrain_epochs=1, search_epochs=1,
                sensitivity_batches=128, work_dir='work_dirs/sweep_standard')
#: Defaults without ``--standard`` (the shipped subset: a first look in minutes with --retrain-epochs 0).
QUICK = dict(budgets='2.5b,3b,4b', methods='ssps,sensitivity,random', seeds=2, retrain_epochs=1,
             search_epochs=1, sensitivity_batches=32)


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The command line; argparse exits with status 2 on a malformed one."""
    doc = sys.modules[__package__].__doc__
    parser = argparse.ArgumentParser(prog=prog, description=doc.split('\n', 1)[0],
                                     epilog=doc.split('\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config(parser)
    parser.add_argument('--standard', action='store_true',
                        help=f'the standard frontier: {STANDARD["config"]} on the full CIFAR-10 (--data-root), budgets '
                             f'{STANDARD["budgets"]}, methods {STANDARD["methods"]}, {STANDARD["seeds"]} seeds, '
                             f'1-epoch retraining; any option given explicitly wins')
    parser.add_argument('--budgets', help=f'comma-separated budgets (default {QUICK["budgets"]}); each '
                                          '[COST=]VALUE: 2.5b (bits per operand; per weight for size), WxAy, 1.2G, '
                                          'size=0.05MB')
    parser.add_argument('--budget-range', metavar='[COST=]FROM:TO:N',
                        help='N budgets evenly spaced in cost from FROM to TO (a VALUE, min = all-minimum cost, '
                             'max = all-maximum), e.g. min:W4A4:5')
    parser.add_argument('--methods', help=f'comma-separated, of {", ".join(METHODS)} (default: all three)')
    parser.add_argument('--seeds', type=int, metavar='N',
                        help=f'paired retraining seeds 0..N-1 (default {QUICK["seeds"]})')
    parser.add_argument('--retrain-epochs', type=int, metavar='E',
                        help='QAT epochs of every retraining (default 1; 0: the metric after calibration only, '
                             'post-training)')
    parser.add_argument('--search-epochs', type=int, metavar='E', help='epochs of each SSPS search (default 1)')
    parser.add_argument('--retrain-lr', type=float, default=0.01, help='learning rate of the retrainings (0.01)')
    parser.add_argument('--search-lr', type=float, default=0.01, help='learning rate of the searches (0.01)')
    parser.add_argument('--search-per-seed', action='store_true',
                        help='search ssps and random policies again at every seed (the policy of seed r found '
                             'with seed r); default: one policy per method and budget, found with seed 0')
    parser.add_argument('--sensitivity-batches', type=int, metavar='N',
                        help='training batches of the sensitivity scores, measured once (default 32; '
                             '128 with --standard)')
    parser.add_argument('--candidates', help='candidate bit-widths of the searches and the uniform points '
                                             "(default: the config's SSPSHook candidates)")
    add_load_from(parser, "FP32 start of every run (default: the config's load_from)")
    parser.add_argument('--data-root', help="dataset folder set as every dataloader's data_root (e.g. the "
                                            'CIFAR-10 folder with train/ and test/)')
    parser.add_argument('--metric', help='metric of the frontier (default accuracy/top1, else coco/bbox_mAP, ...)')
    parser.add_argument('--jobs', type=int, default=1, metavar='N',
                        help='runs at once, in worker processes (default 1: in this process)')
    parser.add_argument('--device', help='passed to every ssps train and ssps search as --device (cuda '
                                         'without a GPU is refused before any run)')
    parser.add_argument('--train-args', default='', metavar='"ARGS"', help='more options for every ssps train')
    parser.add_argument('--search-args', default='', metavar='"ARGS"', help='more options for every ssps search')
    parser.add_argument('--work-dir', help='output folder (default work_dirs/sweep_<config name>)')
    parser.add_argument('--dry-run', action='store_true',
                        help='check everything, print the planned runs (and which are finished), run nothing')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries of every run, e.g. train_dataloader.batch_size=64')
    return parser.parse_args(argv)


#: Options of ssps train / ssps search that the sweep sets per run (refused in --train-args /
#: --search-args), with the sweep's option that sets them (None: the plan does).
OWN = {'config': 'CONFIG', 'work_dir': '--work-dir', 'seed': '--seeds', 'load_from': '--load-from',
       'cfg_options': '--cfg-options', 'resume': None, 'policy': None, 'uniform': None, 'budget': '--budgets',
       'method': '--methods', 'candidates': '--candidates', 'sensitivity_batches': '--sensitivity-batches'}


def check_passed(module, extra: list[str], option: str) -> None:
    """``--train-args`` / ``--search-args`` as ``ssps train`` / ``ssps search`` (``module``) parse them.

    Raises:
        InputError: the command refuses them (its argparse error, e.g. an unknown option), they ask
            for its help, or they set an option that the sweep sets for every run (``OWN``).
    """
    import contextlib
    import io

    command = module.PROG
    err = io.StringIO()
    try:  # a placeholder config: only parsed, and a positional in ``extra`` is not taken for it
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            given = module.parse_args(['CONFIG.py', *extra])
    except SystemExit as exit_:
        lines = err.getvalue().strip().splitlines()
        why = (lines[-1].split(': error: ', 1)[-1] if exit_.code and lines
               else 'it prints its help or version and exits; give options of a run')
        raise InputError(f'{option} {shlex.join(extra)!r}: {command} refused it: {why}') from None
    plain = module.parse_args(['CONFIG.py'])
    for dest, sweep_option in OWN.items():
        if getattr(given, dest, None) != getattr(plain, dest, None):
            flag = 'a CONFIG' if dest == 'config' else '--' + dest.replace('_', '-')
            instead = f"give the sweep's {sweep_option} instead" if sweep_option else 'leave it out'
            raise InputError(f'{option} {shlex.join(extra)!r} sets {flag}, which ssps sweep sets for every run of '
                             f'{command} ({instead})')


def split_args(text: str, what: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:
        raise InputError(f'{what} {text!r} cannot be split into options ({err})') from None


def check_numbers(args) -> None:
    """Cheap checks of the numeric options (no import)."""
    for name, value, low in (('--seeds', args.seeds, 1), ('--retrain-epochs', args.retrain_epochs, 0),
                             ('--search-epochs', args.search_epochs, 1), ('--jobs', args.jobs, 1),
                             ('--sensitivity-batches', args.sensitivity_batches, 1)):
        if value is not None and value < low:
            raise InputError(f'{name} must be >= {low}, got {value}')
    for name, value in (('--retrain-lr', args.retrain_lr), ('--search-lr', args.search_lr)):
        if not value > 0:
            raise InputError(f'{name} must be > 0, got {value}')


def methods_of(text: str) -> list[str]:
    items = [m.strip() for m in text.split(',') if m.strip()]
    if not items:
        raise InputError(f'--methods {text!r} is empty; give some of {", ".join(METHODS)}')
    bad = [m for m in items if m not in METHODS]
    if bad:
        raise InputError(f'unknown method {bad[0]!r} in --methods; accepted: {", ".join(METHODS)}')
    return list(dict.fromkeys(items))


def resolve(args) -> dict:
    """Every setting of the sweep, checked; raises ``InputError`` (one line) before any run."""
    from . import budgets as B

    check_numbers(args)
    preset = STANDARD if args.standard else QUICK
    methods = methods_of(args.methods if args.methods is not None else preset['methods'])
    items = B.parse_list(args.budgets if args.budgets is not None
                         else (None if args.budget_range and not args.standard else preset['budgets']))
    rng = B.parse_range(args.budget_range)
    train_args = split_args(args.train_args, '--train-args')
    search_args = split_args(args.search_args, '--search-args')
    config = args.config or (str(REPO / STANDARD['config']) if args.standard else None)
    data_root = args.data_root
    if args.standard and data_root is None:
        from ssps_nni.data import shared_data_root
        shared = shared_data_root()
        data_root = str(shared / 'cifar10') if shared else None
        if data_root is None or not Path(data_root).is_dir():
            raise InputError('--standard trains on the full CIFAR-10 JPEG folders: give --data-root PATH (the '
                             'folder with train/ and test/, as ../shared/data/cifar10)')
    if data_root is not None:
        if not Path(data_root).is_dir():
            raise InputError(f'--data-root {data_root!r} is not a folder')
        data_root = str(Path(data_root).resolve())
    # the typed config of the searches: checks the config, candidates and paths like ssps search
    from .. import search as search_cli
    from .. import train as train_cli
    from .profile import profile_costs

    check_passed(train_cli, train_args, '--train-args')  # refused here, not by every run
    check_passed(search_cli, search_args, '--search-args')
    if args.device is not None:
        select_device(args)  # --device cuda without a GPU: refused here, not by every run
        train_args += ['--device', args.device]
        search_args += ['--device', args.device]
    if args.candidates is not None:
        search_args += ['--candidates', args.candidates]
    cfg_options = list(args.cfg_options)
    bad = [o for o in cfg_options if '=' not in o]
    if bad:
        raise InputError(f'--cfg-options {bad[0]!r} is not KEY=VALUE')
    data_options = [f'{s}.dataset.data_root={data_root}' for s in ('train_dataloader', 'val_dataloader',
                                                                    'test_dataloader')] if data_root else []
    argv = [*([config] if config else []), *(['--candidates', args.candidates] if args.candidates else []),
            *(['--load-from', args.load_from] if args.load_from else [])]
    if cfg_options or data_options:
        argv += ['--cfg-options', *data_options, *cfg_options]
    sargs = search_cli.parse_args(argv)
    search_cli.check_args(sargs)
    cfg = search_cli.build_config(sargs)
    config_obj = search_cli.search_config(cfg)
    search_cli.check_inputs(cfg)
    load_from = cfg.get('load_from', None)
    if not load_from:
        raise InputError('a sweep retrains every policy from one start: the config sets no load_from; give '
                         '--load-from PTH (a full-precision checkpoint of this model)')
    costs, test_samples = profile_costs(cfg, config_obj)
    budgets = B.resolve(items, rng, costs)
    from ..benchmark.budgets import file_sha1

    name = Path(sargs.config).stem
    work_dir = Path(args.work_dir or (STANDARD['work_dir'] if args.standard and not args.config
                                      else f'work_dirs/sweep_{name}')).absolute()
    check_output_dir(work_dir, '--work-dir')  # not a folder, no permission, no space: refused before any run
    return {
        'config': str(Path(sargs.config).resolve()), 'config_sha1': file_sha1(sargs.config), 'data_root': data_root,
        'load_from': str(Path(load_from).resolve()), 'load_sha1': file_sha1(load_from),
        'cfg_options': cfg_options, 'train_args': train_args, 'search_args': search_args,
        'methods': methods, 'seeds': list(range(args.seeds or preset['seeds'])),
        'retrain': {'epochs': args.retrain_epochs if args.retrain_epochs is not None else preset['retrain_epochs'],
                    'lr': args.retrain_lr},
        'search': {'epochs': args.search_epochs or preset['search_epochs'], 'lr': args.search_lr},
        'search_per_seed': bool(args.search_per_seed),
        'sensitivity_batches': args.sensitivity_batches or preset['sensitivity_batches'],
        'candidates': {'w': list(config_obj.candidates), 'a': list(config_obj.activation_candidates)},
        'budgets': budgets, 'uniform': B.uniform_pairs(budgets, costs), 'metric': args.metric,
        'cost_references': {c: sc.references() for c, sc in costs.items()}, 'test_samples': test_samples,
        'work_dir': str(work_dir),
        'jobs': args.jobs, 'costs': costs,
    }


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps sweep``; returns 0 (done), 1 (some runs failed), 2 (bad input), 130 / 143 (stopped by
    SIGINT / SIGTERM: the finished runs kept, one line saying how to resume; ``signals``)."""
    args = parse_args(argv, prog)
    started = time.perf_counter()
    cwd = os.getcwd()
    try:
        for key in ('config', 'data_root', 'load_from', 'work_dir'):  # given from here, used from the repository
            if getattr(args, key):
                setattr(args, key, os.path.abspath(getattr(args, key)))
        os.chdir(REPO)  # the configs' relative paths (../shared/data, ...)
        try:
            s = resolve(args)
        except InputError as err:
            return fail(prog, err)
        from .run import plan_summary, sweep

        if args.dry_run:
            print(plan_summary(s))
            return 0
        s['command'] = f'{prog} ' + ' '.join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        return sweep(s, prog, started)
    except InputError as err:
        return fail(prog, err)
    except KeyboardInterrupt:  # Ctrl-C while checking the options (sweep() handles its own)
        print(f'{prog}: interrupted before any run started', file=sys.stderr)
        return 130
    finally:
        os.chdir(cwd)


__all__ = ['main', 'parse_args', 'resolve', 'PROG', 'METHODS', 'STANDARD', 'QUICK']
