"""The runs of ``ssps sweep``, as a worker process (or the sweep itself with ``--jobs 1``) runs them.

Each run is a call of ``ssps train`` / ``ssps search`` in process through the benchmark's run
functions (``ssps_nni.cli.benchmark.runs``), or, for the sensitivity method, the steps of
``ssps search --method sensitivity`` split in two: :func:`scores_run` measures the scores once
per sweep and :func:`solve_run` solves them for one budget. :func:`execute` wraps a run in the
benchmark's :class:`~ssps_nni.cli.benchmark.runs.RunCache` (``OUT/runs/<name>/done.json``), with
the run's output in ``OUT/runs/<name>/run.log``.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from ..benchmark.runs import RunCache, policy_run, train_run
from . import signals

SCORES_JSON = 'sensitivity_scores.json'


def search_argv(folder: Path, config: str, options: list[str], seed: int, budget_arg: str, method: str,
                load_from: str, extra: list[str]) -> list[str]:
    return [config, '--work-dir', str(folder), '--seed', str(seed), '--budget', budget_arg, '--method', method,
            '--load-from', load_from, *extra, '--cfg-options', *options,
            f'experiment_name={folder.name}_{os.getpid()}']


def prepared(argv: list[str]):
    """``ssps search``'s checks and set-up of ``argv`` (no training): ``(cfg, runner, model, search, loader)``."""
    from ssps_nni.driver_config import shared

    from .. import search as search_cli
    from ..hook_config import hook_options
    from ..methods import prepared_search

    args = search_cli.parse_args(argv)
    search_cli.check_args(args)
    cfg = search_cli.build_config(args)
    config = search_cli.validate(cfg)  # the one parse of the budget; prepared_search's hook takes it (shared)
    with shared(config, hook_options(cfg)):
        return (cfg, *prepared_search(cfg))


def scores_run(folder: Path, config: str, options: list[str], seed: int, budget_arg: str, load_from: str,
               batches: int, extra: list[str] = ()) -> dict:
    """The sensitivity scores (``ssps_nni.sensitivity.sensitivity_scores``) of the start model, once.

    Writes ``folder/sensitivity_scores.json``: ``{'layers': [...], 'candidates': {'w', 'a'},
    'w': [[...]], 'a': [[...]], 'batches': N}`` (mean squared first-order scores, loss squared).
    """
    from ssps_nni.files import atomic_write
    from ssps_nni.sensitivity import sensitivity_scores

    from ..methods import cycled_batches, loss_function

    start = time.perf_counter()
    _, _, model, search, loader = prepared(search_argv(folder, config, options, seed, budget_arg, 'sensitivity',
                                                       load_from, [*extra, '--sensitivity-batches', str(batches)]))
    scores = sensitivity_scores(search, loss_function(model), cycled_batches(loader, batches), num_batches=batches)
    record = {'layers': list(search.space.searched), 'batches': batches,
              'candidates': {s: list(search.space.candidates[s]) for s in ('w', 'a')},
              'w': scores['w'].tolist(), 'a': scores['a'].tolist()}
    path = atomic_write(folder / SCORES_JSON, json.dumps(record) + '\n')
    return {'scores': str(path), 'measure_s': time.perf_counter() - start}


def solve_run(folder: Path, config: str, options: list[str], seed: int, budget_arg: str, load_from: str,
              scores_path: str, extra: list[str] = ()) -> dict:
    """The sensitivity policy at one budget from scores measured once (:func:`scores_run`)."""
    import torch

    from ssps_nni.sensitivity import sensitivity_policy

    from ..methods import write_policy

    start = time.perf_counter()
    record = json.loads(Path(scores_path).read_text())
    _, runner, _, search, _ = prepared(search_argv(folder, config, options, seed, budget_arg, 'sensitivity',
                                                   load_from, extra))
    if list(search.space.searched) != record['layers']:
        raise RuntimeError(f'{scores_path} scores other layers than this search ({len(record["layers"])} vs '
                           f'{len(search.space.searched)}); delete it to measure again')
    scores = {s: torch.tensor(record[s], dtype=torch.float64) for s in ('w', 'a')}
    policy = sensitivity_policy(search, scores)
    write_policy(runner, policy, f'sensitivity (scores of {scores_path})', start)
    totals = policy.meta['totals']  # as written to policy.json
    first = next(iter(totals.values()))
    return {'policy': str(folder / 'policy.json'), 'cost_ratio': first['policy'] / first['target'],
            'search_s': time.perf_counter() - start}


def train(folder: Path, **kwargs) -> dict:
    return train_run(folder, **kwargs)


def find(folder: Path, **kwargs) -> dict:
    return policy_run(folder, **kwargs)


#: Run functions by name (what a job names; picklable across processes).
RUNS = {'train': train, 'find': find, 'scores': scores_run, 'solve': solve_run}


@contextlib.contextmanager
def output_to(path: Path):
    """File descriptors 1 and 2 (and ``sys.stdout``/``stderr``) into ``path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, 'ab', buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def execute(out: str, name: str, settings: dict, run: str, kwargs: dict) -> dict:
    """Run ``RUNS[run](folder, **kwargs)`` under the cache as ``OUT/runs/<name>`` (or reuse it).

    The run's output goes to ``OUT/runs/<name>/run.log``; a failing ``ssps`` call raises
    ``RuntimeError`` naming that log; a run that ends in any exception after this process
    received SIGINT/SIGTERM (:mod:`.signals`) raises :class:`~.signals.RunInterrupted`.
    """
    cache = RunCache(Path(out), lambda msg: None)
    received = signals.current()
    mark = received.count() if received is not None else 0

    def call(folder: Path) -> dict:
        log = folder / 'run.log'
        try:
            with output_to(log):
                return RUNS[run](folder, **kwargs)
        except BaseException as err:  # (the message names the log; the traceback is in it)
            with open(log, 'a') as f:
                import traceback
                traceback.print_exc(file=f)
            signum = received.received(mark) if received is not None else None
            if signum is not None:  # e.g. a SyntaxError of mmengine's config formatting, cut by the signal
                raise signals.RunInterrupted(signum, name) from None
            if isinstance(err, SystemExit):  # a run's argparse (the sweep checks the options first)
                raise RuntimeError(f'{name} exited with status {err.code}; see {log}') from None
            if not isinstance(err, Exception):
                raise
            raise RuntimeError(f'{name} failed ({type(err).__name__}: {err}); see {log}') from None

    return cache.get(name, settings, call)


# -- worker processes --------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    """End this worker when the sweep that started it is gone (killed: nothing else would stop it)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def init_worker(parent: int, threads: int, cwd: str) -> None:
    """Worker set-up: threads per run, the repository as working directory, the parent watchdog."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep handles Ctrl-C and ends its workers
    signals.watch()  # a run that a signal stopped counts as interrupted (execute)
    os.chdir(cwd)
    os.environ['OMP_NUM_THREADS'] = str(threads)
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
