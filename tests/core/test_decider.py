"""Sequential determination by selection certainty (ssps_nni/decider.py, docs/algorithm.md §6)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssps_nni.convert import convert_model
from ssps_nni.cost import LayerProfile, SpaceCost, build_cost_model
from ssps_nni.decider import Constraint, DeciderConfig, SequentialDecider, certainty
from ssps_nni.errors import BudgetError
from ssps_nni.search import SearchConfig, SSPSSearch
from tiny_models import HandNet, hand_input, linear_stack, tensors_equal

# Decisions of HandNet with fc pinned, in space order, and their probabilities over (2, 4, 8).
PROBS = {
    "conv1.w_bits": [0.10, 0.70, 0.20],  # certainty 0.70, argmax 4
    "conv1.a_bits": [0.96, 0.02, 0.02],  # 0.96 -> 2
    "dw.w_bits": [0.05, 0.15, 0.80],  # 0.80 -> 8
    "dw.a_bits": [0.30, 0.40, 0.30],  # 0.40 -> 4
    "conv2.w_bits": [0.92, 0.04, 0.04],  # 0.92 -> 2
    "conv2.a_bits": [0.25, 0.25, 0.50],  # 0.50 -> 8
}
BY_CERTAINTY = ["conv1.a_bits", "conv2.w_bits", "dw.w_bits", "conv1.w_bits", "conv2.a_bits", "dw.a_bits"]
ARGMAX_BITS = {"conv1.w_bits": 4, "conv1.a_bits": 2, "dw.w_bits": 8, "dw.a_bits": 4, "conv2.w_bits": 2,
               "conv2.a_bits": 8}


def make_search(budget="bitops=W8A8", **options) -> SSPSSearch:
    torch.manual_seed(0)
    model = HandNet()
    config = dict(budget=budget, candidates=(2, 4, 8), pinned={"fc": "W8A8"}, total_steps=6, schedule_start=0.0)
    config.update(options)
    search = SSPSSearch(model, config)
    search.prepare(lambda: model(hand_input()), num_samples=2)
    rows = list(PROBS.values())
    with torch.no_grad():
        search.space.sampler.logits["w"].copy_(torch.tensor(rows[0::2]).log())
        search.space.sampler.logits["a"].copy_(torch.tensor(rows[1::2]).log())
    return search


def test_certainty_measures():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    torch.testing.assert_close(certainty(p, "max_prob"), torch.tensor([0.7, 0.5, 1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(certainty(p, "margin"), torch.tensor([0.5, 0.0, 1.0, 0.25], dtype=torch.float64))
    entropy = certainty(p, "entropy")
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy[0] == pytest.approx(1 - h0 / math.log(3))
    assert entropy[1] == pytest.approx(0.0)  # two allowed candidates, evenly split
    assert entropy[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown certainty measure"):
        certainty(p, "gini")


def test_threshold_fixes_the_certain_decisions_in_order():
    search = make_search(schedule="none", threshold=0.9)
    decider = search.decider
    assert decider.certainties().tolist() == pytest.approx([0.70, 0.96, 0.80, 0.40, 0.92, 0.50])
    assert decider.decide(1) == ["conv1.a_bits", "conv2.w_bits"]
    assert {k: v["bits"] for k, v in decider.decided.items()} == {"conv1.a_bits": 2, "conv2.w_bits": 2}
    assert decider.decided["conv1.a_bits"] == {"step": 1, "certainty": pytest.approx(0.96), "bits": 2,
                                               "guarded": False, "by": "threshold"}
    assert decider.decide(2) == []  # nothing else reaches the threshold
    assert search.space.num_decided == 2
    entry = decider.history[0]
    assert entry["step"] == 1 and entry["num_decided"] == 2 and entry["fixed"] == ["conv1.a_bits", "conv2.w_bits"]
    assert entry["log10_size"] == pytest.approx(4 * math.log10(3))
    assert entry["certainty"][1] == 1.0 and entry["certainty"][0] == pytest.approx(0.7)


def test_linear_schedule_fixes_most_certain_first_and_ends_on_time():
    search = make_search(threshold=None, total_steps=6)
    fixed = [search.end_step(step) for step in range(1, 7)]
    assert fixed == [[label] for label in BY_CERTAINTY]
    assert search.done
    assert {k: v["bits"] for k, v in search.decider.decided.items()} == ARGMAX_BITS
    assert [h["num_decided"] for h in search.decider.history] == [1, 2, 3, 4, 5, 6]


def test_schedule_with_warmup_and_interval():
    search = make_search(threshold=None, total_steps=10, warmup_steps=4, interval=2)
    decider = search.decider
    assert [decider.required(s) for s in (0, 4, 5, 6, 8, 10, 12)] == [0, 0, 1, 2, 4, 6, 6]
    assert [s for s in range(12) if decider.is_due(s)] == [6, 8, 10]
    counts = [len(search.end_step(step)) for step in range(1, 11)]
    assert counts == [0, 0, 0, 0, 0, 2, 0, 2, 0, 2]
    assert search.done


def test_schedule_start_leaves_the_first_steps_to_the_threshold():
    search = make_search(total_steps=12, warmup_steps=2, schedule_start=0.5)
    decider = search.decider
    # span 10 steps, start after 5 of them: nothing forced up to step 7, then 6 decisions over 5 steps
    assert [decider.required(s) for s in (2, 5, 7, 8, 10, 12)] == [0, 0, 0, 2, 4, 6]


def test_linear_schedule_decides_everything_by_the_last_step_even_off_interval():
    # 6 decisions, decision points every 4 steps of 10: the last step (10) must still decide all
    search = make_search(threshold=None, total_steps=10, interval=4)
    for step in range(1, 11):
        search.end_step(step)
    assert search.done


def test_threshold_and_schedule_combined():
    search = make_search(threshold=0.75, total_steps=12)
    assert search.end_step(1) == ["conv1.a_bits", "conv2.w_bits", "dw.w_bits"]
    assert search.end_step(2) == []  # required(2) = 1, already met
    assert search.end_step(8) == ["conv1.w_bits"]  # required(8) = 4


def test_feasibility_guard_takes_the_most_probable_feasible_candidate():
    # all-minimum budget: every fix must take 2 bits, whatever the logits say
    search = make_search(budget="bitops=W2A2", threshold=None)
    for step in range(1, 7):
        search.end_step(step)
    decided = search.decider.decided
    assert {k: v["bits"] for k, v in decided.items()} == dict.fromkeys(PROBS, 2)
    assert {k for k, v in decided.items() if v["guarded"]} == {k for k, b in ARGMAX_BITS.items() if b != 2}
    policy = search.finish()
    assert policy.meta["repaired"] is False
    assert policy.meta["totals"]["bitops"]["policy"] == policy.meta["totals"]["bitops"]["target"] == 37120.0


def test_guard_picks_second_choice_when_first_does_not_fit():
    # target = every searched layer at W2A2 except dw.w at 4 bits: dw.w (argmax 8) must fall back to 4,
    # its second most probable candidate (0.15 > 0.05)
    target = 80 * 64 + 6912 * 4 + 576 * 8 + 512 * 4
    search = make_search(budget=f"bitops={target}", threshold=None)
    assert search.end_step(1) == ["conv1.a_bits"]
    assert search.end_step(2) == ["conv2.w_bits"]
    assert search.end_step(3) == ["dw.w_bits"]
    assert search.decider.decided["dw.w_bits"]["bits"] == 4 and search.decider.decided["dw.w_bits"]["guarded"]
    policy = search.finish(3)
    assert policy.meta["totals"]["bitops"]["policy"] <= target


def test_repair_is_reported_when_the_guard_is_off():
    search = make_search(budget="bitops=W2A2", threshold=None, guard=False)
    for step in range(1, 7):
        search.end_step(step)
    assert {k: v["bits"] for k, v in search.decider.decided.items()} == ARGMAX_BITS  # over budget
    assert not search.decider.repaired
    policy = search.finish()
    assert search.decider.repaired and policy.meta["repaired"] is True
    assert all(v["bits"] == 2 for v in search.decider.decided.values())
    assert {k for k, v in search.decider.decided.items() if v.get("repaired")} == {
        k for k, b in ARGMAX_BITS.items() if b != 2}
    assert policy.meta["totals"]["bitops"]["policy"] == 37120.0


def test_prune_epsilon_removes_unlikely_candidates():
    search = make_search(threshold=None, schedule="none", prune_epsilon=0.1)
    decider = search.decider
    decider.decide(1)
    masks_w, masks_a = search.space.masks("w"), search.space.masks("a")
    assert masks_w.tolist() == [[True, True, True], [False, True, True], [True, False, False]]
    assert masks_a.tolist() == [[True, False, False], [True, True, True], [True, True, True]]
    assert set(decider.decided) == {"conv1.a_bits", "conv2.w_bits"}  # left with one candidate


def test_budget_below_all_minimum_gives_the_reachable_range():
    with pytest.raises(BudgetError) as info:
        make_search(budget="bitops=1")
    assert str(info.value) == (
        "budget bitops=1 = 1e-09 GBitOPs is unreachable: the cheapest policy costs 3.712e-05 GBitOPs. "
        "Reachable range: 3.712e-05 GBitOPs (all-minimum) to 0.0005171 GBitOPs (all-maximum); "
        "W8A8 = 0.0005171 GBitOPs, FP32 = 0.008274 GBitOPs"
    )


def test_decider_config_errors():
    for kwargs, match in (
        (dict(total_steps=0), "total_steps >= 1"),
        (dict(total_steps=5, interval=0), "interval >= 1"),
        (dict(total_steps=5, warmup_steps=5), "must be below total_steps"),
        (dict(total_steps=5, threshold=1.5), "threshold"),
        (dict(total_steps=5, threshold=0.0), "threshold"),
        (dict(total_steps=5, measure="gini"), "certainty measure"),
        (dict(total_steps=5, schedule="cosine"), "schedule"),
        (dict(total_steps=5, prune_epsilon=1.0), "prune_epsilon"),
    ):
        with pytest.raises(ValueError, match=match):
            DeciderConfig(**kwargs)


def test_decider_state_dict_round_trip():
    search = make_search(threshold=0.9, total_steps=6)
    search.end_step(1)
    search.end_step(2)
    state = search.decider.state_dict()
    other = make_search(threshold=0.9, total_steps=6)
    other.decider.load_state_dict(state)
    assert tensors_equal(other.decider.state_dict(), state)
    assert other.decider.decided == search.decider.decided and other.decider.history == search.decider.history
    state["decided"]["conv1.a_bits"]["bits"] = 99  # a copy, not shared
    assert other.decider.decided["conv1.a_bits"]["bits"] == 2


def _synthetic_space(num_layers, w_cands, a_cands, macs, params):
    model = linear_stack(num_layers)
    space = convert_model(model, w_cands, a_cands, pinned="none")
    profiles = {
        name: LayerProfile(name, "linear", float(macs[l]), int(params[l]), 3, f"linear_{l}")
        for l, name in enumerate(space.searched)
    }
    return space, profiles


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_guard_never_makes_the_budget_unreachable(data):
    num_layers = data.draw(st.integers(1, 4), label="layers")
    w_cands = tuple(sorted(data.draw(st.sets(st.sampled_from([2, 3, 4, 6, 8]), min_size=1, max_size=4))))
    a_cands = tuple(sorted(data.draw(st.sets(st.sampled_from([2, 4, 5, 8, 32]), min_size=1, max_size=4))))
    macs = data.draw(st.lists(st.integers(1, 10_000), min_size=num_layers, max_size=num_layers))
    params = data.draw(st.lists(st.integers(1, 5_000), min_size=num_layers, max_size=num_layers))
    space, profiles = _synthetic_space(num_layers, w_cands, a_cands, macs, params)
    constraints = []
    for name in data.draw(st.sets(st.sampled_from(["bitops", "size", "bitfusion"]), min_size=1, max_size=2)):
        cost = SpaceCost(build_cost_model(name), profiles, space.searched, {}, w_cands, a_cands)
        refs = cost.references()
        frac = data.draw(st.floats(0.0, 1.0), label=f"{name} budget")
        constraints.append(Constraint(cost, refs["min"] + frac * (refs["max"] - refs["min"]), name))
    total = data.draw(st.integers(1, 8), label="total_steps")
    config = DeciderConfig(
        total_steps=total,
        warmup_steps=data.draw(st.integers(0, total - 1), label="warmup"),
        interval=data.draw(st.integers(1, 3), label="interval"),
        threshold=data.draw(st.sampled_from([None, 0.5, 0.9])),
        measure=data.draw(st.sampled_from(["max_prob", "entropy", "margin"])),
        prune_epsilon=data.draw(st.sampled_from([None, 0.15])),
    )
    decider = SequentialDecider(space, constraints, config)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))

    def reachable():
        return all(c.cost.cheapest(space.masks("w"), space.masks("a")) <= c.target * (1 + 1e-9) for c in constraints)

    for step in range(1, total + 1):
        with torch.no_grad():  # training moves the logits between decision points
            for p in space.sampler.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 3)
        decider.maybe_decide(step)
        assert reachable()
    assert decider.done  # the linear schedule leaves nothing open at the end
    decider.finalize(total)
    assert not decider.repaired
    w_idx = [space.fixed_index(l, "w") for l in range(num_layers)]
    a_idx = [space.fixed_index(l, "a") for l in range(num_layers)]
    for c in constraints:
        assert c.cost.of_indices(w_idx, a_idx) <= c.target * (1 + 1e-9)


def test_search_config_flows_into_decider():
    config = SearchConfig(budget="bitops=W4A4", total_steps=20, warmup_steps=5, interval=3, threshold=None,
                          certainty="margin", schedule="none", prune_epsilon=0.05, guard=False)
    assert config.decider == DeciderConfig(20, 5, 3, None, "margin", "none", 0.05, False)


def test_fill_records_each_raise_within_the_budget_and_the_search_concludes():
    search = make_search("bitops=W4A4")
    search.decider.finalize(6)
    gains = {s: torch.tensor([[3.0, 2.0, 0.0]] * 3, dtype=torch.float64) for s in "wa"}  # 8 bits lose least
    report = search.decider.fill(search.costs, search.constraints(), gains, step=6)
    assert report["raises"] and search.within_budget()
    assert report["before"]["bitops"] < report["after"]["bitops"] <= search.targets["bitops"]
    raised = {}  # label -> (bits before the fill, bits after it)
    for r in report["raises"]:
        label = f"{r['layer']}.{r['slot']}_bits"
        raised[label] = (raised.get(label, (r["from"],))[0], r["to"])
    bits = search.space.bits()
    for label, (first, final) in raised.items():
        info = search.decider.decided[label]
        layer, slot = label.rsplit(".", 1)
        assert info["bits"] == final == bits[layer]["wa".index(slot[0])] and info["filled_from"] == first
    assert not search.finished
    search.conclude(report)
    assert search.finished and search.policy().meta["fill"] is report and search.policy().final
    search.reopen()
    assert not search.finished and search.fill_info is None and not search.policy().final
