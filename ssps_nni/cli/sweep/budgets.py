"""The budgets of ``ssps sweep`` and the uniform points around them.

Budget text (``--budgets``: comma-separated; ``--budget-range``: ``FROM:TO:N``), each item
``[COST=]VALUE`` with COST ``bitops`` (default), ``size`` or ``bitfusion`` and VALUE one of

- ``2.5b``: the cost of every searched layer at 2.5 bits per operand (``bitops``, ``bitfusion``:
  weights and activations; ``size``: bits per weight, activations free), pinned layers at their bits;
- ``W4A4``: the cost of that uniform policy (as ``ssps search --budget bitops=W4A4``);
- an absolute value as ``ssps search`` takes it: ``1.2G``, ``289054720``, ``size=0.05MB``;
- in a range only, ``min`` / ``max``: the all-minimum / all-maximum cost of the candidates.

A range gives N budgets evenly spaced in cost from FROM to TO, both included. Costs come from
the config's layer profile (``ssps_nni.cli.cost_check``, cached): no run is needed to refuse a
budget outside the reachable range ``[all-minimum, all-maximum]`` (exit 2, one line).
"""
from __future__ import annotations

import re

from ..common import InputError

#: Cost models a sweep can put on its axis (priced from the layer profile alone).
SWEEP_COSTS = ('bitops', 'size', 'bitfusion')
BUDGET_ITEM_FORM = ('[COST=]VALUE with COST bitops (default), size or bitfusion and VALUE 2.5b (bits per operand; '
                    'per weight for size), WxAy, or an absolute value such as 1.2G or size=0.05MB')
RANGE_FORM = '[COST=]FROM:TO:N, e.g. min:W4A4:5 or bitops=2b:4b:5 (FROM/TO: a VALUE, min or max; N >= 2)'
RTOL = 1e-9


def split_item(text: str, what: str) -> tuple[str, str]:
    """``'size=2.5b'`` -> ``('size', '2.5b')``; ``'3b'`` -> ``('bitops', '3b')``.

    Raises:
        InputError: an unknown or unsupported cost name, or an empty value.
    """
    text = text.strip()
    cost, value = text.split('=', 1) if '=' in text else ('bitops', text)
    cost, value = cost.strip().lower(), value.strip()
    if cost not in SWEEP_COSTS:
        raise InputError(f'{what} {text!r}: cost {cost!r} is not one a sweep can price from the layer profile; '
                         f'accepted: {", ".join(SWEEP_COSTS)}')
    if not value:
        raise InputError(f'{what} {text!r} has no value; accepted: {BUDGET_ITEM_FORM}')
    return cost, value


def parse_list(text: str | None) -> list[tuple[str, str]]:
    """``--budgets`` -> ``[(cost, value), ...]`` (form only; values are priced by :func:`resolve`).

    Raises:
        InputError: an empty list or a malformed item.
    """
    if text is None:
        return []
    items = [s for s in text.split(',') if s.strip()]
    if not items:
        raise InputError(f'--budgets {text!r} is empty; give budgets such as 2.5b,3b,4b,size=2.5b '
                         f'({BUDGET_ITEM_FORM})')
    return [split_item(s, 'budget') for s in items]


def parse_range(text: str | None) -> tuple[str, str, str, int] | None:
    """``--budget-range`` -> ``(cost, from, to, n)``.

    Raises:
        InputError: not of the form :data:`RANGE_FORM`.
    """
    if text is None:
        return None
    cost, rest = split_item(text, '--budget-range')
    parts = rest.split(':')
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InputError(f'--budget-range {text!r} is not {RANGE_FORM}')
    low, high, count = (p.strip() for p in parts)
    try:
        n = int(count)
    except ValueError:
        raise InputError(f'--budget-range {text!r}: N = {count!r} is not an integer; {RANGE_FORM}') from None
    if n < 2:
        raise InputError(f'--budget-range {text!r}: N must be >= 2 (both ends are budgets), got {n}')
    return cost, low, high, n


def price(cost_name: str, value: str, space_cost, refs: dict) -> tuple[float, float | None]:
    """The absolute target of ``value`` in ``space_cost``'s unit, and its bits per operand (or None).

    Raises:
        InputError: a malformed value.
    """
    from ssps_nni.convert import parse_bits_pair
    from ssps_nni.cost import parse_budget
    from ssps_nni.errors import SSPSError

    low = value.lower()
    if low in ('min', 'max'):
        return refs[low], None
    match = re.fullmatch(r'([0-9]*\.?[0-9]+)\s*b(?:its?)?', low)
    if match:
        bits = float(match.group(1))
        if not 1.0 <= bits <= 32.0:
            raise InputError(f'budget {cost_name}={value}: {bits:g} bits per operand is outside 1..32')
        return space_cost.uniform(bits, bits), bits
    if re.fullmatch(r'[Ww]\d+[Aa]\d+', value):
        try:
            w, a = parse_bits_pair(value)
        except SSPSError as err:
            raise InputError(f'budget {cost_name}={value}: {err}') from None
        return space_cost.uniform(w, a), None
    try:
        budget = parse_budget(f'{cost_name}={value}')
    except SSPSError as err:
        raise InputError(f'budget {cost_name}={value}: {err}; a sweep budget is {BUDGET_ITEM_FORM}') from None
    return float(budget.value), None


def search_arg(cost_name: str, target: float) -> str:
    """The ``ssps search --budget`` text of an absolute target (size in bytes: its parser needs a unit)."""
    return f'size={target / 8!r}B' if cost_name == 'size' else f'{cost_name}={target!r}'


def label(cost_name: str, value: str) -> str:
    return f'{cost_name}={value}'


def resolve(items: list[tuple[str, str]], rng, costs: dict) -> list[dict]:
    """Every budget priced, checked against the reachable range, deduplicated (first wins).

    Args:
        items: :func:`parse_list`. rng: :func:`parse_range` or None.
        costs: ``{cost name: SpaceCost}`` of the config's layer profile.

    Returns:
        ``[{'label', 'cost', 'value', 'target', 'bits', 'arg', 'slug'}, ...]`` in the given order
        (the range's budgets after the list's).

    Raises:
        InputError: no budget at all, or one outside ``[all-minimum, all-maximum]``.
    """
    planned = [(c, v, label(c, v), None) for c, v in items]
    if rng is not None:
        cost_name, low, high, n = rng
        refs = costs[cost_name].references()
        a, _ = price(cost_name, low, costs[cost_name], refs)
        b, _ = price(cost_name, high, costs[cost_name], refs)
        if b < a:
            raise InputError(f'--budget-range {cost_name}={low}:{high}:{n}: FROM ({costs[cost_name].model.format(a)}) '
                             f'is above TO ({costs[cost_name].model.format(b)})')
        for i in range(n):
            target = a + (b - a) * i / (n - 1)
            planned.append((cost_name, f'{low}..{high} {i + 1}/{n}', f'{cost_name}={low}..{high}:{i + 1}/{n}', target))
    if not planned:
        raise InputError(f'no budget given; give --budgets (e.g. 2.5b,3b,4b) or --budget-range ({RANGE_FORM})')
    out, seen = [], set()
    for cost_name, value, text, given in planned:
        space_cost = costs[cost_name]
        refs = space_cost.references()
        target, bits = (given, None) if given is not None else price(cost_name, value, space_cost, refs)
        fmt = space_cost.model.format
        if target < refs['min'] * (1 - RTOL) or target > refs['max'] * (1 + RTOL):
            raise InputError(f'budget {text} ({fmt(target)}) is outside the reachable range {fmt(refs["min"])} '
                             f'(all-minimum) .. {fmt(refs["max"])} (all-maximum) of the candidates '
                             f'{list(space_cost.candidates["w"])} / {list(space_cost.candidates["a"])}: below it no '
                             'policy fits, above it every policy does')
        key = (cost_name, round(target, 6))
        if key in seen:
            continue
        seen.add(key)
        slug = re.sub(r'[^A-Za-z0-9.]+', '-', text).strip('-')
        out.append({'label': text, 'cost': cost_name, 'value': value, 'target': target, 'bits': bits,
                    'arg': search_arg(cost_name, target), 'slug': slug, 'text': fmt(target)})
    return out


def uniform_pairs(budgets: list[dict], costs: dict) -> list[str]:
    """The uniform points of a sweep: per cost model of the budgets, every ``WxAy`` of the
    candidates whose cost lies within the budgets' range, plus the ones that bracket it (the
    most expensive below and the cheapest above, all of them when several cost the same).

    Returns:
        ``['W2A2', 'W2A3', ...]`` sorted by (w, a).
    """
    pairs = set()
    for cost_name in dict.fromkeys(b['cost'] for b in budgets):
        space_cost = costs[cost_name]
        targets = [b['target'] for b in budgets if b['cost'] == cost_name]
        low, high = min(targets), max(targets)
        priced = {(w, a): space_cost.uniform(w, a) for w in space_cost.candidates['w']
                  for a in space_cost.candidates['a']}
        below = [c for c in priced.values() if c < low * (1 - RTOL)]
        above = [c for c in priced.values() if c > high * (1 + RTOL)]
        for pair, c in priced.items():
            inside = low * (1 - RTOL) <= c <= high * (1 + RTOL)
            if inside or (below and c == max(below)) or (above and c == min(above)):
                pairs.add(pair)
    return [f'W{w}A{a}' for w, a in sorted(pairs)]
