"""``ssps benchmark`` in its smallest setting (``--smoke``), so the benchmarks keep working.

The numbers of a smoke run mean nothing (a few steps on a few images); this checks that every
section runs end to end through the real code paths (the core search loop, NNI's DARTS
supernet, ``ssps train`` and the search command's steps), that the results are complete and
consistent, that finished runs are reused on a second call, and that bad input is refused.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, '-m', 'ssps_nni.cli', 'benchmark', *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def benchmark_tool():
    """``ssps benchmark`` (the package ``ssps_nni.cli.benchmark``; its ``main(argv)`` runs in-process)."""
    from ssps_nni.cli import benchmark

    return benchmark


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
    assert set(rows) == {'fp32', 'qat', 'ssps_sampled', 'ssps', 'darts'}
    assert rows['qat']['time_ratio'] == pytest.approx(1.0) and rows['qat']['memory_ratio'] == pytest.approx(1.0)
    assert rows['darts']['phases'] == 2 and rows['ssps']['phases'] == 1
    # every candidate path keeps its activations and weights: more memory than one sampled path
    assert rows['darts']['memory_mib'] > rows['ssps']['memory_mib'] > rows['fp32']['memory_mib']


def test_smoke_quality_and_sequential_are_consistent(smoke):
    out, res = smoke
    q = res['quality']
    quality = {r['method']: r for r in q['rows']}
    assert set(quality) == {'uniform', 'ssps', 'random', 'sensitivity'}
    assert q['complete'] is True and q['test_images'] == 20
    target = q['budgets']['W4A4']['target']
    assert quality['uniform']['bitops']['min'] == pytest.approx(target)  # the budget is uniform W4A4's BitOPs
    for method in ('ssps', 'random', 'sensitivity'):
        row = quality[method]
        assert row['top1']['n'] == 1 and 0 <= row['top1']['mean'] <= 100, method
        # every policy is within the budget (the uniform policy's BitOPs) by construction
        assert row['bitops']['max'] <= target * (1 + 1e-6), method
        assert 0 < row['search_cost_ratio']['max'] <= 1 + 1e-6, method
        assert row['search_s']['n'] == 1 and len(row['runs']) == len(row['searches']) == 1, method
    for method in ('random', 'sensitivity'):  # one-shot methods fill the budget (0.97 .. 1)
        assert quality[method]['search_cost_ratio']['min'] >= 0.97, method
    assert quality['ssps']['certainty']['n'] == 1 and quality['ssps']['final_step']['n'] == 1
    assert quality['ssps']['decisions_source'] in ('decisions', 'layers')
    table = (out / 'results.md').read_text()
    for label in ('| W4A4 (', 'uniform W4A4', 'SSPS', 'random within budget', 'sensitivity'):
        assert label in table, label
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
    assert 'reusing finished run random_W4A4_s0' in result.stdout
    assert 'reusing finished run sensitivity_W4A4_s0' in result.stdout
    assert 'run fp32 ...' not in result.stdout
    assert 'is unreadable' in result.stdout and 'run retrain_uniform_W4A4_s0 ...' in result.stdout
    assert json.loads(marker.read_text())['result']['top1'] is not None


def test_smoke_time_to_model_has_equal_steps_and_continues_the_search(smoke):
    """``time-to-model`` runs only when named; it reuses the FP32 and sensitivity runs of the
    other sections, gives every arm the same total steps and continues the search's checkpoint."""
    out, res = smoke
    assert 'time-to-model' not in res['sections']
    result = _run('time-to-model', '--smoke', '--out', out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'reusing finished run fp32' in result.stdout and 'reusing finished run sensitivity_W4A4_s0' in result.stdout
    res = json.loads((out / 'results.json').read_text())
    assert res['sections'] == ['step-cost', 'sequential', 'quality', 'time-to-model']
    t = res['time-to-model']
    rows = {r['arm']: r for r in t['rows']}
    assert set(rows) == {'ssps', 'sensitivity', 'uniform'} and t['complete'] is True
    totals = {r['arm']: r['policy_steps']['mean'] + r['qat_steps']['mean'] for r in t['rows']}
    assert len(set(totals.values())) == 1, totals  # equal total training steps
    ssps = rows['ssps']['runs'][0]
    assert 0 < ssps['policy_steps'] and ssps['qat_steps'] == ssps['total_steps'] - ssps['policy_steps']
    for r in t['rows']:
        assert r['top1']['n'] == 1 and r['qat_s']['mean'] > 0 and r['test_s']['mean'] > 0
    assert rows['uniform']['reference'] == rows['uniform']['method'] and rows['ssps']['vs_uniform']['n'] == 1
    log = next((out / 'runs' / 'ttm_qat_ssps_W4A4_s0').glob('*/*.log')).read_text()
    assert 'QAT: step sizes from the checkpoint' in log and 'search checkpoint' in log
    assert '### Time to a deployable model' in (out / 'results.md').read_text()


@pytest.mark.parametrize('argv, message', [
    (['--smoke', '--seeds', 'a,b'], 'not a comma-separated list of integers'),
    (['nonsense', '--smoke'], "unknown section 'nonsense'"),
    (['--quick', '--data-root', '/tmp'], '--data-root is used only by the sequential, quality and time-to-model sections'),
    (['quality', '--data-root', '/nonexistent'], 'has no train/ and test/ folders'),
    (['--smoke', '--seeds=-1'], 'outside 0..2**32-1'),
    (['--smoke', '--seeds='], '--seeds is empty'),
    (['--quick', '--fp32-checkpoint', '/tmp/x.pth'], '--fp32-checkpoint is used only by --standard'),
    (['--quick', '--standard'], 'not allowed with argument'),
    (['quality', '--standard', '--fp32-checkpoint', '/nonexistent/fp32.pth'], 'this mode does not train FP32'),
])
def test_bad_input_is_refused_before_any_run(argv, message, tmp_path, capsys, benchmark_tool):
    try:
        code = benchmark_tool.main([*argv, '--out', str(tmp_path / 'out')])
    except SystemExit as exit:  # argparse
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys, benchmark_tool):
    target = tmp_path / 'a_file'
    target.write_text('keep me')
    assert benchmark_tool.main(['step-cost', '--smoke', '--out', str(target)]) == 2
    assert 'is not a writable folder' in capsys.readouterr().err
    assert target.read_text() == 'keep me'


def test_standard_mode_refuses_an_fp32_checkpoint_it_cannot_use(tmp_path, capsys, benchmark_tool):
    """No JSON beside it, a JSON without top1/command, weights of another model: exit 2, nothing run."""
    import torch

    from ssps_nni.models import resnet20

    ckpt = tmp_path / 'fp32.pth'
    torch.save({'state_dict': resnet20().state_dict()}, ckpt)  # plain keys (conv1.weight), not the config's
    argv = ['quality', '--standard', '--fp32-checkpoint', str(ckpt), '--out', str(tmp_path / 'out')]
    for meta, message in ((None, 'needs'), ({'top1': 'high'}, '"top1" (a number'),
                          ({'metrics': {'accuracy/top1': 91.2}}, 'is not a checkpoint of the model'),
                          ({'top1': 91.2, 'command': 'tools/train.py ...'}, 'is not a checkpoint of the model')):
        if meta is not None:
            (tmp_path / 'fp32.json').write_text(json.dumps(meta))
        assert benchmark_tool.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and 'ssps benchmark: error:' in err, err
    assert not (tmp_path / 'out').exists()


def test_midpoint_budget_is_halfway_in_bitops_and_both_uniform_options_fit(benchmark_tool):
    """2.5-bit = (W2A2 + W3A3) / 2 BitOPs of ResNet-20 (stem, classifier W8A8), as the mmengine model gives."""
    config = str(ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_folder.py')
    table = benchmark_tool.budget_table(config, ['W3A3', benchmark_tool.MIDPOINT, 'W4A4'])
    mid = table[benchmark_tool.MIDPOINT]
    import torch

    from ssps_nni.models import resnet20

    model, x = resnet20(), torch.zeros(1, 3, 32, 32)
    costs, _ = benchmark_tool.uniform_bitops(model, lambda: model(x), ['W2A2', 'W3A3'])
    assert mid['target'] == pytest.approx((costs['W2A2'] + costs['W3A3']) / 2, rel=1e-12)
    w3a3 = table['W3A3']['target']
    assert w3a3 == pytest.approx(costs['W3A3'], rel=1e-12)
    assert mid['uniform'].keys() == {'W2A3', 'W3A2'}
    assert mid['uniform']['W2A3'] == pytest.approx(mid['uniform']['W3A2']) and mid['uniform']['W2A3'] < mid['target']
    assert mid['target'] < w3a3 < table['W4A4']['target'] < table['fp32']
    assert mid['arg'] == f'bitops={mid["target"]!r}'
    from ssps_nni.cost import parse_budget

    assert parse_budget(mid['arg']).value == mid['target']  # the search gets exactly this target


def test_partial_quality_table_shows_unfinished_rows_as_na(benchmark_tool):
    results = {'mode': 'standard', 'environment': {'device': 'cpu', 'cpu': 'x', 'cpu_count': 2, 'torch_threads': 2,
                                                   'torch': 't', 'nni': 'n', 'mmengine': 'm', 'python': 'p'},
               'quality': {'fp32': {'top1': 91.0, 'bitops': 4.15e10, 'trained_here': False}, 'complete': False,
                           'test_images': 10000, 'rows': [
                               {'budget': 'W3A3', 'method': 'ssps', 'target': 3.9e8, 'top1': {'n': 0, 'mean': None},
                                'top1_runs': [], 'same_as_uniform': []},
                               {'budget': '2.5-bit', 'method': 'uniform', 'target': 2.9e8, 'uniform_policy': 'W3A2',
                                'uniform_options': {'W2A3': {'top1': {'mean': 80.0, 'std': 0.0, 'n': 1}},
                                                    'W3A2': {'top1': {'mean': 81.5, 'std': 0.5, 'n': 2}}},
                                'top1': {'mean': 81.5, 'std': 0.5, 'n': 2}, 'top1_runs': [81.0, 82.0]}]}}
    text = benchmark_tool.markdown(results)
    assert 'Partial' in text and '10,000 test images' in text
    ssps = next(line for line in text.splitlines() if line.startswith('| W3A3'))
    assert ssps.split('|')[3].strip() == 'n/a'
    assert 'uniform W3A2 (better of W2A3 80.00, W3A2 81.50 ± 0.50)' in text


def test_standard_mode_reads_the_fp32_entry_from_the_json_beside_the_checkpoint(tmp_path, benchmark_tool):
    import torch
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401
    from ssps_nni.mmengine.qat import build_model_from_cfg

    config = str(ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_folder.py')
    ckpt = tmp_path / 'fp32.pth'
    torch.save({'state_dict': build_model_from_cfg(Config.fromfile(config)).state_dict(), 'meta': {}}, ckpt)
    (tmp_path / 'fp32.json').write_text(json.dumps({'top1': 91.25, 'command': 'tools/train.py CONFIG'}))
    entry = benchmark_tool.shipped_fp32(str(ckpt), config)
    assert entry['top1'] == 91.25 and entry['command'] == 'tools/train.py CONFIG' and entry['trained_here'] is False
    assert entry['checkpoint'] == str(ckpt.resolve()) and len(entry['sha1']) == 40
    (tmp_path / 'fp32.json').write_text(json.dumps({'metrics': {'accuracy/top1': 90.5}}))  # a train_result.json
    assert benchmark_tool.shipped_fp32(str(ckpt), config)['top1'] == 90.5


def test_sections_are_small_modules_that_use_only_public_apis():
    """Every module of ``ssps_nni/cli/benchmark/`` is under 500 lines and imports no private name
    (``_x``) and no driver-internal module (``ssps_nni.nni.ops``: the benchmark uses ``ssps_nni.nni.fixed_op``)."""
    folder = ROOT / 'ssps_nni' / 'cli' / 'benchmark'
    modules = sorted(folder.glob('*.py'))
    assert {p.stem for p in modules} >= {'command', 'common', 'step_cost', 'sequential', 'quality', 'report'}
    assert not (ROOT / 'ssps_nni' / 'cli' / 'benchmark.py').exists()
    for path in modules:
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ''
                assert not any(part.startswith('_') for part in module.split('.') if part != '__future__'), \
                    (path.name, module)
                assert module != 'ssps_nni.nni.ops', path.name
                assert not any(a.name.startswith('_') for a in node.names), (path.name, module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith('ssps_nni.nni.ops') for a in node.names), path.name
