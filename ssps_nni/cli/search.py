"""``ssps search``: a mixed-precision quantization policy for an mmengine config (the main job).

    ssps search                       # ResNet-20 on the shipped real CIFAR-10 subset
    ssps search CONFIG [--budget bitops=W4A4] [--candidates 2,3,4,6,8]
        [--work-dir DIR] [--resume] [--seed N] [--load-from PTH] [--cfg-options KEY=VALUE ...]
        [--lut FILE] [--method ssps|sensitivity|random] [--sensitivity-batches N]
        [--scores fisher|measured|calibrated|adapted] [--device cpu|cuda] [--amp none|bf16|fp16]

Built on mmengine's ``Config`` and ``Runner`` like mmpretrain's ``tools/train.py``; the search
itself is the config's ``SSPSHook`` (added with defaults when the config has none). Inputs are
checked before the runner is built, the cheap ones before torch and mmengine are imported, and
an unreachable budget from the model's layer profile (``ssps_nni.cli.cost_check``, cached); bad
input exits with status 2 and one ``ssps search: error:`` line, no traceback and no
``policy.json`` (a search whose loss became NaN/inf exits with status 3). At the end it prints
the policy table, its cost, the target and the reference costs (FP32, W8A8, all-minimum,
all-maximum).

The search ends right after the step of its last decision (docs/algorithm.md §6): a config's
default epoch loop is replaced by ``SSPSEpochBasedTrainLoop`` (:mod:`ssps_nni.cli.train_loop`),
which stops mid-epoch; the checkpoint of that step (``iter_N.pth``) is the one ``ssps train
--policy WORK_DIR`` continues from.

Exit status: 0 done (``WORK_DIR/policy.json`` written), 2 bad input (also: the work dir cannot
be written, or another run holds it, ``ssps_nni.cli.lock``), 3 a diverged search, 130 interrupted
(Ctrl-C, SIGINT), 143 stopped by SIGTERM. Faults and resuming:

- While it runs, the search keeps its snapshot in ``policy.partial.json`` (``"final": false``),
  which ``ssps train`` and ``ssps export`` refuse without ``--allow-partial``; ``policy.json``
  appears only when the search is done.
- Ctrl-C (SIGINT) or SIGTERM (a scheduler's pre-emption): the current step finishes, a checkpoint
  of that iteration is saved, the partial policy written, one line says the step reached and how
  to resume, and the exit status is 130 / 143 (:class:`ssps_nni.cli.stop.GracefulStop`; a second
  signal stops at once, after a checkpoint save in progress, so the checkpoint and
  ``last_checkpoint`` are whole). ``--resume`` continues at the next iteration, mid-epoch too.
- ``--resume`` continues from the checkpoint that the work dir's ``last_checkpoint`` names.
  A truncated or unreadable one (a kill during its save) is detected first: the newest readable
  ``epoch_N.pth`` / ``iter_N.pth`` before it is taken instead, with a warning, or the run is
  refused (exit 2) with a message naming the file (:func:`ssps_nni.cli.resume.resume_from`).

``--method`` picks how the policy is found (the same ``WORK_DIR/policy.json`` either way, so
``ssps train --policy`` and ``ssps export`` take it unchanged):

``ssps`` (default)
    the SSPS search: the config's training run with its ``SSPSHook``.
``sensitivity``
    no training: the model (``load_from`` if set) is converted and calibrated as the search
    would (same layers, candidates and budget: the config's ``SSPSHook`` options), each
    layer's sensitivity to its bit-widths is measured on ``--sensitivity-batches`` training
    batches, and the policy that fills the budget by sensitivity is taken
    (``ssps_nni.sensitivity``, docs/algorithm.md §10).
``random``
    the same set-up, then a random policy within the budget (``--seed``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SSPSError
from .methods import add_score_options, check_score_options, run_random, run_sensitivity
from .lock import work_dir_lock
from .resume import check_resume
from .stop import GracefulStop
from .train_loop import use_stopping_loop
from .common import (DEFAULT_CONFIG_NAME, InputError, add_budget, add_candidates, add_cfg_options, add_config,
                     add_device_amp, apply_amp, select_device, add_load_from, add_seed, add_ssps_imports,
                     add_work_dir, check_data_paths, check_load_from, check_output_dir, config_path,
                     default_work_dir, fail, work_dir_room, CANDIDATE_FORM)

PROG = 'ssps search'
METHODS = ('ssps', 'sensitivity', 'random')
DEFAULT_SENSITIVITY_BATCHES = 128
SSPS_TYPES = ('SSPSHook', 'ssps_nni.mmengine.SSPSHook')
#: ``ssps_nni.mmengine.hook.HOOK_OPTIONS`` (that module loads the training stack): the hook's own
#: keyword arguments; the rest of its options are ``SearchConfig`` fields.
HOOK_OPTIONS = ('total_steps', 'warmup_steps', 'interval', 'calib_batches', 'calib_batch_size',
                'stop_when_done', 'plot_interval_s')


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
    typed config's (:func:`search_config`, the one rule of docs/algorithm.md §1, §4).

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
    """``'2,4,8'`` -> ``(2, 4, 8)``: the form only; their range is checked by :func:`search_config`.

    Raises:
        InputError: an entry that is not an integer.
    """
    try:
        return tuple(int(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise InputError(f'--candidates {text!r} is not a list of bit-widths; accepted: {CANDIDATE_FORM}') from None


def ssps_hook_cfg(cfg) -> dict:
    """The config's ``SSPSHook`` entry, appended with defaults when there is none."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    for hook in hooks:
        if hook.get('type') in SSPS_TYPES:
            cfg.custom_hooks = hooks
            return hook
    hooks.append(dict(type='SSPSHook'))
    cfg.custom_hooks = hooks
    return hooks[-1]


def apply_args(cfg, args) -> None:
    """Put the command-line options into ``cfg`` (CLI > config)."""
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
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
    """The resolved config of this run (CLI > config), before :func:`validate`.

    ``args.config`` None becomes the default run's config (``mmdet_configs/`` of the repository).
    The config's ``custom_imports`` are not imported yet (that loads the training stack):
    :func:`import_custom` does it once the cheap checks have passed.

    Raises:
        InputError: the config file does not exist.
    """
    select_device(args)  # before anything initialises CUDA
    from mmengine.config import Config

    args.config = config_path(args.config)
    cfg = Config.fromfile(args.config, import_custom_modules=False)
    apply_args(cfg, args)
    return cfg


def import_custom(cfg) -> None:
    """Import the config's ``custom_imports`` (``ssps_nni.mmengine`` among them), as ``Config.fromfile`` would."""
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)


def hook_options(cfg) -> dict:
    """The keyword arguments of the config's ``SSPSHook``."""
    return {k: v for k, v in ssps_hook_cfg(cfg).items() if k not in ('type', 'priority')}


def search_config(cfg):
    """The typed :class:`~ssps_nni.search_config.SearchConfig` of the config's ``SSPSHook``.

    Built as the hook builds it (:meth:`SearchConfig.from_options` on the options that are no
    hook option of its own, the hook's ``total_steps`` / ``warmup_steps`` / ``interval``), so the
    budget is parsed and the candidates checked once, with the core's one rule (docs/algorithm.md
    §1, §4). Imports torch (the core), not the training stack. The runner builds its own hook from
    the config's dict (an mmengine config carries no Python object into ``Runner.from_cfg``); that
    hook takes the same constructor and so the same rule and messages.

    Raises:
        InputError: ``invalid SSPS option: `` and the core's message (malformed budget, unknown
            cost, bad candidates, unknown option, ...).
    """
    from ssps_nni.search_config import SearchConfig

    options = hook_options(cfg)
    try:
        return SearchConfig.from_options({k: v for k, v in options.items() if k not in HOOK_OPTIONS},
                                         options.get('total_steps'), options.get('warmup_steps', 0),
                                         options.get('interval', 1))
    except (SSPSError, ValueError, TypeError) as err:
        raise InputError(f'invalid SSPS option: {err}') from None


def build_hook(cfg, config=None):
    """The ``SSPSHook`` of the config, constructed (its options are checked at construction).

    Args:
        config: the config's :func:`search_config`, already built: the hook takes it as is
            (``SSPSHook(config=...)``, nothing parsed again) with its own options; None: the hook
            builds it from the config's options.

    Raises:
        InputError: an option the hook refuses (the core's message).
    """
    import_custom(cfg)
    from ssps_nni.mmengine import SSPSHook  # also when the config does not import it

    options = hook_options(cfg)
    if config is not None:
        options = {k: v for k, v in options.items() if k in HOOK_OPTIONS}
    try:
        return SSPSHook(config=config, **options)
    except (SSPSError, ValueError, TypeError) as err:
        raise InputError(f'invalid SSPS option: {err}') from None


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


def validate(cfg):
    """Check the SSPS options, data paths and ``load_from`` before building the runner.

    Returns:
        The typed :func:`search_config` (built once; the hook options are checked on it).

    Raises:
        InputError: with a one-paragraph message naming what is accepted.
    """
    config = search_config(cfg)
    build_hook(cfg, config)
    check_inputs(cfg)
    return config


def check_budget_reachable(cfg, config=None) -> None:
    """Refuse an unreachable budget before the runner, with the hook's own check (docs/algorithm.md §4).

    The layer profile comes from the cache of :mod:`ssps_nni.cli.cost_check` (torch only), or is
    measured as ``SSPSHook.before_train`` measures it (the model built by the registries, the
    hook's calibration samples, no runner) and cached.

    Args:
        config: the config's :func:`search_config` (built here when None); its parsed budgets
            are the ones checked.

    Raises:
        InputError: a budget below the cheapest policy (with the reachable range), or an SSPS
            option the core refuses.
    """
    from .cost_check import check, measure_profile, profile_key, read_profile, write_profile

    if config is None:
        config = search_config(cfg)
    options = hook_options(cfg)
    key = profile_key(cfg, options)
    record = read_profile(key)
    if record is None:
        record = measure_profile(cfg, build_hook(cfg, config), key)
        write_profile(record)
    try:
        check(record, config)
    except (SSPSError, ValueError, TypeError) as err:
        raise InputError(f'invalid SSPS option: {err}') from None


def partial_status(work_dir: str) -> str:
    """One phrase on what the work dir holds instead of a ``policy.json`` (the snapshot's status)."""
    from ssps_nni.errors import SSPSError as CoreError
    from ssps_nni.policy import PARTIAL_POLICY_JSON, load_policy

    path = Path(work_dir) / PARTIAL_POLICY_JSON
    if not path.is_file():
        return f'no {PARTIAL_POLICY_JSON} either (no decision made yet)'
    try:
        return f'its snapshot {path} is not final: {load_policy(path).status()}'
    except CoreError as err:
        return f'its snapshot {path} cannot be read ({err})'


def print_result(work_dir: str) -> bool:
    """The policy table, its cost vs the target and the reference costs.

    Returns:
        False (and one line on the partial snapshot instead) when the work dir holds no
        ``policy.json``: the search did not finish (interrupted, or stopped early on another rank).
    """
    from ssps_nni.cost_report import cost_lines
    from ssps_nni.policy import POLICY_JSON, load_policy

    path = Path(work_dir) / POLICY_JSON
    if not path.is_file():
        print(f'no {POLICY_JSON} in {work_dir}: the search did not finish; {partial_status(work_dir)}. '
              'Resume it with --resume.')
        return False
    policy = load_policy(path)
    print('\n' + policy.table())
    print()
    for line in cost_lines(policy):
        print(line)
    figure = path.with_suffix('.png')
    print(f'policy: {path}  figure: {figure if figure.is_file() else "none"}')
    return True


def interrupted_message(cfg, args, err=None) -> str:
    """The one line of an interrupted search: the step reached and how to resume.

    Args:
        err: the ``KeyboardInterrupt`` (a :class:`ssps_nni.cli.stop.Interrupted` names its signal).
    """
    runner = getattr(args, 'runner', None)
    signum = getattr(err, 'signum', None)
    what = 'interrupted' if signum in (None, 2) else f'stopped by {getattr(err, "args", ("a signal",))[0]}'
    if args.method != 'ssps':
        return f'{what}; --method {args.method} trains nothing and has nothing to resume: run it again'
    if runner is None:
        return f'{what} before the search started; nothing to resume (run the command again)'
    step = None
    for hook in getattr(runner, 'hooks', []):
        search = getattr(hook, 'search', None)
        if type(hook).__name__ == 'SSPSHook' and search is not None:
            step = f'step {search.step} of {search.config.total_steps}'
    iteration = getattr(err, 'iteration', None)
    where = f'{step or "the start"} (epoch {runner.epoch + 1}, iteration {runner.iter if iteration is None else iteration})'
    pointer = Path(cfg.work_dir) / 'last_checkpoint'
    last = pointer.read_text().strip() if pointer.is_file() else ''
    if not last:
        return (f'{what} at {where}, before the first checkpoint: nothing to resume; '
                f'run the command again without --resume ({cfg.work_dir} holds no policy.json)')
    return (f'{what} at {where}; resume with --resume (the same command and --work-dir {cfg.work_dir}, '
            f'from {last}); no policy.json was written, {partial_status(cfg.work_dir)}')


# -- methods -------------------------------------------------------------------------------------

def run_ssps(cfg, args) -> None:
    """The SSPS search: the config's training run; its ``SSPSHook`` writes the policy.

    The runner is kept as ``args.runner`` (for :func:`interrupted_message`); SIGINT and SIGTERM
    stop it at the end of a step with a checkpoint of that iteration (``args.stop``,
    :class:`ssps_nni.cli.stop.GracefulStop`).
    """
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    args.runner = runner
    if getattr(args, 'stop', None) is not None:
        args.stop.attach(runner)
    runner.train()


RUNS = {'ssps': run_ssps, 'sensitivity': run_sensitivity, 'random': run_random}

#: What a LUT file holds (ssps_nni.cost.LutCost), added to the core's LUT messages.
LUT_FORM = ("a JSON object {'unit': 'ms', 'layers': {LAYER: {'w4a4': COST, ...}}, 'signatures': "
            "{SIGNATURE: {'w4a4': COST, ...}}}, its path given by --lut FILE (the hook's "
            "cost_options={'lut': {'path': FILE}}, or --cfg-options custom_hooks.0.cost_options.lut.path=FILE)")
#: How the command line sets a nested hook option (``--cfg-options`` reads a ``{...}`` value as text).
NESTED_FORM = ("on the command line give --lut FILE, or one key per option: --cfg-options "
               "custom_hooks.0.cost_options.lut.path=FILE (--cfg-options reads a {...} value as text)")


def explained(err: BaseException) -> BaseException:
    """``err``, with how to give a LUT added to a LUT or ``cost_options`` message that does not say it."""
    text = str(err)
    # bad input only: a diverged search (exit 3) keeps its own type and status
    if getattr(err, 'exit_status', 2) != 2:
        return err
    if 'cost_options' in text and 'must be a mapping' in text:
        return InputError(f'{text}; {NESTED_FORM}')
    if "'lut' cost needs a JSON table" in text or "cost_options for ['lut'] but no budget" in text:
        return InputError(f'{text}; --lut FILE gives the table of a lut budget (--budget lut=VALUE)')
    if 'LUT' in text and 'cost_options' not in text:
        return InputError(f'{text}; a LUT is {LUT_FORM}')
    return err


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps search``; returns the exit status.

    Returns:
        0 done, 2 bad input (one ``ssps search: error:`` line), 3 a diverged search,
        130 interrupted (Ctrl-C; one ``ssps search: interrupted ...`` line naming the step and
        how to resume).
    """
    args = parse_args(argv, prog)
    cfg = None
    try:
        # cheapest first: the training stack (mmpretrain, mmdet, the runner) is imported only
        # once the options, the paths and the budget have passed
        check_args(args)
        cfg = build_config(args)
        config = search_config(cfg)  # the typed config, built once: budget parsed, candidates checked
        check_inputs(cfg)
        check_resume(cfg, args, warn=lambda text: print(f'{prog}: warning: {text}', file=sys.stderr))
        check_budget_reachable(cfg, config)
        build_hook(cfg, config)
        with work_dir_lock(cfg.work_dir, prog), GracefulStop(prog) as args.stop:  # ssps_nni.cli.lock, .stop
            RUNS[args.method](cfg, args)
    except (InputError, SSPSError) as err:
        return fail(prog, explained(err))
    except KeyboardInterrupt as err:  # also stop.Interrupted: SIGINT or SIGTERM
        if cfg is None:
            print(f'{prog}: interrupted before the search started; nothing was written', file=sys.stderr)
        else:
            print(f'{prog}: {interrupted_message(cfg, args, err)}', file=sys.stderr)
        return int(getattr(err, 'exit_status', 130))
    print_result(cfg.work_dir)
    return 0
