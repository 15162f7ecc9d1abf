"""A checked sweep run end to end: lock the work dir (``cli/lock.py``), run (or reuse) every run, write the frontier."""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from ..common import InputError, fail
from ..lock import WorkDirLock
from . import frontier, plan, plots, report
from .profile import pricer
from .scheduler import Scheduler, clock
from .signals import SweepStop


def resolve_config(s: dict, out: Path) -> None:
    """The config resolved once into ``OUT/config.py`` (no ``_base_``): what every run loads.

    Resolving ``mmpretrain::`` bases reads the package's model index (about a second per run);
    the resolved file loads in a few milliseconds. Its text is the runs' cache key of the config
    (a changed base file changes it).
    """
    import hashlib

    from mmengine.config import Config

    from ssps_nni.files import atomic_write

    text = Config.fromfile(s['config']).pretty_text
    s['run_config'] = str(atomic_write(out / 'config.py', text))
    s['config_sha1'] = hashlib.sha1(text.encode()).hexdigest()


def describe(metric_of):
    """The end of a progress line: the run's metric and cost ratio, or the policy's cost ratio."""
    def text(job, result: dict) -> str:
        if result.get('alias'):
            return f'same policy as {result["alias"]} ({result.get("why")})'
        if isinstance(result.get('metrics'), dict):
            key = metric_of(result)
            value = result['metrics'].get(key) if key else None
            return f'{key} {value:.2f}' if isinstance(value, (int, float)) else 'evaluated'
        if 'cost_ratio' in result:
            return f'policy at {result["cost_ratio"]:.3f} of the budget'
        if 'scores' in result:
            return f'scores in {result["scores"]}'
        return ''
    return text


def plan_summary(s: dict) -> str:
    """What a sweep would run: the runs per kind and how many of them have a ``done.json`` already."""
    jobs = plan.build(dict(s, run_config=s['config']))
    root = Path(s['work_dir']) / 'runs'
    kinds: dict[str, list[int]] = {}
    for job in jobs:
        count = kinds.setdefault(job.kind, [0, 0])
        count[0] += 1
        count[1] += (root / job.name / 'done.json').is_file()
    lines = [f'{len(jobs)} runs in {s["work_dir"]} (a policy equal to a uniform point later reuses its run):']
    lines += [f'  {kind:18s} {n:4d}  ({done} with a done.json)' for kind, (n, done) in kinds.items()]
    lines.append('budgets: ' + ', '.join(f'{b["label"]} = {b["text"]}' for b in s['budgets']))
    lines.append(f'uniform points: {", ".join(s["uniform"])} (+ W8A8); seeds {s["seeds"]}; methods {s["methods"]}')
    return '\n'.join(lines)


def cached(jobs: list, out: Path) -> dict:
    """The finished runs (``done.json`` of the same settings) among the jobs that need no other run."""
    from ..benchmark.runs import RunCache

    cache, found = RunCache(out, lambda msg: None), {}
    for job in jobs:
        made = job.make({}) if not job.deps else None
        if isinstance(made, plan.Run) and (result := cache.lookup(job.name, made.settings)) is not None:
            found[job.name] = result
    return found


def stopped_line(prog: str, signum: int, done: int, total: int, out: Path) -> str:
    """The one line of a sweep stopped by a signal: the runs done and how to resume."""
    what = 'interrupted' if signum == signal.SIGINT else f'stopped by {signal.Signals(signum).name}'
    return (f'{prog}: {what} after {done} of {total} runs; run the same command again to resume (finished runs '
            f'in {out / "runs"} are reused)')


def sweep(s: dict, prog: str, started: float) -> int:
    """Run the sweep of settings ``s`` (``command.resolve``); returns the exit status.

    Returns:
        0 done, 1 some runs failed, 128 + signal when stopped by SIGINT/SIGTERM (:mod:`.signals`).

    Raises:
        InputError: ``--metric`` names a metric that the finished runs do not report (checked on
            the runs already finished, then on the first finished evaluation, before any output
            is written).
    """
    from ..benchmark.common import environment

    out = Path(s['work_dir'])
    try:
        held = WorkDirLock(out, prog).acquire()  # one sweep per work dir, as search and train
    except InputError as err:
        return fail(prog, err)
    jobs, scheduler = [], None
    with SweepStop() as stop:
        try:
            costs = s.pop('costs')
            resolve_config(s, out)
            priced = pricer(costs)  # the costs train_result.json does not hold (bitfusion), from the profile
            import torch

            env = environment('cuda' if torch.cuda.is_available() else 'cpu')
            jobs = plan.build(s)
            frontier.check_metric(cached(jobs, out), s.get('metric'))  # a rerun: refused before any output
            from ssps_nni.files import atomic_write

            atomic_write(out / 'sweep.json', json.dumps(s, indent=2, default=str) + '\n')
            console = sys.stdout

            def say(line: str) -> None:
                print(line, file=console, flush=True)

            say(f'{prog}: {len(jobs)} runs in {out}: {len(s["budgets"])} budget(s) '
                f'({", ".join(b["label"] for b in s["budgets"])}) x {", ".join(s["methods"])}, {len(s["uniform"])} '
                f'uniform points ({", ".join(s["uniform"])}) + W8A8 and FP32, {len(s["seeds"])} paired seed(s), '
                f'retraining {s["retrain"]["epochs"]} epoch(s), {s["jobs"]} at a time; finished runs are reused')
            state = {'metric': None}

            def metric_of(result):
                if state['metric'] is None:
                    state['metric'] = frontier.pick_metric({'r': result}, s.get('metric'))
                return state['metric']

            def write(results: dict, final: bool = False) -> dict:
                frontier.check_metric(results, s.get('metric'))  # before anything is (over)written
                data = frontier.build(s, results, len(jobs), priced, env)
                frontier.write(out / 'frontier.json', data)
                atomic_write(out / 'frontier.md', report.markdown(data) + '\n')
                if final:
                    plots.frontier_png(data, out / 'frontier.png')
                    if data.get('sensitivity_scores'):
                        plots.sensitivity_png(data['sensitivity_scores'], out / 'sensitivity.png')
                return data

            scheduler = Scheduler(jobs, out, s['jobs'], say, finished=write, describe=describe(metric_of), stop=stop)
            results = scheduler.run()
            data = write(results, final=True)
        except BaseException as err:  # noqa: BLE001  (a stop request makes any exception the interruption)
            signum = stop.poll()
            if signum is None and isinstance(err, KeyboardInterrupt):
                signum = getattr(err, 'signum', signal.SIGINT)
            if signum is None:
                raise
            if scheduler is not None:
                try:
                    write(scheduler.results, final=True)
                except (KeyboardInterrupt, InputError):  # a second signal: no plots; a bad --metric: nothing
                    pass
            print(stopped_line(prog, signum, len(scheduler.results) if scheduler else 0, len(jobs), out),
                  file=sys.stderr)
            return 128 + signum
        finally:
            held.release()
    say('')
    for p in data['points']:
        v = p.get('vs_uniform') or {}
        if p['mean'] is None:
            continue
        se = f' ± {v["se"]:.2f}' if v.get('se') is not None else ''
        line = f'{v["mean"]:+.2f}{se} vs the uniform line' if v.get('mean') is not None else 'no uniform line'
        say(f'  {p["budget"]:>22} {p["method"]:>11}: {data["metric"]} {p["mean"]:.2f}, {line}: {v.get("verdict")}')
    written = ', '.join(str(out / n) for n in ('frontier.json', 'frontier.md', 'frontier.png', 'sensitivity.png')
                        if (out / n).is_file())
    say(f'{prog}: {scheduler.ran} runs done, {scheduler.reused} reused, {len(scheduler.failed)} failed in '
        f'{clock(time.perf_counter() - started)}; wrote {written}')
    if scheduler.failed:
        print(f'{prog}: {len(scheduler.failed)} run(s) failed (first: {next(iter(scheduler.failed.items()))}); '
              'their points are missing; rerun the same command to retry them', file=sys.stderr)
        return 1
    return 0
