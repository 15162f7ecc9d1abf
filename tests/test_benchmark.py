"""``tools/benchmark.py`` in its smallest setting (``--smoke``), so the benchmarks keep working.

The numbers of a smoke run mean nothing (a few steps on a few images); this checks that every
section runs end to end through the real code paths (the core search loop, NNI's DARTS
supernet, ``tools/train.py`` and the search tool's steps), that the results are complete and
consistent, that finished runs are reused on a second call, and that bad input is refused.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / 'tools' / 'benchmark.py'


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(BENCHMARK), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def benchmark_tool():
    """``tools/benchmark.py`` imported as a module (its ``main(argv)`` runs in-process)."""
    spec = importlib.util.spec_from_file_location('ssps_benchmark_tool', BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp('benchmark')
    result = _run('--smoke', '--out', out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / 'results.json').read_text())


def test_smoke_run_has_every_section(smoke):
    out, res = smoke
    assert res['sections'] == ['step-cost', 'sequential', 'quality']
    assert (out / 'results.md').read_text().count('###') == 3
    rows = {r['method']: r for r in res['step-cost']}
    assert set(rows) == {'fp32', 'qat', 'ssps', 'darts'}
    assert rows['qat']['time_ratio'] == pytest.approx(1.0) and rows['qat']['memory_ratio'] == pytest.approx(1.0)
    assert rows['darts']['phases'] == 2 and rows['ssps']['phases'] == 1
    # every candidate path keeps its activations and weights: more memory than one sampled path
    assert rows['darts']['memory_mib'] > rows['ssps']['memory_mib'] > rows['fp32']['memory_mib']


def test_smoke_quality_and_sequential_are_consistent(smoke):
    _, res = smoke
    quality = {r['method']: r for r in res['quality']['rows']}
    assert set(quality) == {'uniform', 'ssps'}
    # the SSPS policy is within the budget (the uniform policy's BitOPs) by construction
    assert quality['ssps']['bitops']['max'] <= quality['uniform']['bitops']['min'] * (1 + 1e-6)
    assert 0 < quality['ssps']['search_cost_ratio']['max'] <= 1 + 1e-6
    seq = {r['sequential']: r for r in res['sequential']['rows']}
    assert set(seq) == {True, False}
    for row in seq.values():
        assert row['stable_step']['max'] <= row['steps']['max'] == row['final_step']['max']
        assert 0 <= row['top1']['mean'] <= 100


def test_second_call_reuses_finished_runs_and_redoes_a_broken_one(smoke):
    out, _ = smoke
    marker = out / 'runs' / 'retrain_uniform_W4A4_s0' / 'done.json'
    marker.write_text(marker.read_text()[:40])  # as if cut off
    result = _run('quality', '--smoke', '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'reusing finished run retrain_ssps_W4A4_seq_s0' in result.stdout
    assert 'run fp32 ...' not in result.stdout
    assert 'is unreadable' in result.stdout and 'run retrain_uniform_W4A4_s0 ...' in result.stdout
    assert json.loads(marker.read_text())['result']['top1'] is not None


@pytest.mark.parametrize('argv, message', [
    (['--smoke', '--seeds', 'a,b'], 'not a comma-separated list of integers'),
    (['nonsense', '--smoke'], "unknown section 'nonsense'"),
    (['--quick', '--data-root', '/tmp'], '--data-root is used only by the sequential and quality sections'),
    (['quality', '--data-root', '/nonexistent'], 'has no train/ and test/ folders'),
    (['--smoke', '--seeds=-1'], 'outside 0..2**32-1'),
    (['--smoke', '--seeds='], '--seeds is empty'),
])
def test_bad_input_is_refused_before_any_run(argv, message, tmp_path, capsys, benchmark_tool):
    assert benchmark_tool.main([*argv, '--out', str(tmp_path / 'out')]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys, benchmark_tool):
    target = tmp_path / 'a_file'
    target.write_text('keep me')
    assert benchmark_tool.main(['step-cost', '--smoke', '--out', str(target)]) == 2
    assert 'is not a writable folder' in capsys.readouterr().err
    assert target.read_text() == 'keep me'
