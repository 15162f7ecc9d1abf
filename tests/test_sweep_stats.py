"""The statistics of ``ssps sweep`` (``ssps_nni.cli.sweep.stats``), exactly, on hand-made numbers."""
from __future__ import annotations

import math

import pytest

from ssps_nni.cli.sweep import stats


def test_paired_se_is_the_sample_stdev_over_sqrt_n():
    # diffs 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, variance 14 / 3, SE = sqrt(14 / 3 / 4)
    assert stats.paired_se([1.0, 2.0, 3.0, 6.0]) == pytest.approx(math.sqrt(7 / 6), rel=1e-12)
    assert stats.paired_se([5.0, 5.0]) == 0.0
    assert stats.paired_se([4.0]) is None and stats.paired_se([]) is None


def test_compare_pairs_by_seed_and_gives_a_verdict():
    a = {'0': 70.0, '1': 72.0, '2': 71.0, '3': 99.0}   # seed 3 has no partner: left out
    b = {'0': 69.0, '1': 70.0, '2': 68.0}
    out = stats.compare(a, b)
    assert out['seeds'] == ['0', '1', '2'] and out['diffs'] == [1.0, 2.0, 3.0]
    assert out['mean'] == 2.0
    assert out['se'] == pytest.approx(1 / math.sqrt(3), rel=1e-12)  # stdev 1
    assert out['verdict'] == 'above'                                # 2 > 2 / sqrt(3) = 1.155
    assert stats.compare(b, a)['verdict'] == 'below'
    noisy = stats.compare({'0': 1.0, '1': -0.5}, {'0': 0.0, '1': 0.0})  # mean 0.25, SE 0.75
    assert noisy['se'] == pytest.approx(0.75) and noisy['verdict'] == 'inside the noise'
    assert stats.compare({'0': 3.0}, {'0': 1.0})['verdict'] == 'one seed'
    assert stats.compare({'0': 3.0}, {'1': 1.0})['verdict'] == 'n/a'


def test_verdict_boundary_is_two_se():
    assert stats.verdict(2.0, 1.0, 3) == 'inside the noise'   # exactly 2 SE: not beyond
    assert stats.verdict(2.0001, 1.0, 3) == 'above'
    assert stats.verdict(-2.0001, 1.0, 3) == 'below'
    assert stats.verdict(0.5, 0.0, 2) == 'above'              # identical differences: any mean counts


def test_envelope_keeps_the_best_uniform_point_at_each_cost():
    points = {'W2A2': (4.0, 30.0), 'W2A3': (6.0, 45.0), 'W3A2': (6.0, 35.0),  # equal cost: W2A3 wins
              'W2A4': (8.0, 40.0),                                          # dominated by W2A3 (cheaper, better)
              'W3A3': (9.0, 52.0), 'W4A4': (16.0, 60.0)}
    assert stats.envelope(points) == [('W2A2', 4.0, 30.0), ('W2A3', 6.0, 45.0), ('W3A3', 9.0, 52.0),
                                      ('W4A4', 16.0, 60.0)]


def test_bracket_interpolates_linearly_in_cost():
    line = [('A', 10.0, 0.0), ('B', 20.0, 0.0), ('C', 40.0, 0.0)]
    assert stats.bracket(line, 12.5) == ('A', 'B', 0.25)
    assert stats.bracket(line, 35.0) == ('B', 'C', 0.75)
    assert stats.bracket(line, 20.0) == ('B', 'B', 0.0)
    assert stats.bracket(line, 20.0 * (1 + 1e-12)) == ('B', 'B', 0.0)  # a filled budget's rounding
    assert stats.bracket(line, 9.0) is None and stats.bracket(line, 41.0) is None
    assert stats.bracket([], 1.0) is None


def test_mixed_point_against_the_uniform_line_paired_over_seeds():
    uniform = {'A': (10.0, {'0': 50.0, '1': 52.0, '2': 54.0}),   # mean 52
               'B': (20.0, {'0': 60.0, '1': 61.0, '2': 65.0}),   # mean 62
               'C': (15.0, {'0': 40.0, '1': 41.0, '2': 42.0}),   # below the A-B line: not on it
               'D': (20.0, {'0': 55.0, '1': 55.0, '2': 55.0})}   # same cost as B, worse
    mixed = {'0': 55.0, '1': 55.0, '2': 58.0}
    out = stats.vs_line(mixed, 12.5, uniform)
    assert (out['low'], out['high'], out['t']) == ('A', 'B', 0.25)
    # the line per seed: 0.75 * A + 0.25 * B = 52.5, 54.25, 56.75; differences 2.5, 0.75, 1.25
    assert out['diffs'] == pytest.approx([2.5, 0.75, 1.25], abs=1e-12)
    assert out['mean'] == pytest.approx(1.5, abs=1e-12)
    assert out['line'] == pytest.approx((52.5 + 54.25 + 56.75) / 3, abs=1e-12)
    # squared deviations 1 + 0.5625 + 0.0625 = 1.625, variance 0.8125, SE = sqrt(0.8125 / 3)
    assert out['se'] == pytest.approx(math.sqrt(0.8125 / 3), rel=1e-12)
    assert out['verdict'] == 'above'  # 1.5 > 2 x 0.5204
    outside = stats.vs_line(mixed, 25.0, uniform)
    assert outside['verdict'] == 'outside the uniform line' and outside['mean'] is None


def test_line_runs_weights_each_seed_alike():
    assert stats.line_runs({'0': 10.0, '1': 20.0}, {'0': 30.0, '2': 0.0}, 0.5) == {'0': 20.0}

