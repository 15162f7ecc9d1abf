"""``ssps train``: retrain a searched policy (quantization-aware training) on an mmengine config, then evaluate.

    ssps train CONFIG --policy work_dirs/search [--load-from PTH]   # continues from the search
    ssps train CONFIG --uniform W4A4      # a uniform baseline, same schedule
    ssps train CONFIG                     # FP32 (e.g. to train the starting checkpoint)
        [--work-dir DIR] [--resume] [--seed N] [--cfg-options KEY=VALUE ...] [--device cpu|cuda] [--amp none|bf16|fp16]

The config is the search's own (``mmdet_configs/*_ssps*.py``): its ``SSPSHook`` is removed and,
with ``--policy`` or ``--uniform``, a ``QuantPolicyHook`` takes its place (the search's layer
selection and calibration options carried over), so the three modes share one schedule.
A policy in a search's work dir (``--policy WORK_DIR`` or ``WORK_DIR/policy.json``) is retrained
from that search's last checkpoint, its weights and the step sizes it trained for the chosen
bits, unless ``--load-from`` (or ``load_from`` in ``--cfg-options``) names another start
(:mod:`ssps_nni.cli.search_start`). Afterwards mmengine's test loop (the val loop if the config has none) evaluates the final model;
the metrics, BitOPs and size are printed and written to ``WORK_DIR/train_result.json``.
Bad input (an unreadable or non-JSON policy, a policy that does not match the model, a
malformed ``--uniform``, a missing ``--load-from`` or data folder) exits with status 2 and one
``ssps train: error:`` line before anything is trained.

A search's interim snapshot (``policy.partial.json``, ``"final": false``: the search was
interrupted) is refused the same way, naming how far its search got and its cost against the
budget; ``--allow-partial`` trains it anyway (its open decisions at their most probable bits)
with that as a warning (:func:`ssps_nni.policy.require_final`).

Ctrl-C (SIGINT) or SIGTERM (a scheduler's pre-emption): the current iteration finishes, a
checkpoint of it is saved, one line names the iteration reached and how to resume, exit status
130 / 143 (:class:`ssps_nni.cli.stop.GracefulStop`). ``--resume`` (the same command and
``--work-dir``) continues from the work dir's last checkpoint, not from the search's; a work dir
with no whole checkpoint, or with a search's, is refused (:mod:`ssps_nni.cli.train_resume`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import SSPSError
from .common import (DEFAULT_CONFIG_NAME, InputError, add_cfg_options, add_config, add_device_amp, apply_amp,
                     select_device, add_load_from, add_seed, add_ssps_imports, add_work_dir, check_data_paths,
                     check_load_from, check_output_dir, config_path, default_work_dir, fail, read_policy,
                     merge_cfg_options, work_dir_room)
from .lock import work_dir_lock
from .hook_config import SSPS_TYPES
from .search_start import continue_from_search, policy_file
from .stop import GracefulStop, Interrupted
from .train_resume import check_same_policy, check_train_resume, interrupted_message

PROG = 'ssps train'
RESULT_JSON = 'train_result.json'
HOOK_TYPES = ('QuantPolicyHook', 'ssps_nni.mmengine.QuantPolicyHook')
#: SSPSHook options that QuantPolicyHook shares (which layers; calibration).
SHARED_OPTIONS = ('include', 'exclude', 'pinned', 'pinned_bits', 'calib_batches', 'calib_batch_size', 'seed')


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The command line; argparse exits with status 2 on a malformed one."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description='Quantization-aware retraining of an SSPS policy (or a uniform WxAy baseline, or FP32) '
                    f'on an mmengine config, then evaluation. With no CONFIG: {DEFAULT_CONFIG_NAME}.')
    add_config(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--policy', help='policy.json written by ssps search, or the search\'s work dir; '
                                       'training continues from that search\'s checkpoint unless --load-from is given '
                                       '(--resume: from this run\'s own work dir)')
    mode.add_argument('--uniform', metavar='WxAy',
                      help='every searched layer at x-bit weights, y-bit inputs (pinned layers at their bits)')
    parser.add_argument('--allow-partial', action='store_true',
                        help='accept a non-final policy (an interrupted search\'s policy.partial.json), '
                             'with a warning naming its cost against the budget')
    add_load_from(parser, 'full-precision, search or QAT')
    add_work_dir(parser, 'work_dirs/<config name>_qat')
    parser.add_argument('--resume', action='store_true',
                        help='continue an interrupted ssps train (Ctrl-C, SIGTERM, a kill) from the work dir\'s '
                             'last checkpoint: the same command and --work-dir (--load-from PTH: from PTH)')
    add_seed(parser, 'the run and of the calibration samples')
    add_cfg_options(parser)
    add_device_amp(parser)  # --device, --amp (common.py)
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
            if getattr(args, 'allow_partial', False):
                quant['allow_partial'] = True
        else:
            quant['uniform'] = args.uniform
        if args.seed is not None:
            quant['seed'] = args.seed
        hooks.insert(0, quant)
    cfg.custom_hooks = hooks
    return quant


def build_config(args):
    """The resolved config of this run (CLI > config): ``SSPSHook`` swapped, paths, seed.

    Raises:
        InputError: the config file does not exist (or, with no CONFIG, the repository's default).
    """
    select_device(args)  # before anything initialises CUDA
    from mmengine.config import Config

    args.config = config_path(args.config)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        merge_cfg_options(cfg, args.cfg_options)
    apply_amp(cfg, args)
    add_ssps_imports(cfg)
    quant_hook_cfg(cfg, args)
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness', None) or {}, seed=args.seed)
    cfg.work_dir = args.work_dir if args.work_dir is not None else default_work_dir(cfg, args.config, '_qat')
    if args.load_from is not None:
        cfg.load_from = args.load_from
    elif getattr(args, 'resume', False):
        cfg.load_from = None  # the work dir's own last checkpoint (check_train_resume), not the search's
    else:
        args.continued_from = continue_from_search(cfg, args)
    if getattr(args, 'resume', False):
        cfg.resume = True  # mmengine resumes from load_from: weights, optimizer, schedulers, iteration
    return cfg


def check_policy(args, prog: str = PROG) -> None:
    """``--policy`` is a readable, final policy (or ``--allow-partial``, then its warning is printed).

    Raises:
        PolicyError: unreadable, not JSON or malformed; PolicyNotFinalError: a search's interim
            snapshot without ``--allow-partial`` (the message names the option).
        InputError: ``--allow-partial`` without ``--policy``.
    """
    if args.policy is not None:
        args.policy = policy_file(args.policy)  # a search's work dir: its policy.json
    if args.policy is None:
        if args.allow_partial:
            raise InputError('--allow-partial applies to --policy (a search\'s policy.partial.json); '
                             'leave it out with --uniform or FP32 training')
        return
    warning = read_policy(args.policy, args.allow_partial)[1]
    if warning:
        import sys

        print(f'{prog}: {warning}', file=sys.stderr)


def validate(cfg):
    """Check the work dir, ``load_from``, data paths, the quantization options and the policy against the model.

    Returns:
        The policy the ``QuantPolicyHook`` trains (resolved for the model), or None (FP32).

    Raises:
        InputError, SSPSError: one-line messages; the policy's names the first mismatching layer;
            a work dir that cannot be written (not a folder, no permission, no space).
    """
    check_output_dir(cfg.work_dir, 'work dir', work_dir_room(cfg.get('load_from', None)))
    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.errors import PolicyError
    from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg

    check_load_from(cfg.get('load_from', None),
                    'Give a checkpoint (full-precision, search or QAT) of this model to start from (--load-from PTH).')
    check_data_paths(cfg)
    policy = None
    for hook in cfg.custom_hooks:
        if hook.get('type') in HOOK_TYPES:
            options = {k: v for k, v in hook.items() if k not in ('type', 'priority')}
            try:
                quant = QuantPolicyHook(**options)
            except TypeError as err:
                raise InputError(f'invalid QuantPolicyHook option: {err}') from None
            try:
                policy = quant.resolve(build_model_from_cfg(cfg))  # PolicyError names the first mismatching layer
            except PolicyError as err:
                raise PolicyError(f'{err}; --policy takes a policy of this config\'s model (the policy.json '
                                  'that ssps search writes for it, or one of the NNI route with the same layers)') from None
    return policy


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

    from ssps_nni.calibration_data import calibration_loader, forward_fn
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
    """One line: what was trained, its metrics, BitOPs and size next to FP32."""
    what = {'policy': f'policy {res["policy"]}', 'uniform': f'uniform {res["uniform"]}', 'fp32': 'FP32'}[res['mode']]
    metrics = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in res['metrics'].items())
    b, s = res['bitops'], res['size']
    return (f'{what}: {metrics} | bitops {b["text"]} (FP32 {b["fp32_text"]}) | size {s["text"]} '
            f'(FP32 {s["fp32_text"]})')


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps train``; returns the exit status (0 done, 2 bad input: also a non-final policy
    without ``--allow-partial``, or ``--resume`` with nothing of this run to resume; 130 / 143
    stopped by SIGINT / SIGTERM, with one line naming the iteration reached and how to resume)."""
    args = parse_args(argv, prog)
    cfg = None
    try:
        check_policy(args, prog)
        cfg = build_config(args)
        check_train_resume(cfg, args, warn=lambda text: print(f'{prog}: warning: {text}', file=sys.stderr))
        check_same_policy(cfg, args, validate(cfg))
        if getattr(args, 'continued_from', None):
            print(f'{prog}: continuing from the search\'s checkpoint {args.continued_from} (its weights and step '
                  'sizes; --load-from PTH starts from another checkpoint)')
        from mmengine.runner import Runner

        # one run per work dir (ssps_nni.cli.lock); SIGINT/SIGTERM end the iteration, then save and stop
        with work_dir_lock(cfg.work_dir, prog), GracefulStop(prog) as stop:
            runner = args.runner = Runner.from_cfg(cfg)
            stop.attach(runner)
            started = time.perf_counter()
            runner.train()
            trained = time.perf_counter()
            stop.training = False  # from here a signal stops at once: the last checkpoint is the trained model
            if stop.requested is not None:  # came after the last iteration's hooks: the evaluation is left
                raise Interrupted(stop.requested, None, runner.iter)
            metrics = evaluate(runner, cfg)
            times = {'train_s': trained - started, 'test_s': time.perf_counter() - trained}
    except (InputError, SSPSError) as err:
        return fail(prog, err)
    except KeyboardInterrupt as err:  # also stop.Interrupted: SIGINT or SIGTERM
        print(f'{prog}: {interrupted_message(cfg, args, err)}', file=sys.stderr)
        return int(getattr(err, 'exit_status', 130))
    from mmengine.dist import is_main_process

    from ssps_nni.files import atomic_write

    res = dict(result(runner, cfg, args, metrics), **times)  # wall seconds of the training and the test
    if is_main_process():
        path = atomic_write(Path(cfg.work_dir) / RESULT_JSON, json.dumps(res, indent=2) + '\n')
        print(summary(res))
        print(f'result: {path}  checkpoint: {res["checkpoint"]}')
    return 0
