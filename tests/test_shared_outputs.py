"""Outputs on shared machines: output folders checked before a run, file modes from the umask,
one run per work dir (``ssps_nni.cli.common.output_problem``, ``ssps_nni.files``, ``ssps_nni.cli.lock``).

The command-line refusals themselves (exit 2, one line) are rows of
``tests/mmengine/test_bad_input.py``; these tests check the pieces beneath them, including what
a root user cannot provoke for real (no permission) and a full disk (``shutil.disk_usage``
stands in for it).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssps_nni.cli import common, lock
from ssps_nni.cli.common import InputError, check_output_dir, check_output_file, output_problem
from ssps_nni.files import atomic_write, file_mode

ROOT = Path(__file__).resolve().parents[1]


# -- output locations ------------------------------------------------------------------------

def test_output_problem_names_a_file_on_the_path(tmp_path):
    (tmp_path / 'some_file').write_text('x')
    assert output_problem(tmp_path / 'some_file' / 'wd' / 'deeper') == f'{tmp_path / "some_file"} is not a folder but a file'
    assert output_problem(tmp_path / 'new' / 'wd') is None  # created later; nothing created now
    assert not (tmp_path / 'new').exists()
    with pytest.raises(InputError, match=r'^--work-dir .*some_file/wd cannot be written: .* is not a folder'):
        check_output_dir(tmp_path / 'some_file' / 'wd', '--work-dir')
    with pytest.raises(InputError, match='it is a folder; give a file name'):
        check_output_file(tmp_path, '--output')


def test_output_problem_no_permission(tmp_path, monkeypatch):
    locked = tmp_path / 'locked'
    locked.mkdir()
    if os.geteuid() == 0:  # root may write anywhere: the check's answer is os.access's
        real = os.access
        monkeypatch.setattr(common.os, 'access', lambda p, mode: False if Path(p) == locked else real(p, mode))
    else:
        locked.chmod(0o555)
    try:
        assert output_problem(locked / 'wd') == f'no permission to write in {locked}'
        with pytest.raises(InputError, match=r'--out .* cannot be written: no permission to write in'):
            check_output_dir(locked / 'report', '--out')
    finally:
        locked.chmod(0o755)


def test_output_problem_no_space(tmp_path, monkeypatch):
    usage = common.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(common.shutil, 'disk_usage', lambda p: usage._replace(free=5 * 2**20))
    assert output_problem(tmp_path / 'wd') == (f'no space: 5.0 MiB free on the file system of {tmp_path}, '
                                               'at least 64.0 MiB needed')
    assert output_problem(tmp_path / 'wd', min_free=2**20) is None
    with pytest.raises(InputError, match='no space: 5.0 MiB free'):
        check_output_file(tmp_path / 'm.onnx', '--output', min_free=8 * 2**20)


def test_work_dir_room_grows_with_the_starting_checkpoint(tmp_path):
    big = tmp_path / 'big.pth'
    with open(big, 'wb') as f:
        f.truncate(100 * 2**20)  # sparse: takes no space
    assert common.work_dir_room(None) == common.MIN_FREE_BYTES
    assert common.work_dir_room(str(big)) == 400 * 2**20


# -- file modes ------------------------------------------------------------------------------

@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    """atomic_write (policy.json, reports, ONNX) and plot_policy (figures) give the mode that
    open() gives under the umask, not mkstemp's 0600."""
    from ssps_nni.plots import plot_policy
    from ssps_nni.policy import Policy

    policy = Policy(layers={'conv': {'w_bits': 4, 'a_bits': 4}}, candidates={'w': [2, 4], 'a': [2, 4]})
    previous = os.umask(umask)
    try:
        assert file_mode() == 0o666 & ~umask
        with open(tmp_path / 'plain.txt', 'w'):
            pass
        paths = [atomic_write(tmp_path / 'a.txt', 'x'), atomic_write(tmp_path / 'b.bin', b'x'),
                 policy.save(tmp_path / 'policy.json'), plot_policy(policy, None, tmp_path / 'policy.png')]
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / 'plain.txt').stat().st_mode)
    assert expected == 0o666 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths} == {p.name: expected for p in paths}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt', 'b.bin', 'plain.txt', 'policy.json', 'policy.png']


# -- the work-dir lock -----------------------------------------------------------------------

HOLDER = textwrap.dedent('''
    import sys, time
    from ssps_nni.cli.lock import WorkDirLock
    WorkDirLock(sys.argv[1], 'ssps train').acquire()
    print('held', flush=True)
    time.sleep(120)
''')


def test_a_second_run_is_refused_naming_pid_and_host(tmp_path):
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(tmp_path / 'wd')], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(InputError) as err:
            lock.WorkDirLock(tmp_path / 'wd', 'ssps search').acquire()
        message = str(err.value)
        assert f'is in use by another run: ssps train (pid {holder.pid} on host {socket.gethostname()}, started' in message
        assert 'give another --work-dir' in message and str(tmp_path / 'wd' / lock.LOCK_NAME) in message
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is taken over, with a warning naming it
    warnings = []
    taken = lock.WorkDirLock(tmp_path / 'wd', 'ssps search', warn=warnings.append).acquire()
    assert len(warnings) == 1 and f'left by ssps train (pid {holder.pid} on host' in warnings[0]
    assert 'no longer running' in warnings[0]
    assert json.loads((tmp_path / 'wd' / lock.LOCK_NAME).read_text())['pid'] == os.getpid()
    taken.release()
    assert not (tmp_path / 'wd' / lock.LOCK_NAME).exists()


def test_lock_context_releases_and_allows_the_next_run(tmp_path):
    with lock.work_dir_lock(tmp_path / 'wd', 'ssps search') as held:
        assert held is not None and (tmp_path / 'wd' / lock.LOCK_NAME).is_file()
        with pytest.raises(InputError, match=rf'ssps search \(pid {os.getpid()} on host'):
            lock.WorkDirLock(tmp_path / 'wd', 'ssps search').acquire()
    assert not (tmp_path / 'wd' / lock.LOCK_NAME).exists()
    warnings = []
    lock.WorkDirLock(tmp_path / 'wd', 'ssps search', warn=warnings.append).acquire().release()
    assert warnings == []  # a released lock leaves nothing to take over


def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    with lock.work_dir_lock(tmp_path / 'wd', 'ssps search') as held:
        assert held is None and not (tmp_path / 'wd').exists()


def test_without_flock_the_file_is_the_lock(tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): O_EXCL; a live holder of this host is refused, a
    dead one's lock taken over with a warning, another host's refused naming the file to delete."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, 'No locks available')

    monkeypatch.setattr(lock.fcntl, 'flock', no_flock)
    path = tmp_path / 'wd' / lock.LOCK_NAME
    first = lock.WorkDirLock(tmp_path / 'wd', 'ssps search').acquire()
    with pytest.raises(InputError, match=rf'in use by another run: ssps search \(pid {os.getpid()}'):
        lock.WorkDirLock(tmp_path / 'wd', 'ssps train').acquire()
    first.release()
    assert not path.exists()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    path.write_text(json.dumps({'command': 'ssps search', 'pid': int(dead.stdout), 'host': socket.gethostname()}))
    warnings = []
    lock.WorkDirLock(tmp_path / 'wd', 'ssps train', warn=warnings.append).acquire().release()
    assert len(warnings) == 1 and 'no longer running' in warnings[0]
    path.write_text(json.dumps({'command': 'ssps search', 'pid': 1, 'host': 'another-node'}))
    with pytest.raises(InputError, match=f'cannot be checked: delete {path} once it is over'):
        lock.WorkDirLock(tmp_path / 'wd', 'ssps train').acquire()
