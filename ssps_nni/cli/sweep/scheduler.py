"""Runs a sweep's jobs: finished ones reused, the rest in order, ``--jobs N`` at a time, with an ETA.

With ``jobs == 1`` every run happens in this process; with more, in a pool of worker processes
(``spawn``: each imports torch and the OpenMMLab stack once and then takes run after run, so
a run pays no start-up). A job starts when the jobs it depends on have finished; among the ready
ones the first in plan order goes first. After every finished run one progress line is printed:
runs done of all, time so far and the estimated time left (the mean time of the finished runs of
each kind, this sweep's earlier calls included, over the open runs, divided by the jobs).
A failed run is reported and its dependants skipped; the others go on. A stop requested by a
signal (``stop``, :class:`~ssps_nni.cli.sweep.signals.SweepStop`) ends the loop between runs and
while it waits for workers: :class:`ssps_nni.cli.stop.Interrupted` is raised, the workers are
terminated, and a run that ended after the signal (in any exception) counts as interrupted, not
as failed.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import statistics
import time
from pathlib import Path

from ..benchmark.runs import RunCache
from ..stop import Interrupted
from .jobs import execute, init_worker
from .plan import Alias
from .signals import NoStop, RunInterrupted


#: Kinds of run of similar length, for the ETA before a kind has a finished run (``policy:<method>``
#: kinds are grouped by the part before the colon).
GROUPS = {'fp32': 'train', 'uniform': 'train', 'retrain': 'train', 'policy': 'policy', 'scores': 'policy'}


def clock(seconds: float | None) -> str:
    """``'1h02m'``, ``'4m05s'``, ``'12s'`` or ``'?'``."""
    if seconds is None:
        return '?'
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    if seconds >= 60:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds}s'


class Scheduler:
    """Executes :class:`~ssps_nni.cli.sweep.plan.Job` s (see the module docstring).

    Args:
        jobs: in priority order. out: the sweep's work dir (runs in ``out/runs``).
        workers: parallel runs. print_line: where progress lines go.
        finished: ``finished(results)`` after every finished or reused run (e.g. rewrite the frontier).
        describe: ``describe(job, result) -> str``: the end of a job's progress line.
        stop: what says a signal asks the sweep to stop (``poll()``, ``request(signum)``;
            default: never).
    """

    #: Seconds between two looks at ``stop`` while waiting for workers.
    POLL_S = 0.5
    #: Seconds the workers get to end on SIGTERM before they are killed.
    TERMINATE_S = 3.0

    def __init__(self, jobs, out: Path, workers: int, print_line, finished=None, describe=None, stop=None):
        self.jobs = {j.name: j for j in jobs}
        self.order = [j.name for j in jobs]
        self.out = Path(out)
        self.workers = max(1, int(workers))
        self.print = print_line
        self.finished = finished or (lambda results: None)
        self.describe = describe or (lambda job, result: '')
        self.results: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.durations: dict[str, list[float]] = {}
        self.ran = self.reused = 0
        self.start = time.perf_counter()
        self.running: dict[str, float] = {}
        self.stop = stop or NoStop()

    # -- estimates ---------------------------------------------------------------------------

    def _expected(self, kind: str) -> float | None:
        """Mean time of the finished runs of this kind, else of its group (training runs, policies), else all."""
        own = self.durations.get(kind)
        if own:
            return statistics.fmean(own)
        mine = GROUPS.get(kind.split(':')[0])
        group = [d for k, ds in self.durations.items() if GROUPS.get(k.split(':')[0]) == mine for d in ds]
        if group:
            return statistics.fmean(group)
        every = [d for ds in self.durations.values() for d in ds]
        return statistics.fmean(every) if every else None

    def eta(self) -> float | None:
        """Seconds left: expected time of the open runs (less what the running ones have done) / workers."""
        now, total = time.perf_counter(), 0.0
        for name in self.order:
            if name in self.results or name in self.failed:
                continue
            expected = self._expected(self.jobs[name].kind)
            if expected is None:
                return None
            if name in self.running:
                expected = max(expected - (now - self.running[name]), 0.0)
            total += expected
        return total / self.workers

    def _record(self, job, result: dict, reused: bool) -> None:
        self.results[job.name] = result
        if reused:
            self.reused += 1
        else:
            self.ran += 1
        if isinstance(result.get('run_s'), (int, float)) and not result.get('alias'):
            self.durations.setdefault(job.kind, []).append(float(result['run_s']))
        done = len(self.results) + len(self.failed)
        what = job.info.get('what', job.name)
        tail = self.describe(job, result)
        how = 'reused' if reused else clock(result.get('run_s'))
        self.print(f'[sweep {done:3d}/{len(self.order)} | {clock(time.perf_counter() - self.start)} | '
                   f'ETA {clock(self.eta())}] {what}{" seed " + str(job.info["seed"]) if "seed" in job.info else ""}'
                   f'{": " + tail if tail else ""} ({how})')
        self.finished(self.results)

    def _fail(self, name: str, why: str) -> None:
        self.failed[name] = why
        self.print(f'[sweep] FAILED {name}: {why}')
        for other in self.order:  # dependants cannot run
            if other not in self.failed and other not in self.results and name in self.jobs[other].deps:
                self._fail(other, f'needs {name}, which failed')

    # -- the loop ----------------------------------------------------------------------------

    def _start(self, job, cache, pool_holder: list, futures: dict) -> bool:
        """Start (or settle) a job whose dependencies are done; False when no worker is free."""
        try:
            made = job.make({d: self.results[d] for d in job.deps})
        except Exception as err:  # noqa: BLE001  (e.g. a policy that cannot be read)
            self._fail(job.name, f'{type(err).__name__}: {err}')
            return True
        if isinstance(made, Alias):
            if made.name in self.results:
                self._record(job, dict(self.results[made.name], alias=made.name, why=made.why), True)
            elif made.name in self.failed:
                self._fail(job.name, f'same as {made.name}, which failed')
            else:  # wait for that run: it becomes this job's one dependency
                job.deps = (made.name,)
                job.make = (lambda dep, a=made: a)
                return False
            return True
        cached = cache.lookup(job.name, made.settings)
        if cached is not None:
            self._record(job, cached, True)
            return True
        if len(futures) >= self.workers:
            return False
        self.running[job.name] = time.perf_counter()
        if self.workers == 1:  # in this process
            try:
                result = execute(str(self.out), job.name, made.settings, made.run, made.kwargs)
            except RunInterrupted as err:
                self.running.pop(job.name, None)
                self.stop.request(err.signum)
                raise Interrupted(err.signum) from None
            except Exception as err:  # noqa: BLE001
                self.running.pop(job.name, None)
                self._check_stop()  # whatever a run raises once a stop is requested: the interruption
                self._fail(job.name, str(err))
                return True
            self.running.pop(job.name, None)
            self._record(job, result, False)
            return True
        if not pool_holder:
            pool_holder.append(self._pool())
        try:
            fut = pool_holder[0].submit(execute, str(self.out), job.name, made.settings, made.run, made.kwargs)
        except cf.process.BrokenProcessPool:  # a worker died (e.g. out of memory): a fresh pool
            self._stop(pool_holder.pop(), {})
            pool_holder.append(self._pool())
            fut = pool_holder[0].submit(execute, str(self.out), job.name, made.settings, made.run, made.kwargs)
        futures[fut] = job
        return True

    def run(self) -> dict:
        """Run every job; returns ``{name: result}`` (failed ones are in ``self.failed``)."""
        cache = RunCache(self.out, lambda msg: None)
        pending = list(self.order)
        pool_holder: list = []
        futures: dict[cf.Future, object] = {}
        try:
            while True:
                progressed = True
                while progressed:  # start what can start, first in plan order first
                    progressed = False
                    for name in list(pending):
                        self._check_stop()
                        job = self.jobs[name]
                        if name in self.failed or name in self.results:
                            pending.remove(name)
                            continue
                        if not all(d in self.results for d in job.deps):
                            continue
                        if self._start(job, cache, pool_holder, futures):
                            pending.remove(name)
                            progressed = True
                            break
                if not futures:
                    for name in pending:  # a run they need failed, or never can start
                        if name not in self.failed and name not in self.results:
                            self._fail(name, 'a run it needs did not finish')
                    break
                done, _ = cf.wait(futures, timeout=self.POLL_S, return_when=cf.FIRST_COMPLETED)
                for fut in done:  # the finished ones first (kept), then a requested stop
                    job = futures.pop(fut)
                    self.running.pop(job.name, None)
                    try:
                        result = fut.result()
                    except RunInterrupted as err:  # a signal reached the worker: the sweep stops
                        self.stop.request(err.signum)
                        continue
                    except Exception as err:  # noqa: BLE001
                        if self.stop.poll() is None:  # after a stop request: cancelled, not failed
                            self._fail(job.name, str(err))
                        continue
                    self._record(job, result, False)
                self._check_stop()
        finally:
            if pool_holder:
                self._stop(pool_holder[0], futures)
        return self.results

    def _check_stop(self) -> None:
        """Raise :class:`~ssps_nni.cli.stop.Interrupted` when a signal asked the sweep to stop."""
        signum = self.stop.poll()
        if signum is not None:
            raise Interrupted(signum)

    def _pool(self):
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context('spawn'),
                                      initializer=init_worker, initargs=(os.getpid(), threads, os.getcwd()))

    @staticmethod
    def _stop(pool, futures) -> None:
        """End the pool now: cancel what has not started, terminate the running workers."""
        for fut in futures:
            fut.cancel()
        processes = list(getattr(pool, '_processes', {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + Scheduler.TERMINATE_S
        for proc in processes:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():  # (a stopped run is run again from its start: nothing of it to save)
                proc.kill()
                proc.join(timeout=5)
