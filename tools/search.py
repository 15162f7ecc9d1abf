"""Search a mixed-precision quantization policy with SSPS on an mmengine config (the main job).

    python tools/search.py                       # ResNet-20 on the shipped real CIFAR-10 subset
    python tools/search.py CONFIG [--budget bitops=W4A4] [--candidates 2,3,4,6,8]
        [--work-dir DIR] [--resume] [--seed N] [--load-from PTH] [--cfg-options KEY=VALUE ...]
        [--method ssps|sensitivity|random] [--sensitivity-batches N]

Built on mmengine's ``Config`` and ``Runner`` like mmpretrain's ``tools/train.py``; the search
itself is the config's ``SSPSHook`` (added with defaults when the config has none). Inputs are
checked before the runner is built; bad input exits with status 2, one message, no traceback
and no ``policy.json``. At the end it prints the policy table, its cost, the target and the
reference costs (FP32, W8A8, all-minimum, all-maximum).

``--method`` picks how the policy is found (the same ``WORK_DIR/policy.json`` either way, so
``tools/train.py --policy`` and ``tools/export.py`` take it unchanged):

``ssps`` (default)
    the SSPS search: the config's training run with its ``SSPSHook``.
``sensitivity``
    no training: the model (``load_from`` if set) is converted and calibrated as the search
    would (same layers, candidates and budget: the config's ``SSPSHook`` options), each
    layer's sensitivity to its bit-widths is measured on ``--sensitivity-batches`` training
    batches, and the policy that fills the budget by sensitivity is taken
    (``ssps_nni.sensitivity``).
``random``
    the same set-up, then a random policy within the budget (``--seed``).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CONFIG = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py'
CANDIDATE_FORM = 'comma-separated integer bit-widths in 2..32, e.g. 2,3,4,6,8 (32 = not quantized)'
METHODS = ('ssps', 'sensitivity', 'random')
DEFAULT_SENSITIVITY_BATCHES = 128


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
    parser.add_argument('--method', choices=METHODS, default='ssps',
                        help='ssps: the SSPS search (default); sensitivity: per-layer sensitivity on '
                             'training batches, no training; random: a random policy within the budget')
    parser.add_argument('--sensitivity-batches', type=int, metavar='N',
                        help=f'training batches the sensitivity method measures on (default '
                             f'{DEFAULT_SENSITIVITY_BATCHES}; --method sensitivity only)')
    return parser.parse_args(argv)


def check_method_args(args) -> None:
    """``--method`` and the options that go with it; fills the ``--sensitivity-batches`` default.

    Raises:
        InputError: ``--sensitivity-batches`` below 1 or without ``--method sensitivity``;
            ``--resume`` with a method that has no search to resume.
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
        if args.load_from is None:
            # the config's start weights are not where a search continues: mmengine resumes from
            # load_from when it is set, so clear it to resume from the work dir's latest checkpoint
            cfg.load_from = None


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
    if load_from:
        from ssps_nni.checkpoint import checkpoint_problem

        problem = checkpoint_problem(load_from)
        if problem:
            raise InputError(f'load_from: {problem}. Give the path of a full-precision checkpoint of this '
                             'model (--load-from PTH), or --cfg-options load_from=None for the initial weights.')


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
    figure = path.with_suffix('.png')
    print(f'policy: {path}  figure: {figure if figure.is_file() else "none"}')


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


# -- methods -------------------------------------------------------------------------------------

def run_ssps(cfg, args) -> None:
    """The SSPS search: the config's training run; its ``SSPSHook`` writes the policy."""
    from mmengine.runner import Runner

    if args.resume and cfg.get('load_from') is None and not osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')):
        raise InputError(f'--resume found no checkpoint of an earlier search in {cfg.work_dir} '
                         '(no last_checkpoint file); give the --work-dir of the interrupted run, '
                         'or leave out --resume to start a new search')
    Runner.from_cfg(cfg).train()


def search_total_steps(hook) -> int:
    """A search length the hook's warm-up fits in (one-shot methods take no search step)."""
    warmup = hook.warmup_steps
    return int(warmup) + 1 if isinstance(warmup, int) and not isinstance(warmup, bool) else 1


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

    from ssps_nni.mmengine import SSPSHook
    from ssps_nni.mmengine.calibration import calibration_loader, forward_fn, preserved_rng
    from ssps_nni.search import SSPSSearch

    hook = SSPSHook(**{k: v for k, v in ssps_hook_cfg(cfg).items() if k not in ('type', 'priority')})
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


def main(argv=None) -> int:
    args = parse_args(argv)
    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.errors import SSPSError

    try:
        check_method_args(args)
        cfg = build_config(args)
        validate(cfg)
        RUNS[args.method](cfg, args)
    except (InputError, SSPSError) as err:
        print(f'search.py: error: {err}', file=sys.stderr)
        return 2
    print_result(cfg.work_dir)
    return 0


if __name__ == '__main__':
    sys.exit(main())
