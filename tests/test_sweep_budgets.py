"""The budgets of ``ssps sweep`` priced from a layer profile, and the uniform points around them."""
from __future__ import annotations

import pytest


def space_costs():
    """Two searched layers of 10 MACs and 100 weights each, no pinned layer: BitOPs = 20 w a, size = 200 w."""
    from ssps_nni.cost import BitOpsCost, LayerProfile, SizeCost, SpaceCost

    profiles = {n: LayerProfile(n, 'conv', 10.0, 100, 0, 'sig') for n in ('a', 'b')}
    return {c.name: SpaceCost(c, profiles, ['a', 'b'], {}, (2, 3, 4), (2, 3, 4)) for c in (BitOpsCost(), SizeCost())}


def test_budgets_are_priced_from_the_profile_and_ranges_are_even_in_cost():
    from ssps_nni.cli.sweep import budgets as B

    costs = space_costs()
    out = B.resolve(B.parse_list('2.5b,W3A4,size=2.5b,bitops=200'), B.parse_range('min:max:3'), costs)
    assert [b['target'] for b in out] == [125.0, 240.0, 500.0, 200.0, 80.0, 320.0]  # 2.5b = 20 x 6.25
    assert out[0]['bits'] == 2.5 and out[0]['arg'] == 'bitops=125.0'
    assert out[2]['arg'] == 'size=62.5B'  # the search's size parser needs a unit: bits / 8 bytes
    # min:max:3 gives 80, 200, 320; 200 is already there (bitops=200) and is not repeated
    assert [b['label'] for b in out][-2:] == ['bitops=min..max:1/3', 'bitops=min..max:3/3']
    with pytest.raises(B.InputError, match='outside the reachable range'):
        B.resolve(B.parse_list('1.9b'), None, costs)
    with pytest.raises(B.InputError, match='outside the reachable range'):
        B.resolve(B.parse_list('bitops=321'), None, costs)


def test_uniform_points_cover_the_range_and_its_brackets():
    from ssps_nni.cli.sweep import budgets as B

    costs = space_costs()
    # bitops 3b = 180 (w a = 9): inside W3A3; below, the dearest under it: W2A4, W4A2 (w a = 8);
    # above, the cheapest over it: W3A4, W4A3 (w a = 12)
    assert B.uniform_pairs(B.resolve(B.parse_list('3b'), None, costs), costs) == ['W2A4', 'W3A3', 'W3A4', 'W4A2',
                                                                                  'W4A3']
    # size 2.5 bits per weight: every WxAy with 2-bit weights below, 3-bit weights above
    assert B.uniform_pairs(B.resolve(B.parse_list('size=2.5b'), None, costs), costs) == [
        'W2A2', 'W2A3', 'W2A4', 'W3A2', 'W3A3', 'W3A4']
