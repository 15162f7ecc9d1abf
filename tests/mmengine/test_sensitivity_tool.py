"""``ssps sensitivity`` on the tiny subset config: the per-layer report, the search-state columns
from a search checkpoint, policies at budgets, the cache and bad input (docs/algorithm.md §10.1)."""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip('mmpretrain')

from ssps_nni.cli import sensitivity  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402

ROOT_CKPT = 'checkpoints/resnet20_cifar10_fp32.pth'


def test_report_with_search_state_and_policies(tiny_config, full_run, tmp_path, capsys):
    out = tmp_path / 'sens'
    argv = [str(tiny_config), '--checkpoint', str(full_run / 'epoch_2.pth'), '--score-batches', '1',
            '--measure-batches', '2', '--batch-size', '16', '--policies-at', 'bitops=W3A3', '--out', str(out)]
    assert sensitivity.main(argv) == 0
    with open(out / 'sensitivity.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18 * 2 * 3  # searched layers x operands x candidates (2, 4, 8)
    assert {'fisher', 'first_order', 'measured', 'measured_se', 'calibrated', 'search_D',
            'measured_search', 'measured_search_se'} <= set(rows[0])
    report = json.loads((out / 'sensitivity.json').read_text())
    assert set(report['agreement']) == {
        'Float model: squared score (sensitivity method) vs measured',
        'Float model: signed first-order score vs measured',
        'Search state: running score D vs measured from the search policy'}
    assert report['meta']['checkpoint_step'] == 16 and report['meta']['measure_forwards'] == 2 * (1 + 18 * 2 * 3)
    assert 'Spearman' in (out / 'sensitivity.md').read_text()
    for kind in ('fisher', 'measured', 'calibrated'):
        policy = load_policy(out / 'policies' / f'sensitivity_{kind}_bitops_W3A3.json')
        assert policy.meta['scores'] == kind and policy.meta['final']
    # a second run with the same settings reads the float measurement from the cache
    assert sensitivity.main(argv[:1] + argv[3:]) == 0  # without --checkpoint
    again = json.loads((out / 'sensitivity.json').read_text())
    assert again['rows'][0]['measured'] == report['rows'][0]['measured']
    assert 'search_D' not in again['rows'][0]


@pytest.mark.parametrize('extra, message', [
    (['--score-batches', '0'], '--score-batches must be >= 1'),
    (['--checkpoint', 'no/such.pth'], 'is not a file'),
    (['--checkpoint', ROOT_CKPT], 'holds no SSPS search state'),
])
def test_bad_input_is_one_line(tiny_config, tmp_path, capsys, extra, message):
    argv = [str(tiny_config), '--score-batches', '1', '--measure-batches', '1', '--batch-size', '8',
            '--out', str(tmp_path / 'o'), *extra]
    assert sensitivity.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith('ssps sensitivity: error:') and message in err[-1]


def test_search_sensitivity_method_with_calibrated_scores(tiny_config, tmp_path, search_tool):
    """``ssps search --method sensitivity --scores calibrated`` writes a final policy that says its scores."""
    work = tmp_path / 'cal'
    argv = [str(tiny_config), '--method', 'sensitivity', '--scores', 'calibrated', '--sensitivity-batches', '1',
            '--measure-batches', '1', '--budget', 'bitops=W3A3', '--work-dir', str(work)]
    assert search_tool.main(argv) == 0
    policy = load_policy(work / 'policy.json')
    assert policy.meta['method'] == 'sensitivity' and policy.meta['scores'] == 'calibrated' and policy.meta['final']


def test_effective_scores_script_parses():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / 'tools' / 'effective_scores.sh'
    assert subprocess.run(['bash', '-n', str(script)]).returncode == 0
    usage = subprocess.run(['bash', str(script), 'nonsense'], capture_output=True, text=True)
    assert usage.returncode == 2 and 'usage' in usage.stderr
