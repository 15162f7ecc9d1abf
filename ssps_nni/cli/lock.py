"""One run per work dir: ``ssps search`` and ``ssps train`` hold a lock on their work dir.

Two runs in one work dir write the same checkpoint files, ``last_checkpoint`` and policy, and
mmengine's timestamped log folder of two runs started in the same second is one folder; mmengine
does not guard against it. :func:`work_dir_lock` takes an exclusive ``fcntl.flock`` on
``WORK_DIR/.ssps.lock`` for the whole run and writes into it who holds it (command, pid, host,
start time); a second run is refused (exit 2) with that line. The kernel drops a flock when
its process dies, so the lock file of a killed run (SIGKILL, a node lost) is taken over by
the next run, with a warning naming the run that left it.

Where the file system has no ``flock`` (``ENOLCK``, ``EOPNOTSUPP``), the file itself is the
lock (``O_EXCL``): a lock of a process of this host that is no longer running is taken over,
one of another host is refused, naming the file to delete once that run is over. Under data
parallelism only rank 0 (``RANK`` / ``SLURM_PROCID`` 0 or unset) takes the lock.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .common import InputError

LOCK_NAME = '.ssps.lock'
#: ``flock`` errors of a file system that does not support it (then the file is the lock).
NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def _holder(command: str) -> dict:
    return {'command': command, 'pid': os.getpid(), 'host': socket.gethostname(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S %z')}


def _describe(holder: dict | None) -> str:
    if not holder:
        return 'a run that left no details'
    return (f"{holder.get('command', 'a run')} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


def _read(fd: int) -> dict | None:
    """The holder recorded in the lock file (None: empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b''
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        holder = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + '\n').encode())
    os.fsync(fd)


def _running_here(holder: dict | None) -> bool:
    """The holder is a process of this host that is still running."""
    if not holder or holder.get('host') != socket.gethostname():
        return False
    try:
        os.kill(int(holder['pid']), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # running, as another user
    return True


def _is_rank_zero() -> bool:
    for name in ('RANK', 'SLURM_PROCID'):
        if os.environ.get(name, '0').strip() not in ('', '0'):
            return False
    return True


class WorkDirLock:
    """The lock of one work dir, held from :meth:`acquire` to :meth:`release`.

    Args:
        work_dir: the run's work dir (created if missing).
        command: who takes it, for the other run's message (e.g. ``'ssps search'``).
        warn: called with a one-line warning when a dead run's lock is taken over.
    """

    def __init__(self, work_dir, command: str, warn=None):
        self.path = Path(work_dir) / LOCK_NAME
        self.command = command
        self.warn = warn or (lambda text: print(f'{command}: warning: {text}', file=sys.stderr))
        self.fd: int | None = None

    def _in_use(self, holder: dict | None, note: str = '') -> InputError:
        return InputError(f'work dir {self.path.parent} is in use by another run: {_describe(holder)}{note}; '
                          'wait for it to end, or give another --work-dir (lock file: '
                          f'{self.path})')

    def acquire(self) -> 'WorkDirLock':
        """Take the lock, or refuse.

        Raises:
            InputError: another live run holds it (names its command, pid, host and start).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a run that releases its lock removes the file: retry on the new one
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                fd, created = os.open(self.path, os.O_RDWR), False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                note = ''
                if holder and holder.get('host') == socket.gethostname() and not _running_here(holder):
                    note = ', which has ended; processes it started still hold the lock: wait a few seconds'
                raise self._in_use(holder, note) from None
            except OSError as err:
                if err.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                if created:  # O_EXCL made it ours
                    _write(fd, _holder(self.command))
                    self.fd = fd
                    return self
                os.close(fd)
                return self._acquire_exclusive()
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise InputError(f'could not take the lock {self.path}: it is removed and created again by other runs')
        previous = _read(fd)
        if previous:
            self.warn(f'the lock of {self.path.parent} was left by {_describe(previous)}, which is no longer '
                      'running (killed?); this run takes it over'
                      + ('' if previous.get('host') == socket.gethostname() else
                         '. If that run is still going on its host, stop this one: this file system may '
                         'not share locks between hosts'))
        _write(fd, _holder(self.command))
        self.fd = fd
        return self

    def _acquire_exclusive(self) -> 'WorkDirLock':
        """The lock file itself is the lock (a file system without ``flock``)."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR)
                holder = _read(fd)
                os.close(fd)
                if _running_here(holder):
                    raise self._in_use(holder) from None
                if not holder or holder.get('host') != socket.gethostname():
                    raise self._in_use(holder, f'; this file system has no flock, so a run of another host '
                                               f'cannot be checked: delete {self.path} once it is over') from None
                self.warn(f'the lock of {self.path.parent} was left by {_describe(holder)}, which is no longer '
                          'running; this run takes it over')
                self.path.unlink(missing_ok=True)
                continue
            _write(fd, _holder(self.command))
            self.fd = fd
            return self
        raise self._in_use(None)

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock."""
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


@contextmanager
def work_dir_lock(work_dir, command: str, warn=None):
    """Hold the lock of ``work_dir`` for the block (rank 0 only; :class:`WorkDirLock`).

    Raises:
        InputError: another live run holds it.
    """
    lock = WorkDirLock(work_dir, command, warn).acquire() if _is_rank_zero() else None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
