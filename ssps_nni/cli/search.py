"""``ssps search``: a mixed-precision quantization policy for an mmengine config (the main job).

    ssps search                       # ResNet-20 on the shipped real CIFAR-10 subset
    ssps search CONFIG [--budget bitops=W4A4] [--candidates 2,3,4,6,8]
        [--work-dir DIR] [--resume] [--seed N] [--load-from PTH] [--cfg-options KEY=VALUE ...]
        [--method ssps|sensitivity|random] [--sensitivity-batches N]

Built on mmengine's ``Config`` and ``Runner`` like mmpretrain's ``tools/train.py``; the search
itself is the config's ``SSPSHook`` (added with defaults when the config has none). Inputs are
checked before the runner is built, the cheap ones before torch and mmengine are imported, and
an unreachable budget from the model's layer profile (``ssps_nni.cli.cost_check``, cached); bad
input exits with status 2 and one ``ssps search: error:`` line, no traceback and no
``policy.json`` (a search whose loss became NaN/inf exits with status 3). At the end it prints
the policy table, its cost, the target and the reference costs (FP32, W8A8, all-minimum,
all-maximum).

Exit status: 0 done (``WORK_DIR/policy.json`` written), 2 bad input, 3 a diverged search,
130 interrupted (Ctrl-C). Faults and resuming:

- While it runs, the search keeps its snapshot in ``policy.partial.json`` (``"final": false``),
  which ``ssps train`` and ``ssps export`` refuse without ``--allow-partial``; ``policy.json``
  appears only when the search is done.
- Ctrl-C stops with one line (the step reached) and exit status 130; the work dir resumes
  with ``--resume``. A Ctrl-C during a checkpoint save takes effect when the save is complete
  (:func:`deferred_sigint`), so the checkpoint and ``last_checkpoint`` are whole.
- ``--resume`` continues from the checkpoint that the work dir's ``last_checkpoint`` names.
  A truncated or unreadable one (a kill during its save) is detected first: the newest readable
  ``epoch_N.pth`` / ``iter_N.pth`` before it is taken instead, with a warning, or the run is
  refused (exit 2) with a message naming the file (:func:`resume_from`).

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
import re
import signal
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import SSPSError
from .common import (DEFAULT_CONFIG_NAME, InputError, add_budget, add_candidates, add_cfg_options, add_config,
                     add_load_from, add_seed, add_ssps_imports, add_work_dir, check_data_paths, check_load_from,
                     config_path, default_work_dir, fail, CANDIDATE_FORM)

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
    parser.add_argument('--method', choices=METHODS, default='ssps',
                        help='ssps: the SSPS search (default); sensitivity: per-layer sensitivity on '
                             'training batches, no training; random: a random policy within the budget')
    parser.add_argument('--sensitivity-batches', type=int, metavar='N',
                        help=f'training batches the sensitivity method measures on (default '
                             f'{DEFAULT_SENSITIVITY_BATCHES}; --method sensitivity only)')
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
    add_ssps_imports(cfg)
    hook = ssps_hook_cfg(cfg)
    if args.budget is not None:
        hook['budget'] = args.budget
    if args.candidates is not None:
        hook['candidates'] = split_candidates(args.candidates)
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
    """The data paths and ``load_from`` exist (no training stack imported).

    Raises:
        InputError: the first missing path, or a ``load_from`` that is no checkpoint.
    """
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


#: The checkpoints mmengine's CheckpointHook writes in the work dir.
CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def resume_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (missing, truncated, not a checkpoint), or None.

    Beyond :func:`ssps_nni.checkpoint.checkpoint_problem` (a zip archive or a pickle), the
    archive's members are read and their CRCs checked: a file cut short or damaged while it was
    written is refused here rather than as a traceback inside mmengine's ``resume``.
    """
    from ssps_nni.checkpoint import checkpoint_problem

    problem = checkpoint_problem(path)
    if problem:
        return f'{problem}; a kill while it was saved leaves it truncated'
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            return f'{path} is a damaged checkpoint archive ({err})'
        if bad is not None:
            return f'{path} is a damaged checkpoint archive (member {bad} fails its CRC check)'
    return None


def _checkpoint_number(path: Path) -> int:
    return int(CHECKPOINT_NAME.match(path.name).group(2))


def resume_from(work_dir: str, warn=None) -> str:
    """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names if it is whole.

    Args:
        work_dir: the interrupted search's work dir.
        warn: called with a one-line warning when an earlier checkpoint is taken instead.

    Returns:
        The path of a checkpoint that :func:`resume_problem` accepts: the one named by
        ``WORK_DIR/last_checkpoint``, or else the newest readable ``epoch_N.pth`` / ``iter_N.pth``
        of the work dir saved before it.

    Raises:
        InputError: no ``last_checkpoint`` file; or the checkpoint it names is truncated,
            unreadable or missing and no earlier one is readable (the message names the file).
    """
    work = Path(work_dir)
    pointer = work / 'last_checkpoint'
    if not pointer.is_file():
        raise InputError(f'--resume found no checkpoint of an earlier search in {work_dir} '
                         '(no last_checkpoint file); give the --work-dir of the interrupted run, '
                         'or leave out --resume to start a new search')
    try:
        named = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        named, problem = '', f'{pointer} cannot be read ({err})'
    else:
        problem = None if named else f'{pointer} is empty'
    latest = Path(named) if named else None
    if latest is not None and not latest.is_file() and (work / latest.name).is_file():
        latest = work / latest.name  # the work dir was moved or given by another relative path
    if latest is not None:
        problem = resume_problem(latest)
        if problem is None:
            return str(latest)
    earlier = sorted((p for p in work.iterdir() if CHECKPOINT_NAME.match(p.name)
                      and (latest is None or p.resolve() != latest.resolve())),
                     key=lambda p: (_checkpoint_number(p), p.stat().st_mtime), reverse=True)
    if latest is not None and CHECKPOINT_NAME.match(latest.name):
        kind = CHECKPOINT_NAME.match(latest.name).group(1)
        earlier = [p for p in earlier if p.name.startswith(kind + '_')
                   and _checkpoint_number(p) < _checkpoint_number(latest)]
    for candidate in earlier:
        if resume_problem(candidate) is None:
            if warn is not None:
                warn(f'the latest checkpoint cannot be resumed: {problem}; resuming from the previous one, '
                     f'{candidate} (the steps after it are trained again)')
            return str(candidate)
    raise InputError(f'--resume cannot continue the search in {work_dir}: {problem} (named by {pointer}), and no '
                     'earlier epoch_N.pth or iter_N.pth there is readable. Give --load-from PTH with a whole '
                     'checkpoint of this search, or leave out --resume to start a new search')


def check_resume(cfg, args, warn=None) -> None:
    """``--resume`` has a whole checkpoint to continue from (``load_from`` or the work dir's latest).

    With ``--resume`` and no ``--load-from``, ``cfg.load_from`` is set to the checkpoint of
    :func:`resume_from` (mmengine resumes from ``load_from`` when ``resume`` is set), so a
    truncated latest checkpoint is never handed to mmengine.

    Raises:
        InputError: no checkpoint to resume from, or none that is whole (names the file).
    """
    if not args.resume:
        return
    if cfg.get('load_from') is None:
        cfg.load_from = resume_from(cfg.work_dir, warn)
        cfg.resume = True
    else:
        problem = resume_problem(cfg.load_from)
        if problem:
            raise InputError(f'--resume --load-from: {problem}; give a whole checkpoint of this search')


def search_total_steps(hook) -> int:
    """A search length the hook's warm-up fits in (one-shot methods take no search step)."""
    warmup = hook.warmup_steps
    return int(warmup) + 1 if isinstance(warmup, int) and not isinstance(warmup, bool) else 1


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
    from ssps_nni.mmengine.report import cost_lines
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


# -- interruption --------------------------------------------------------------------------------

#: Runner hooks under which mmengine's CheckpointHook saves (by iteration, by epoch, best).
SAVE_POINTS = frozenset({'after_train_iter', 'after_train_epoch', 'after_val_epoch'})


@contextmanager
def deferred_sigint():
    """Hold a SIGINT (Ctrl-C) until the block is done, then raise ``KeyboardInterrupt``.

    Around the runner hooks that save checkpoints, so that a Ctrl-C during the save leaves a
    whole checkpoint and ``last_checkpoint`` naming it (not mmengine's "Failed to format the
    config file" from an interrupted ``pretty_text``, nor a half-written file). Outside the main
    thread (where signal handlers cannot be set) the block runs as is.

    Raises:
        KeyboardInterrupt: after the block, if a SIGINT arrived during it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def defer_sigint_in_saves(runner) -> None:
    """Run ``runner``'s checkpoint-saving hooks (:data:`SAVE_POINTS`) under :func:`deferred_sigint`."""
    call_hook = runner.call_hook

    def guarded(fn_name: str, **kwargs):
        if fn_name not in SAVE_POINTS:
            return call_hook(fn_name, **kwargs)
        with deferred_sigint():
            return call_hook(fn_name, **kwargs)

    runner.call_hook = guarded


def interrupted_message(cfg, args) -> str:
    """The one line of an interrupted search: the step reached and how to resume."""
    runner = getattr(args, 'runner', None)
    if args.method != 'ssps':
        return f'interrupted; --method {args.method} trains nothing and has nothing to resume: run it again'
    if runner is None:
        return 'interrupted before the search started; nothing to resume (run the command again)'
    step = None
    for hook in getattr(runner, 'hooks', []):
        search = getattr(hook, 'search', None)
        if type(hook).__name__ == 'SSPSHook' and search is not None:
            step = f'step {search.step} of {search.config.total_steps}'
    where = f'{step or "the start"} (epoch {runner.epoch + 1}, iteration {runner.iter})'
    pointer = Path(cfg.work_dir) / 'last_checkpoint'
    last = pointer.read_text().strip() if pointer.is_file() else ''
    if not last:
        return (f'interrupted at {where}, before the first checkpoint: nothing to resume; '
                f'run the command again without --resume ({cfg.work_dir} holds no policy.json)')
    return (f'interrupted at {where}; resume with --resume (the same command and --work-dir {cfg.work_dir}, '
            f'from {last}); no policy.json was written, {partial_status(cfg.work_dir)}')


# -- methods -------------------------------------------------------------------------------------

def run_ssps(cfg, args) -> None:
    """The SSPS search: the config's training run; its ``SSPSHook`` writes the policy.

    The runner is kept as ``args.runner`` (for :func:`interrupted_message`); a Ctrl-C during a
    checkpoint save takes effect after it (:func:`defer_sigint_in_saves`).
    """
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    args.runner = runner
    defer_sigint_in_saves(runner)
    runner.train()


def prepared_search(cfg):
    """The search set-up without training: ``(runner, model, search, train_loader)``.

    The runner builds the work dir, logger and model (``train()`` is not called); ``load_from``
    is loaded into the float model; :class:`~ssps_nni.search.SSPSSearch` converts it with the
    config's ``SSPSHook`` options and :meth:`~ssps_nni.search.SSPSSearch.prepare` profiles,
    calibrates and checks the budget on training batches, as ``SSPSHook.before_train`` does.

    Raises:
        BudgetError: an unreachable budget.
    """
    from mmengine.model import is_model_wrapper
    from mmengine.runner import Runner, load_checkpoint

    from ssps_nni.mmengine.calibration import calibration_loader, forward_fn, preserved_rng
    from ssps_nni.search import SSPSSearch

    hook = build_hook(cfg)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if cfg.get('load_from', None):
        runner.logger.info(f'Load checkpoint from {cfg.load_from} (into the float model)')
        load_checkpoint(model, cfg.load_from, map_location='cpu', strict=False, logger=runner.logger)
    search = SSPSSearch(model, hook.search_config(search_total_steps(hook)))
    seed = search.config.seed
    train_loader = runner.build_dataloader(cfg.train_dataloader, seed=seed)
    run, num_samples = forward_fn(model, calibration_loader(train_loader, hook.calib_batches,
                                                            hook.calib_batch_size, seed=seed))
    with preserved_rng():
        search.prepare(run, num_samples)
    space = search.space
    runner.logger.info(f'{len(space.cells)} layers converted ({len(space.searched)} searched, '
                       f'{len(space.pinned)} pinned, {len(search.excluded)} excluded), calibrated on '
                       f'{num_samples} training samples')
    return runner, model, search, train_loader


def cycled_batches(loader, count: int):
    """``count`` batches of ``loader``, starting over (next epoch of its sampler) when it ends."""
    done, epoch = 0, 0
    while done < count:
        if hasattr(loader.sampler, 'set_epoch'):
            loader.sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
            done += 1
            if done >= count:
                return
        if empty:
            raise InputError('the training dataloader yields no batch; the sensitivity method needs training data')
        epoch += 1


def loss_function(model):
    """``loss_fn(batch)``: the task loss of an mmengine model on a data batch (training mode)."""

    def loss_fn(batch):
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        return loss

    return loss_fn


def run_sensitivity(cfg, args) -> None:
    """Per-layer sensitivity on ``--sensitivity-batches`` training batches; the policy that fills the budget."""
    from ssps_nni.sensitivity import sensitivity_policy, sensitivity_scores

    start = time.perf_counter()
    runner, model, search, loader = prepared_search(cfg)
    ready = time.perf_counter()
    n = args.sensitivity_batches
    scores = sensitivity_scores(search, loss_function(model), cycled_batches(loader, n), num_batches=n)
    measured = time.perf_counter()
    policy = sensitivity_policy(search, scores)
    solved = time.perf_counter()
    write_policy(runner, policy, f'sensitivity on {n} training batches', start,
                 f'set-up {ready - start:.1f} s, measurement {measured - ready:.1f} s '
                 f'({(measured - ready) / n:.2f} s per batch), solve {solved - measured:.1f} s')


def run_random(cfg, args) -> None:
    """A random policy within the budget, drawn with the search's seed (``--seed``)."""
    from ssps_nni.sensitivity import random_policy

    start = time.perf_counter()
    runner, _, search, _ = prepared_search(cfg)
    policy = random_policy(search, search.config.seed)
    write_policy(runner, policy, f'random (seed {search.config.seed})', start)


def write_policy(runner, policy, what: str, start: float, detail: str = '') -> None:
    """``policy.json`` and ``policy.png`` (no search history) in the work dir; log time and cost."""
    from ssps_nni.policy import plot_policy

    work_dir = Path(runner.work_dir)
    policy.save(work_dir / 'policy.json')
    plot_policy(policy, [], work_dir / 'policy.png')
    seconds = time.perf_counter() - start
    costs = ', '.join(f'{name} {t["policy"] / t["target"]:.4f}' for name, t in policy.meta.get('totals', {}).items()
                      if t.get('target'))
    runner.logger.info(f'{what}: policy in {seconds:.1f} s ({detail or "model build, calibration and draw"}); '
                       f'cost / target: {costs or "n/a"}; wrote {work_dir / "policy.json"}')


RUNS = {'ssps': run_ssps, 'sensitivity': run_sensitivity, 'random': run_random}

#: What a LUT file holds (ssps_nni.cost.LutCost), added to the core's LUT messages.
LUT_FORM = ("a JSON object {'unit': 'ms', 'layers': {LAYER: {'w4a4': COST, ...}}, 'signatures': "
            "{SIGNATURE: {'w4a4': COST, ...}}}, its path given by the hook's cost_options={'lut': {'path': FILE}} "
            "(--cfg-options custom_hooks.0.cost_options.lut.path=FILE)")


def explained(err: BaseException) -> BaseException:
    """``err``, with the accepted LUT form added to a LUT message that does not give it."""
    text = str(err)
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
        RUNS[args.method](cfg, args)
    except (InputError, SSPSError) as err:
        return fail(prog, explained(err))
    except KeyboardInterrupt:
        if cfg is None:
            print(f'{prog}: interrupted before the search started; nothing was written', file=sys.stderr)
        else:
            print(f'{prog}: {interrupted_message(cfg, args)}', file=sys.stderr)
        return 130
    print_result(cfg.work_dir)
    return 0
