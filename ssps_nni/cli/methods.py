"""``ssps search --method sensitivity|random``: a policy without training (docs/algorithm.md §10).

The same set-up as the search (layers, candidates, budget, calibration: :func:`prepared_search`),
then the sensitivity + integer-program policy or a random feasible one, written as
``WORK_DIR/policy.json`` so ``ssps train --policy`` and ``ssps export`` take it unchanged.
"""
from __future__ import annotations

import time
from pathlib import Path

from .common import InputError


DEFAULT_MEASURE_BATCHES = 4
#: ssps_nni.score_calibration.SCORE_KINDS (that module imports torch)
SCORE_KINDS = ('fisher', 'measured', 'calibrated', 'adapted')


def add_score_options(parser) -> None:
    """``--scores`` and ``--measure-batches`` of ``--method sensitivity`` (docs/algorithm.md §10.2)."""
    parser.add_argument('--scores', choices=SCORE_KINDS, default=None,
                        help='what the sensitivity method minimises: fisher (squared first-order score, default), '
                             'measured (loss increase measured per layer, operand and candidate), calibrated '
                             '(fisher scaled per operand to the measured sum) or adapted (fisher scaled per operand '
                             'to the loss increase left after 100 QAT steps); --method sensitivity only')
    parser.add_argument('--measure-batches', type=int, metavar='N',
                        help=f'batches the loss increase is measured (or read, for adapted) on (default '
                             f'{DEFAULT_MEASURE_BATCHES}; for measured, each costs one forward per layer, operand '
                             'and candidate)')


def check_score_options(args) -> None:
    """The score options go with ``--method sensitivity``; fills their defaults.

    Raises:
        InputError: used with another method, or ``--measure-batches`` below 1.
    """
    if (args.scores is not None or args.measure_batches is not None) and args.method != 'sensitivity':
        raise InputError(f'--scores and --measure-batches are used only by --method sensitivity '
                         f'(this run: --method {args.method})')
    if args.measure_batches is not None and args.measure_batches < 1:
        raise InputError(f'--measure-batches must be >= 1, got {args.measure_batches}')
    args.scores = args.scores or 'fisher'
    args.measure_batches = args.measure_batches or DEFAULT_MEASURE_BATCHES


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

    from ssps_nni.calibration_data import calibration_loader, forward_fn, preserved_rng
    from ssps_nni.search import SSPSSearch

    from .search import build_hook  # the hook the search itself would build (one validation path)

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
    """Per-layer sensitivity on training batches (``--scores``, docs/algorithm.md §10, §10.2); the policy that fills the budget."""
    import torch

    from ssps_nni.proxy import measured_increase
    from ssps_nni.score_calibration import scores_of_kind
    from ssps_nni.sensitivity import sensitivity_policy, sensitivity_scores

    start = time.perf_counter()
    runner, model, search, loader = prepared_search(cfg)
    ready = time.perf_counter()
    kind = getattr(args, 'scores', 'fisher') or 'fisher'
    n, m = args.sensitivity_batches, getattr(args, 'measure_batches', 4)
    fisher = measured = adapted = None
    parts = []
    if kind != 'measured':
        fisher = sensitivity_scores(search, loss_function(model), cycled_batches(loader, n), num_batches=n)
        parts.append(f'squared scores on {n} batches {time.perf_counter() - ready:.1f} s')
    batch_loss = lambda d: model.parse_losses(model(**d, mode='loss'))[0]  # noqa: E731
    if kind in ('measured', 'calibrated'):
        begin = time.perf_counter()
        with torch.no_grad():
            data = [model.data_preprocessor(b, True) for b in cycled_batches(loader, m)]
        truth = measured_increase(search, batch_loss, data, 'float')
        measured = {s: truth[s] for s in ('w', 'a')}
        parts.append(f'measured loss increase on {m} batches ({truth["forwards"]} forwards) '
                     f'{time.perf_counter() - begin:.1f} s')
    if kind == 'adapted':
        from ssps_nni.adapted import adapted_increase
        from ssps_nni.calibrate_scores import ADAPT_STEPS

        begin = time.perf_counter()
        with torch.no_grad():
            data = [model.data_preprocessor(b, True) for b in cycled_batches(loader, ADAPT_STEPS + m)]
        adapted = adapted_increase(search, batch_loss, data[:ADAPT_STEPS], data[ADAPT_STEPS:], steps=ADAPT_STEPS)
        parts.append(f'loss increase after {ADAPT_STEPS} QAT steps per operand (w {adapted["w"]:.4f}, '
                     f'a {adapted["a"]:.4f}) {time.perf_counter() - begin:.1f} s')
    scores = scores_of_kind(kind, fisher, measured, search.space.candidates, adapted)
    measured_at = time.perf_counter()
    policy = sensitivity_policy(search, scores)
    policy.meta['scores'] = kind
    solved = time.perf_counter()
    write_policy(runner, policy, f'sensitivity ({kind} scores)', start,
                 f'set-up {ready - start:.1f} s, {", ".join(parts)}, solve {solved - measured_at:.1f} s')


def run_random(cfg, args) -> None:
    """A random policy within the budget, drawn with the search's seed (``--seed``)."""
    from ssps_nni.sensitivity import random_search_policy as random_policy

    start = time.perf_counter()
    runner, _, search, _ = prepared_search(cfg)
    policy = random_policy(search, search.config.seed)
    write_policy(runner, policy, f'random (seed {search.config.seed})', start)


def write_policy(runner, policy, what: str, start: float, detail: str = '') -> None:
    """``policy.json`` and ``policy.png`` (no search history) in the work dir; log time and cost."""
    from ssps_nni.plots import plot_policy

    work_dir = Path(runner.work_dir)
    policy.save(work_dir / 'policy.json')
    plot_policy(policy, [], work_dir / 'policy.png')
    seconds = time.perf_counter() - start
    costs = ', '.join(f'{name} {t["policy"] / t["target"]:.4f}' for name, t in policy.meta.get('totals', {}).items()
                      if t.get('target'))
    runner.logger.info(f'{what}: policy in {seconds:.1f} s ({detail or "model build, calibration and draw"}); '
                       f'cost / target: {costs or "n/a"}; wrote {work_dir / "policy.json"}')
