"""Profiling, cost models, expected cost and budgets (ssps_nni/cost.py, docs/algorithm.md §4).

Every number is worked out by hand from the table in ``tiny_models.HandNet``:
MACs conv1 6912, dw 576, conv2 512, fc 80 (sum 8080); weights 108, 36, 32, 80 (sum 256);
biases conv2 8, fc 10.
"""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from ssps_nni.convert import convert_model
from ssps_nni.cost import (
    COST_MODELS,
    BitFusionCost,
    BitOpsCost,
    Budget,
    LayerProfile,
    LutCost,
    SizeCost,
    SpaceCost,
    build_cost_model,
    layer_signature,
    parse_budget,
    parse_budgets,
    profile_layers,
)
from ssps_nni.errors import BudgetError, UnknownCostError
from tiny_models import HandNet, hand_input


def hand_space(pinned="none", candidates=(2, 4, 8)):
    model = HandNet()
    space = convert_model(model, candidates, pinned=pinned)
    x = hand_input(n=2)
    model.eval()
    space.calibrate(lambda: None)  # no data: just mark initialised
    profiles = profile_layers(model, space.cells, lambda: model(x), num_samples=2)
    return space, profiles


def space_cost(cost_model, space, profiles):
    return SpaceCost(cost_model, profiles, space.searched, space.pinned, space.candidates["w"], space.candidates["a"])


def test_profiles_by_hand():
    _, profiles = hand_space()
    assert {n: p.macs for n, p in profiles.items()} == {"conv1": 6912, "dw": 576, "conv2": 512, "fc": 80}
    assert {n: (p.weight_params, p.bias_params) for n, p in profiles.items()} == {
        "conv1": (108, 0), "dw": (36, 0), "conv2": (32, 8), "fc": (80, 10)}
    assert {n: p.signature for n, p in profiles.items()} == {
        "conv1": "conv_3_4_k3x3_s1_g1", "dw": "conv_4_4_k3x3_s2_g4",
        "conv2": "conv_4_8_k1x1_s1_g1", "fc": "linear_8_10"}
    assert profiles["fc"].kind == "linear" and profiles["dw"].kind == "conv"


def test_layer_never_called_costs_nothing():
    model = HandNet()
    space = convert_model(model, (2, 4), pinned="none")
    profiles = profile_layers(model, space.cells, lambda: None, num_samples=1)
    assert all(p.macs == 0 for p in profiles.values())


def test_bitops_size_bitfusion_by_hand():
    space, profiles = hand_space()
    bits = {"conv1": (8, 8), "dw": (2, 4), "conv2": (4, 2), "fc": (8, 2)}
    bitops = space_cost(BitOpsCost(), space, profiles)
    # 6912*64 + 576*8 + 512*8 + 80*16
    assert bitops.of_bits(bits) == 452352.0
    assert bitops.uniform(4, 4) == 129280.0  # 8080 * 16
    size = space_cost(SizeCost(), space, profiles)
    # 108*8 + 36*2 + 32*4 + 80*8 + (8 + 10) * 32
    assert size.of_bits(bits) == 2280.0
    assert size.uniform(4, 4) == 1600.0  # 256*4 + 18*32
    fusion = space_cost(BitFusionCost(), space, profiles)
    # ceil(w/2)*ceil(a/2): 4*4, 1*2, 2*1, 4*1
    assert fusion.of_bits(bits) == 6912 * 16 + 576 * 2 + 512 * 2 + 80 * 4 == 113088
    assert fusion.uniform(3, 5) == 48480.0  # 8080 * 2 * 3
    # of_indices reads the same table (candidates 2, 4, 8 -> indices 0, 1, 2)
    assert bitops.of_indices([2, 0, 1, 2], [2, 1, 0, 0]) == 452352.0
    assert bitops.table.shape == (4, 3, 3) and bitops.table.dtype == torch.float64
    assert float(bitops.table[1, 0, 2]) == 576 * 2 * 8


def test_references_and_pinned_layers_by_hand():
    space, profiles = hand_space(pinned="default")
    assert space.pinned == {"conv1": (8, 8), "fc": (8, 8)}
    bitops = space_cost(BitOpsCost(), space, profiles)
    assert bitops.pinned_cost == (6912 + 80) * 64 == 447488
    refs = bitops.references()
    assert refs == {
        "fp32": 8080 * 1024,
        "w8a8": 8080 * 64,
        "min": 447488 + (576 + 512) * 4,
        "max": 447488 + (576 + 512) * 64,
    }
    # a relative budget: every searched layer at W4A4, pinned layers at their bits
    budget = parse_budget("bitops=W4A4")
    assert budget == Budget("bitops", "bitops=W4A4", relative=(4, 4))
    assert budget.target(bitops) == 464896.0 == 447488 + (576 + 512) * 16
    size = space_cost(SizeCost(), space, profiles)
    assert parse_budget("size=W4A4").target(size) == (108 + 80) * 8 + (36 + 32) * 4 + 18 * 32 == 2352


def test_w4a4_budget_equals_uniform_4bit_cost_without_pins():
    space, profiles = hand_space()
    for cost, expected in ((BitOpsCost(), 129280.0), (SizeCost(), 1600.0), (BitFusionCost(), 32320.0)):
        sc = space_cost(cost, space, profiles)
        assert parse_budget(f"{cost.name}=W4A4").target(sc) == expected == sc.uniform(4, 4)


@pytest.mark.parametrize("name", ["bitops", "size", "bitfusion"])
def test_expected_cost_equals_brute_force(name):
    model = HandNet()
    space = convert_model(model, (2, 3, 8), a_candidates=(4, 6), pinned={"fc": "W8A8"})
    model.eval()
    profiles = profile_layers(model, space.cells, lambda: model(hand_input(1)), num_samples=1)
    assert profiles["conv1"].macs == 6912
    cost = space_cost(build_cost_model(name), space, profiles)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for slot in ("w", "a"):
            space.sampler.logits[slot].copy_(torch.randn(space.sampler.logits[slot].shape, generator=gen) * 2)
    pw, pa = space.probs("w"), space.probs("a")
    expected = cost.expected(pw, pa)
    pw, pa = pw.detach(), pa.detach()
    brute = 0.0
    L = len(space.searched)
    for w_idx in itertools.product(range(3), repeat=L):
        for a_idx in itertools.product(range(2), repeat=L):
            prob = 1.0
            for l in range(L):
                prob *= float(pw[l, w_idx[l]]) * float(pa[l, a_idx[l]])
            brute += prob * cost.of_indices(w_idx, a_idx)
    assert float(expected.detach()) == pytest.approx(brute, rel=1e-6)  # float32 probabilities sum to 1 +- 1e-7
    expected.backward()
    assert bool((space.sampler.logits["w"].grad != 0).all())
    a_grad = space.sampler.logits["a"].grad
    if name == "size":  # activation bits do not matter: zero up to float32 rounding
        assert float(a_grad.abs().max()) < 1e-6 * float(expected.detach())
    else:
        assert bool((a_grad != 0).all())


def test_cheapest_respects_masks():
    space, profiles = hand_space()
    cost = space_cost(BitOpsCost(), space, profiles)
    mw = torch.ones(4, 3, dtype=torch.bool)
    ma = torch.ones(4, 3, dtype=torch.bool)
    assert cost.cheapest(mw, ma) == 8080 * 4
    mw[0] = torch.tensor([False, False, True])  # conv1 weight fixed at 8 bits
    ma[3] = torch.tensor([False, True, True])  # fc input at least 4 bits
    assert cost.cheapest(mw, ma) == 6912 * 16 + 576 * 4 + 512 * 4 + 80 * 8


def test_lut_from_json_file(tmp_path):
    space, profiles = hand_space(candidates=(2, 4))
    table = {
        "unit": "ms",
        "layers": {"conv1": {"w2a2": 1.0, "w2a4": 2.0, "w4a2": 3.0, "w4a4": 4.0}},
        "signatures": {
            "conv_3_4_k3x3_s1_g1": {"w2a2": 99.0, "w2a4": 99.0, "w4a2": 99.0, "w4a4": 99.0},
            "conv_4_4_k3x3_s2_g4": {"w2a2": 0.5, "w2a4": 0.5, "w4a2": 0.5, "w4a4": 0.75},
            "conv_4_8_k1x1_s1_g1": {"w2a2": 0.25, "w2a4": 0.25, "w4a2": 0.25, "w4a4": 0.25},
            "linear_8_10": {"w2a2": 0.125, "w2a4": 0.125, "w4a2": 0.125, "w4a4": 0.125, "w8a8": 1.0},
        },
    }
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(table))
    lut = build_cost_model("lut", path=str(path))
    assert lut.unit == "ms" and lut.format(1.5) == "1.5 ms"
    cost = space_cost(lut, space, profiles)
    assert cost.uniform(4, 4) == 4.0 + 0.75 + 0.25 + 0.125  # the layer entry wins over the signature
    assert cost.uniform(2, 2) == 1.0 + 0.5 + 0.25 + 0.125
    assert parse_budget("lut=W4A4").target(cost) == 5.125
    assert parse_budget("lut=3.5") == Budget("lut", "lut=3.5", value=3.5)
    with pytest.raises(BudgetError, match="no entry 'w8a8' for layer 'conv1'"):
        cost.uniform(8, 8)
    assert LutCost(table={"layers": {}}).table == {"layers": {}}


def test_lut_errors(tmp_path):
    with pytest.raises(BudgetError, match="needs a JSON table"):
        build_cost_model("lut")
    with pytest.raises(BudgetError, match="cannot read LUT file"):
        build_cost_model("lut", path=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BudgetError, match="cannot read LUT file"):
        build_cost_model("lut", path=str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2]")
    with pytest.raises(BudgetError, match="'layers' and/or 'signatures'"):
        build_cost_model("lut", path=str(wrong))


def test_unknown_cost_name():
    with pytest.raises(UnknownCostError, match="unknown cost 'latency'; accepted: bitops, size, bitfusion, lut"):
        build_cost_model("latency")
    with pytest.raises(UnknownCostError, match="accepted: bitops, size, bitfusion, lut"):
        parse_budget("flops=1e9")
    assert issubclass(UnknownCostError, BudgetError) and issubclass(BudgetError, ValueError)
    assert set(COST_MODELS) == {"bitops", "size", "bitfusion", "lut"}


@pytest.mark.parametrize("text, expected", [
    ("bitops=W4A4", Budget("bitops", "bitops=W4A4", relative=(4, 4))),
    ("bitops=w3a8", Budget("bitops", "bitops=w3a8", relative=(3, 8))),
    ("bitops=1.2e9", Budget("bitops", "bitops=1.2e9", value=1.2e9)),
    ("bitops=1.2G", Budget("bitops", "bitops=1.2G", value=1.2e9)),
    ("bitops=5", Budget("bitops", "bitops=5", value=5.0)),
    (" BitOps = 2k", Budget("bitops", " BitOps = 2k", value=2000.0)),
    ("bitfusion=3M", Budget("bitfusion", "bitfusion=3M", value=3e6)),
    ("size=1.5MB", Budget("size", "size=1.5MB", value=1.2e7)),
    ("size=2KiB", Budget("size", "size=2KiB", value=16384.0)),
    ("size=100B", Budget("size", "size=100B", value=800.0)),
    ("size=W4A8", Budget("size", "size=W4A8", relative=(4, 8))),
])
def test_parse_budget_forms(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text, match", [
    ("bitops", "malformed budget"),
    ("bitops==4", "malformed budget"),
    ("bitops=", "malformed budget"),
    ("bitops=abc", "malformed budget"),
    ("bitops=-5", "malformed budget"),
    ("bitops=1.2X", "unknown suffix 'X'"),
    ("bitops=1.2GB", "unknown suffix 'GB'"),
    ("bitops=0", "must be positive"),
    ("bitops=1e400", "reads as infinity"),
    ("size=1e400MB", "reads as infinity"),
    ("size=1.5", "needs a unit"),
    ("size=3G", "needs a unit"),
    ("bitops=W0A4", "budget 'bitops=W0A4'"),
    ("bitops=W4A64", "budget 'bitops=W4A64'"),
    ("bitops=W4", "malformed budget"),
    (4, "malformed budget"),
])
def test_malformed_budgets(text, match):
    with pytest.raises(BudgetError, match=match) as info:
        parse_budget(text)
    assert not isinstance(info.value, UnknownCostError)


def test_malformed_budget_message_lists_forms():
    with pytest.raises(BudgetError, match=r"accepted forms: bitops=W4A4, bitops=1\.2e9"):
        parse_budget("bitops")


def test_parse_budgets():
    assert [b.cost for b in parse_budgets("bitops=W4A4,size=1.5MB")] == ["bitops", "size"]
    assert [b.cost for b in parse_budgets(["size=W4A4", "bitops=1e9"])] == ["size", "bitops"]
    budgets = parse_budgets({"bitops": "W4A4", "size": "1MB"})
    assert budgets[1] == Budget("size", "size=1MB", value=8e6)
    b = Budget("lut", "lut=1", value=1.0)
    assert parse_budgets(b) == [b] and parse_budgets([b]) == [b]
    for bad, match in (("", "no budget"), (",", "no budget"), ([], "no budget"), (None, "malformed"),
                       ("bitops=W4A4,bitops=1e9", "two budgets on one cost"), (3.5, "malformed")):
        with pytest.raises(BudgetError, match=match):
            parse_budgets(bad)


def test_formats():
    assert BitOpsCost().format(1.5e9) == "1.5 GBitOPs"
    assert SizeCost().format(1.2e7) == "1.5 MB"
    assert BitFusionCost().format(12345.0) == "1.234e+04"


def test_layer_profile_is_frozen():
    p = LayerProfile("x", "conv", 1.0, 1, 0, "conv_1_1_k1x1_s1_g1")
    with pytest.raises(Exception):
        p.macs = 2.0
    assert layer_signature(torch.nn.Conv2d(2, 4, (3, 1), stride=2, groups=2)) == "conv_2_4_k3x1_s2_g2"
