"""The statistics of ``ssps sweep``: the uniform line and paired differences over seeds.

Pure Python (``math``, ``statistics``), no torch, so the numbers can be checked by hand.

The **uniform line** at a cost ``c`` is the metric the uniform policies (every ``WxAy`` of the
candidates) reach at that cost: the upper envelope of the uniform points (a point stays on it
when no other uniform point costs as much or less with a higher mean metric), interpolated
linearly in cost between the two envelope vertices that bracket ``c``. The vertices are chosen
once, by mean over seeds; the line is then evaluated seed by seed with the same two vertices and
the same weight, so that a mixed point at seed ``r`` is compared with the uniform line at seed
``r`` (paired: same data order, same quantizer initialisation).

A **paired difference** between two series of per-seed metrics is ``d_r = a_r - b_r`` over their
common seeds; its standard error is ``stdev(d) / sqrt(n)`` (sample standard deviation,
``n - 1`` in the denominator). The verdict is ``above`` when ``mean(d) > 2 SE``, ``below`` when
``mean(d) < -2 SE``, else ``inside the noise``; with fewer than two seeds there is no SE and the
verdict is ``one seed``.
"""
from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

__all__ = ['paired_se', 'verdict', 'compare', 'envelope', 'bracket', 'line_runs', 'vs_line', 'NOISE_SE']

#: A difference counts (above / below) beyond this many paired standard errors.
NOISE_SE = 2.0
#: Relative tolerance on costs (a policy filled to its budget costs the budget up to rounding).
COST_RTOL = 1e-9


def paired_se(diffs: Sequence[float]) -> float | None:
    """Standard error of the mean of paired differences: ``stdev(diffs) / sqrt(n)``; None if ``n < 2``."""
    diffs = list(diffs)
    if len(diffs) < 2:
        return None
    return statistics.stdev(diffs) / math.sqrt(len(diffs))


def verdict(mean: float | None, se: float | None, n: int, k: float = NOISE_SE) -> str:
    """``'above'``, ``'below'``, ``'inside the noise'`` (``|mean| <= k SE``), ``'one seed'`` (n < 2) or ``'n/a'``."""
    if mean is None or n == 0:
        return 'n/a'
    if n < 2 or se is None:
        return 'one seed'
    if mean > k * se:
        return 'above'
    if mean < -k * se:
        return 'below'
    return 'inside the noise'


def compare(a: Mapping, b: Mapping) -> dict:
    """Paired difference of two ``{seed: metric}`` series over their common seeds.

    Returns:
        ``{'mean', 'se', 'n', 'seeds', 'diffs', 'verdict'}``: ``diffs`` per common seed
        (``a[r] - b[r]``, sorted by seed); ``mean``/``se`` None when there is no common seed / fewer
        than two.
    """
    seeds = sorted(set(a) & set(b), key=str)
    diffs = [float(a[r]) - float(b[r]) for r in seeds]
    mean = statistics.fmean(diffs) if diffs else None
    se = paired_se(diffs)
    return {'mean': mean, 'se': se, 'n': len(diffs), 'seeds': seeds, 'diffs': diffs,
            'verdict': verdict(mean, se, len(diffs))}


def envelope(points: Mapping[str, tuple[float, float]]) -> list[tuple[str, float, float]]:
    """The upper envelope of uniform points: ``[(name, cost, mean), ...]`` by increasing cost.

    Args:
        points: ``{name: (cost, mean metric)}``.

    A point is kept when its mean is higher than the mean of every point that costs as much or
    less (at equal cost the higher mean wins; at equal cost and mean, the first name in sorted
    order). The kept means therefore increase with cost.
    """
    ordered = sorted(points.items(), key=lambda kv: (kv[1][0], -kv[1][1], kv[0]))
    kept: list[tuple[str, float, float]] = []
    for name, (cost, mean) in ordered:
        if kept and mean <= kept[-1][2]:
            continue  # dominated: something at most as expensive is at least as good
        kept.append((name, float(cost), float(mean)))
    return kept


def bracket(vertices: Sequence[tuple[str, float, float]], cost: float) -> tuple[str, str, float] | None:
    """``(low name, high name, t)`` with the line at ``cost`` = ``(1 - t) low + t high``.

    ``vertices`` as :func:`envelope` returns them. A cost at a vertex (within a relative 1e-9)
    gives that vertex twice and ``t = 0``. None when ``cost`` is below the first vertex or above
    the last: the uniform line does not reach it (no extrapolation).
    """
    if not vertices:
        return None
    for name, c, _ in vertices:
        if math.isclose(cost, c, rel_tol=COST_RTOL, abs_tol=0.0):
            return name, name, 0.0
    if cost < vertices[0][1] or cost > vertices[-1][1]:
        return None
    for (lo, c_lo, _), (hi, c_hi, _) in zip(vertices, vertices[1:]):
        if c_lo < cost < c_hi:
            return lo, hi, (cost - c_lo) / (c_hi - c_lo)
    return None  # unreachable for sorted vertices


def line_runs(low: Mapping, high: Mapping, t: float) -> dict:
    """The uniform line per seed: ``{r: (1 - t) low[r] + t high[r]}`` over the seeds of both."""
    return {r: (1.0 - t) * float(low[r]) + t * float(high[r]) for r in low if r in high}


def vs_line(runs: Mapping, cost: float, uniform: Mapping[str, tuple[float, Mapping]]) -> dict:
    """A mixed point against the uniform line at its cost, paired over seeds.

    Args:
        runs: ``{seed: metric}`` of the mixed point.
        cost: its cost (in the same cost model as ``uniform``).
        uniform: ``{name: (cost, {seed: metric})}`` of the uniform points.

    Returns:
        :func:`compare` of ``runs`` against the line, plus ``'low'``, ``'high'``, ``'t'`` (the
        bracketing vertices and weight) and ``'line'`` (the line's mean over the common seeds);
        ``{'verdict': 'outside the uniform line', ...}`` (mean and se None) when no two vertices
        bracket ``cost``.
    """
    means = {n: (c, statistics.fmean(m.values())) for n, (c, m) in uniform.items() if m}
    found = bracket(envelope(means), cost)
    if found is None:
        return {'mean': None, 'se': None, 'n': 0, 'seeds': [], 'diffs': [], 'low': None, 'high': None, 't': None,
                'line': None, 'verdict': 'outside the uniform line'}
    low, high, t = found
    line = line_runs(uniform[low][1], uniform[high][1], t)
    out = compare(runs, line)
    common = [line[r] for r in out['seeds']]
    out.update(low=low, high=high, t=t, line=statistics.fmean(common) if common else None)
    return out
