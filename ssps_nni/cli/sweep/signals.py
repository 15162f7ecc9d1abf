"""A sweep stopped by SIGINT (Ctrl-C) or SIGTERM: the finished runs are kept, the current ones cancelled.

The first signal stops the sweep (:class:`SweepStop`): no run starts after it, the runs under way
are cancelled (``--jobs 1``: the run in this process stops as ``ssps train`` / ``ssps search`` do
on a signal; ``--jobs N``: the workers are terminated), the frontier of the finished runs is
written and the sweep exits with ``128 + signal`` (130 SIGINT, 143 SIGTERM). Every finished run
keeps its ``done.json``: the same command again resumes. A second signal stops at once.

A run in this process installs its command's own handlers (``ssps_nni.cli.stop.GracefulStop``),
so the sweep's handler does not see a signal that arrives during a run, and the run may end in
any exception: mmengine's config formatting turns a ``KeyboardInterrupt`` into a ``SyntaxError``
(a bare ``except`` around yapf). So every process of a sweep records the signals it receives
below the Python handlers, through :func:`signal.set_wakeup_fd` (:class:`SignalLog`, whichever
handler runs), and a run that fails after a signal counts as interrupted
(:class:`RunInterrupted`), never as failed.
"""
from __future__ import annotations

import os
import signal
import threading

from ..stop import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """A run that ended (in any way) after this process received ``signum``; picklable (workers).

    Args:
        signum: the signal (SIGINT or SIGTERM). name: the run.
    """

    def __init__(self, signum: int, name: str):
        super().__init__(signum, name)
        self.signum = signum
        self.name = name

    def __str__(self) -> str:
        return f'{self.name} stopped by {signal.Signals(self.signum).name}'


class SignalLog:
    """The SIGINT/SIGTERM this process received while :meth:`start` ed, whichever Python handler ran.

    Python's C-level handler writes the number of every signal that has a Python handler (not
    ``SIG_IGN``/``SIG_DFL``) to the wakeup fd (a non-blocking pipe here); :meth:`received` reads
    them. Only in the main thread (elsewhere it records nothing).
    """

    def __init__(self):
        self.seen: list[int] = []  # in order of arrival
        self._read = self._write = None
        self._previous = -1

    def start(self) -> 'SignalLog':
        if threading.current_thread() is threading.main_thread() and self._read is None:
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)
            self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        return self

    def received(self, since: int = 0) -> int | None:
        """The first SIGINT/SIGTERM among the signals after the first ``since`` ones, else None."""
        while self._read is not None:
            try:
                data = os.read(self._read, 512)
            except BlockingIOError:
                break
            if not data:
                break
            self.seen += [b for b in data if b in SIGNALS]
        return next(iter(self.seen[since:]), None)

    def count(self) -> int:
        """SIGINT/SIGTERM received so far (a mark for :meth:`received`)."""
        self.received()
        return len(self.seen)

    def close(self) -> None:
        if self._read is not None:
            self.received()
            signal.set_wakeup_fd(self._previous)
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = None


#: This process's log (:func:`watch`), read by ``jobs.execute`` around every run.
_LOG: SignalLog | None = None


def watch() -> SignalLog:
    """Start (once) this process's :class:`SignalLog` and return it."""
    global _LOG
    if _LOG is None:
        _LOG = SignalLog().start()
    return _LOG


def unwatch() -> None:
    global _LOG
    if _LOG is not None:
        _LOG.close()
        _LOG = None


def current() -> SignalLog | None:
    return _LOG


class SweepStop:
    """SIGINT/SIGTERM handlers of a sweep; a context manager (handlers and wakeup fd restored on exit).

    The first signal is only recorded (:meth:`poll`); the scheduler acts on it between runs and
    while it waits for workers. A second raises :class:`ssps_nni.cli.stop.Interrupted` at once.
    """

    def __init__(self):
        self.requested: int | None = None
        self.log: SignalLog | None = None
        self._previous: dict = {}
        self._owner = os.getpid()

    def __enter__(self) -> 'SweepStop':
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
            self.log = watch()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self.log is not None:
            unwatch()
            self.log = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._owner:
            return  # a forked child (a dataloader worker): the sweep decides
        # the wakeup fd has this signal already: a second is one more (or a stop already requested)
        earlier = self.requested is not None or (self.log is not None and self.log.count() > 1)
        if not earlier:
            self.requested = signum
            return
        raise Interrupted(signum)

    def request(self, signum: int) -> None:
        """Stop as if ``signum`` had arrived here (a worker's run was stopped by it)."""
        if self.requested is None:
            self.requested = signum

    def poll(self) -> int | None:
        """The signal that stops the sweep: one received by this process's handlers (the sweep's or a run's)."""
        if self.requested is None and self.log is not None:
            self.requested = self.log.received()
        return self.requested


class NoStop:
    """A scheduler without signal handling (never stops)."""
    requested = None

    def request(self, signum: int) -> None:
        self.requested = signum

    def poll(self) -> int | None:
        return self.requested
