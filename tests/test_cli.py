"""The ``ssps`` console command: every subcommand answers ``--help``, malformed input is refused
with one line and exit status 2 before the training stack loads, the ``tools/*.py`` shims run the
same commands, and no code edits the import path or loads a module by file path.

The console command is the entry point that ``pip install -e .`` writes next to the interpreter
(``.venv/bin/ssps``); its speed (``--help`` and refusals within seconds) is measured by hand,
not asserted here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ssps_nni.cli import common
from ssps_nni.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
SSPS = Path(sys.executable).parent / 'ssps'


def ssps(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    if not SSPS.is_file():
        pytest.fail(f'no console command {SSPS}: reinstall the package (make setup, or pip install -e .)')
    return subprocess.run([str(SSPS), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope='module')
def cache_env(tmp_path_factory):
    """The environment with ``ssps search``'s profile cache in a fresh folder."""
    return dict(os.environ, SSPS_CACHE_DIR=str(tmp_path_factory.mktemp('ssps_cache')))


def test_top_level_help_lists_every_subcommand():
    result = ssps('--help')
    assert result.returncode == 0, result.stderr
    for name in ('search', 'train', 'export', 'report', 'sensitivity', 'benchmark', 'sweep'):
        assert name in result.stdout
    assert set(COMMANDS) == {'search', 'train', 'export', 'report', 'sensitivity', 'benchmark', 'sweep'}


@pytest.mark.parametrize('command', list(COMMANDS))
def test_every_subcommand_answers_help(command):
    result = ssps(command, '--help')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'usage: ssps {command}'), result.stdout
    assert result.stderr == ''


#: The console command's form of a refusal (the table of all bad input, in-process, is
#: tests/mmengine/test_bad_input.py).
REFUSED = [
    (['--budget', 'bitops=W4'], 'accepted forms'),
]


@pytest.mark.parametrize('args, message', REFUSED, ids=[' '.join(a) for a, _ in REFUSED])
def test_refused_input_is_one_line_and_exit_2(args, message, tmp_path, cache_env):
    result = ssps('search', '--work-dir', tmp_path / 'w', *args, timeout=300, env=cache_env)
    assert result.returncode == 2
    assert result.stdout == ''
    assert result.stderr.startswith('ssps search: error: ') and result.stderr.count('\n') == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / 'w').exists()  # refused before the runner made its work dir


@pytest.mark.parametrize('tool', ['search', 'train', 'export', 'report', 'benchmark', 'sweep'])
def test_tools_shims_run_the_same_command(tool):
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / f'{tool}.py'), '--help'], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'usage: ssps {tool}')
    assert len((ROOT / 'tools' / f'{tool}.py').read_text().splitlines()) == 2


def test_missing_repository_config_is_a_clear_error(monkeypatch, tmp_path):
    """Installed without the repository: no default config, a message saying why."""
    monkeypatch.setattr(common, 'REPO', tmp_path)
    with pytest.raises(common.InputError, match='ships with the ssps-nni repository'):
        common.config_path(None)
    with pytest.raises(common.InputError, match='does not exist'):
        common.config_path(str(tmp_path / 'none.py'))


def test_no_import_path_edits_and_no_loading_by_file_path():
    # the grep over ssps_nni, tools and tests (split here so that this file does not match)
    pattern = re.compile('sys' + '.path|spec_from_file_' + 'location')
    files = [p for top in ('ssps_nni', 'tools', 'tests') for p in (ROOT / top).rglob('*')
             if p.is_file() and p.suffix in ('.py', '.sh', '.md', '.cfg', '')]
    found = [f'{path.relative_to(ROOT)}:{n}' for path in files
             for n, line in enumerate(path.read_text(errors='replace').splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_unreachable_budget_is_refused_again_from_the_cached_profile(tmp_path, cache_env):
    """The first refusal measures and caches the layer profile; the second reads it: same message."""
    folder = Path(cache_env['SSPS_CACHE_DIR']) / 'profiles'
    first = ssps('search', '--work-dir', tmp_path / 'w', '--budget', 'bitops=1e6', timeout=300, env=cache_env)
    assert first.returncode == 2 and 'is unreachable' in first.stderr, first.stderr
    cached = sorted(folder.glob('*.json'))
    assert len(cached) == 1
    again = ssps('search', '--work-dir', tmp_path / 'w', '--budget', 'bitops=1e6', timeout=300, env=cache_env)
    assert again.returncode == 2 and again.stderr == first.stderr
    assert sorted(folder.glob('*.json')) == cached
    # another budget (and cost) reads the same profile
    low = ssps('search', '--work-dir', tmp_path / 'w', '--budget', 'size=1KB', timeout=300, env=cache_env)
    assert low.returncode == 2 and 'budget size=1KB' in low.stderr and 'is unreachable' in low.stderr
    assert sorted(folder.glob('*.json')) == cached
