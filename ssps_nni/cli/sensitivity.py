"""``ssps sensitivity``: per-layer sensitivity report, predicted against measured (docs/algorithm.md §10.1).

    ssps sensitivity [CONFIG] [--checkpoint SEARCH.pth] [--score-batches 32] [--measure-batches 4]
        [--budget ...] [--candidates ...] [--load-from PTH] [--out DIR] [--cfg-options KEY=VALUE ...]

The model (``load_from``, the FP32 start) is converted and calibrated as ``ssps search`` would
(the config's ``SSPSHook`` options). The training set is split by
:func:`ssps_nni.proxy.holdout_split`: the scores are computed on ``--score-batches`` batches of
the fit part, the truth is measured on ``--measure-batches`` batches of the held-out part (one
training image in ten). For every searched layer, operand and candidate it writes:

- ``fisher``: the squared first-order score of the float model, as the sensitivity method uses
  it (§10), and ``first_order`` (its signed mean, a first-order loss increase);
- ``measured``: the loss increase with only that operand quantized at that candidate, from the
  float model (:func:`ssps_nni.proxy.measured_increase`);
- with ``--checkpoint`` (a checkpoint of ``ssps search``): ``search_D``, the search's running
  score, and ``measured_search``, the loss increase of that operand from float to the
  candidate with every other decision at the search's bits, on the checkpoint's weights.

Into ``--out``: ``sensitivity.csv`` (per layer and candidate), ``sensitivity.md`` (Spearman per
operand and bit-width, calibration sum predicted / sum measured, the table) and
``sensitivity.json``. Exit status 2 with one ``ssps sensitivity: error:`` line on bad input.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import SSPSError
from .common import (InputError, add_budget, add_candidates, add_cfg_options, add_config, add_load_from, add_seed,
                     fail)

PROG = 'ssps sensitivity'


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The command line; argparse exits with status 2 on a malformed one."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    add_config(ap)
    add_budget(ap)
    add_candidates(ap)
    add_seed(ap, 'the batch choice and the calibration samples')
    add_load_from(ap, 'full-precision, the float model measured')
    add_cfg_options(ap)
    ap.add_argument('--checkpoint', metavar='PTH',
                    help='a checkpoint of ssps search: also its running scores against the loss measured '
                         'from its quantized state')
    ap.add_argument('--score-batches', type=int, default=32, metavar='N',
                    help='batches of the fit split the squared scores are averaged over (default 32)')
    ap.add_argument('--measure-batches', type=int, default=4, metavar='N',
                    help='batches of the held-out split the loss increase is measured on (default 4; '
                         'each costs one forward per layer, operand and candidate)')
    ap.add_argument('--batch-size', type=int, metavar='N', help="batch size (default: the train loader's)")
    ap.add_argument('--adapt-steps', type=int, default=0, metavar='N',
                    help='also the loss increase left after N QAT steps per operand (every layer at its lowest '
                         'candidate, on fit batches; read on the held-out batches) and the adapted scores '
                         '(default 0: not measured)')
    ap.add_argument('--policies-at', nargs='+', metavar='BUDGET',
                    help='also write the sensitivity policy of each score kind (fisher, measured, calibrated, '
                         'adapted with --adapt-steps) at each budget, e.g. bitops=289054720 bitops=W3A3, into OUT/policies/')
    ap.add_argument('--out', help='output folder (default: work_dirs/sensitivity_<config name>)')
    args = ap.parse_args(argv)
    args.work_dir, args.resume = None, False  # the options ssps search's apply_args reads
    return args


def check_args(args) -> None:
    """Counts are positive and the checkpoint exists. Raises InputError."""
    for name in ('score_batches', 'measure_batches', 'batch_size'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if args.adapt_steps < 0:
        raise InputError(f'--adapt-steps must be >= 0, got {args.adapt_steps}')
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise InputError(f'--checkpoint {args.checkpoint!r} is not a file; give a checkpoint written by ssps search '
                         '(WORK_DIR/epoch_N.pth or iter_N.pth)')


def split_batches(model, dataset, collate, indices, count: int, batch_size: int, seed: int) -> list:
    """``count`` preprocessed batches of ``dataset[indices]``, drawn in a seeded order."""
    import torch
    from torch.utils.data import DataLoader, Subset

    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [indices[i] for i in order[:count * batch_size]]
    loader = DataLoader(Subset(dataset, chosen), batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=collate)
    with torch.no_grad():
        return [model.data_preprocessor(batch, True) for batch in loader]


def batch_loss(model):
    """``loss(data)``: the task loss of an mmengine model on a preprocessed batch."""

    def loss(data):
        return model.parse_losses(model(**data, mode='loss'))[0]

    return loss


def load_search_state(model, search, path: str) -> dict:
    """Load a search checkpoint's weights, step sizes, masks and search state into ``search``.

    Raises:
        InputError: the file holds no SSPS search state.
    """
    from mmengine.runner import load_checkpoint

    checkpoint = load_checkpoint(model, path, map_location='cpu', strict=False)
    state = checkpoint.get('ssps') if isinstance(checkpoint, dict) else None
    if state is None:
        raise InputError(f'--checkpoint {path} holds no SSPS search state (no "ssps" key): give a checkpoint '
                         'written by ssps search')
    search.load_state_dict(state)
    return state


def read_cache(path: Path, key: dict):
    """The cached float-model measurement of ``path`` if it was made with the settings ``key``."""
    import torch

    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location='cpu', weights_only=False)
    except Exception:  # a truncated or foreign file: measure again
        return None
    return record['value'] if isinstance(record, dict) and record.get('key') == key else None


def write_cache(path: Path, key: dict, value: dict) -> None:
    """Write the float-model measurement atomically (a kill mid-write leaves no half file)."""
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    torch.save({'key': key, 'value': value}, tmp)
    os.replace(tmp, path)


def write_policies(search, budgets, columns: dict, folder: Path, log) -> dict:
    """``folder/sensitivity_<kind>_<budget>.json`` for each score kind and budget; ``{file: summary}``.

    Raises:
        InputError: a budget the search refuses (malformed or unreachable).
    """
    from ssps_nni.score_calibration import SCORE_KINDS
    from ssps_nni.sensitivity import policies_at

    folder.mkdir(parents=True, exist_ok=True)
    summary = {}
    for kind in SCORE_KINDS:
        scores = columns.get(kind)
        if scores is None:
            continue
        try:
            found = policies_at(search, scores, budgets)
        except (SSPSError, ValueError) as err:
            raise InputError(f'--policies-at: {err}') from None
        for budget, policy in found.items():
            policy.meta['scores'] = kind
            name = f'sensitivity_{kind}_{budget.replace("=", "_").replace(",", "_")}.json'
            policy.save(folder / name)
            bits = [(e['w_bits'], e['a_bits']) for e in policy.layers.values() if not e.get('pinned')]
            total = policy.meta['totals'][policy.meta['cost_model']]
            summary[name] = {'a2': sum(a == 2 for _, a in bits), 'w2': sum(w == 2 for w, _ in bits),
                             'cost/target': round(total['policy'] / total['target'], 4)}
            log(f'{name}: {summary[name]}')
    return summary


def cached_adapted(search, loss, model, loader, fit, measure, args, batch_size, seed, key, log) -> dict:
    """:func:`ssps_nni.adapted.adapted_increase` on ``--adapt-steps`` fit batches, read on ``measure``; cached."""
    from ssps_nni.adapted import adapted_increase

    cache = Path(args.out) / 'adapted_measurement.pt'
    key = dict(key, adapt_steps=args.adapt_steps)
    adapted = read_cache(cache, key)
    if adapted is not None:
        log(f'adapted loss increase read from {cache} (same settings)')
        return adapted
    # other fit samples than the score batches' (the seed differs)
    train = split_batches(model, loader.dataset, loader.collate_fn, fit, args.adapt_steps, batch_size, seed + 1)
    adapted = adapted_increase(search, loss, train, measure, steps=args.adapt_steps)
    log(f'loss increase after {args.adapt_steps} QAT steps: weights {adapted["w"]:.4f}, activations '
        f'{adapted["a"]:.4f} ({adapted["seconds"]:.1f} s)')
    write_cache(cache, key, adapted)
    return adapted


def run(cfg, args) -> dict:
    """Measure and write the report; returns the written paths."""
    from ssps_nni.proxy import HOLDOUT_EVERY, holdout_split, measured_increase
    from ssps_nni.proxy_report import proxy_rows, write_proxy_report
    from ssps_nni.adapted import adapted_factors
    from ssps_nni.sampler import SLOTS
    from ssps_nni.score_calibration import calibrated, calibration_factors
    from ssps_nni.sensitivity import first_order_scores

    from .methods import prepared_search

    start = time.perf_counter()
    runner, model, search, loader = prepared_search(cfg)
    log = runner.logger.info
    space = search.space
    batch_size = args.batch_size or loader.batch_size
    seed = search.config.seed
    fit, held = holdout_split(len(loader.dataset))
    score = split_batches(model, loader.dataset, loader.collate_fn, fit, args.score_batches, batch_size, seed)
    measure = split_batches(model, loader.dataset, loader.collate_fn, held, args.measure_batches, batch_size, seed)
    loss = batch_loss(model)
    ready = time.perf_counter()
    key = {'config': str(args.config), 'load_from': str(cfg.get('load_from', None)), 'seed': seed,
           'batch_size': batch_size, 'score_batches': len(score), 'measure_batches': len(measure),
           'layers': list(space.searched), 'candidates': {s: list(c) for s, c in space.candidates.items()}}
    cache = Path(args.out) / 'float_measurement.pt'
    cached = read_cache(cache, key)
    if cached is None:
        first = first_order_scores(search, loss, score, len(score))
        scored = time.perf_counter()
        log(f'scores on {len(score)} fit batches in {scored - ready:.1f} s')
        truth = measured_increase(search, loss, measure, 'float', progress=log)
        write_cache(cache, key, {'first': first, 'truth': truth, 'score_s': scored - ready})
    else:
        log(f'float model: scores and measurement read from {cache} (same settings)')
        first, truth = cached['first'], cached['truth']
        scored = ready + cached['score_s']
    columns = {'fisher': first['squared'], 'first_order': first['signed'],
               'measured': {s: truth[s] for s in SLOTS}, 'measured_se': truth.get('se')}
    comparisons = {'Float model: squared score (sensitivity method) vs measured': ('fisher', 'measured'),
                   'Float model: signed first-order score vs measured': ('first_order', 'measured')}
    meta = {'command': 'ssps sensitivity ' + ' '.join(args.argv), 'config': args.config,
            'load_from': cfg.get('load_from', None), 'batch_size': batch_size,
            'split': f'training set, one image in {HOLDOUT_EVERY} held out ({len(held)} held out, {len(fit)} fit)',
            'score_batches': len(score), 'measure_batches': len(measure),
            'float_reference_loss': round(truth['base'], 5),
            'setup_s': round(ready - start, 1), 'score_s': round(scored - ready, 1),
            'measure_s': round(truth['seconds'], 1), 'measure_forwards': truth['forwards']}
    try:  # nothing measurable (no positive sum) leaves the calibrated column out
        factors = calibration_factors(first['squared'], truth, space.candidates)
        per_bit = calibration_factors(first['squared'], truth, space.candidates, per_bit=True)
        columns['calibrated'] = calibrated(first['squared'], factors)
        meta['calibration_factors'] = {s: round(float(f[0]), 6) for s, f in factors.items()}
        meta['calibration_factors_per_bit'] = {s: [round(float(v), 6) for v in f] for s, f in per_bit.items()}
    except ValueError as err:
        meta['calibration_factors'] = f'not fitted: {err}'
    if args.adapt_steps:
        adapted = cached_adapted(search, loss, model, loader, fit, measure, args, batch_size, seed, key, log)
        meta.update(adapt_steps=args.adapt_steps, adapted_increase={s: round(adapted[s], 5) for s in SLOTS},
                    adapt_s=round(adapted['seconds'], 1))
        try:
            afactors = adapted_factors(first['squared'], adapted, space.candidates)
            columns['adapted'] = calibrated(first['squared'], afactors)
            meta['adapted_factors'] = {s: round(float(f[0]), 6) for s, f in afactors.items()}
        except ValueError as err:
            meta['adapted_factors'] = f'not fitted: {err}'
    if args.policies_at:
        meta['policies'] = write_policies(search, args.policies_at, columns, Path(args.out) / 'policies', log)
    if args.checkpoint:
        state = load_search_state(model, search, args.checkpoint)
        at = measured_increase(search, loss, measure, 'policy', progress=log)
        columns['search_D'] = {s: search.scores.value(s) for s in SLOTS}
        columns['measured_search'] = {s: at[s] for s in SLOTS}
        columns['measured_search_se'] = at['se']
        comparisons['Search state: running score D vs measured from the search policy'] = ('search_D', 'measured_search')
        meta.update(checkpoint=args.checkpoint, checkpoint_step=int(state['step']),
                    search_policy=' '.join(f'{n}:W{w}A{a}' for n, (w, a) in space.bits().items()
                                           if n in space.searched),
                    search_reference_loss=round(at['base'], 5), search_measure_s=round(at['seconds'], 1))
    rows = proxy_rows(space.searched, space.candidates, columns)
    paths = write_proxy_report(args.out, rows, comparisons, meta)
    log(f'sensitivity report in {time.perf_counter() - start:.1f} s: {paths["md"]}')
    return paths


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps sensitivity``; returns the exit status (0 done, 2 bad input)."""
    args = parse_args(argv, prog)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_args(args)
        from ssps_nni.driver_config import shared

        from .hook_config import hook_options, search_config
        from .search_args import build_config, check_inputs

        cfg = build_config(args)
        config = search_config(cfg)  # the one parse of --budget; the run's hook takes this config (shared)
        check_inputs(cfg)
        if args.out is None:
            args.out = str(Path('work_dirs') / f'sensitivity_{Path(args.config).stem}')
        cfg.work_dir = args.out
        with shared(config, hook_options(cfg)):
            paths = run(cfg, args)
    except (InputError, SSPSError) as err:
        return fail(prog, err)
    for path in paths.values():
        print(f'wrote {path}')
    return 0
