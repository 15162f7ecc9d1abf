"""One search end to end, resume and bad input (ssps_nni/search.py, docs/algorithm.md §3-§8)."""
from __future__ import annotations

import io
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssps_nni.errors import BudgetError, CandidateError, NoQuantizableLayersError, UnknownCostError
from ssps_nni.apply_policy import apply_policy
from ssps_nni.policy import load_policy
from ssps_nni.search import SearchConfig, SSPSSearch
from tiny_models import HandNet, hand_input, search_steps, tensors_equal

CONFIG = dict(budget="bitops=W4A4", candidates=(2, 4, 8), total_steps=8, warmup_steps=2, interval=2,
              threshold=0.95, logits_lr=0.05, seed=3)


def batch(step: int):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def new_search(config=None, calibrate=True):
    torch.manual_seed(0)
    model = HandNet()
    search = SSPSSearch(model, dict(CONFIG, **(config or {})))
    search.prepare(lambda: model(hand_input(4)), num_samples=4, calibrate=calibrate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, search, optimizer


def train(model, search, optimizer, start: int, stop: int) -> list[list[str]]:
    return search_steps(model, search, optimizer, range(start, stop), batch)


def test_search_end_to_end(tmp_path):
    model, search, optimizer = new_search()
    assert search.targets == {"bitops": 447488 + (576 + 512) * 16}  # conv1, fc pinned at W8A8
    logits_ids = {id(p) for p in search.space.sampler.parameters()}
    assert not any(id(p) in logits_ids for p in model.parameters())
    fixed = train(model, search, optimizer, 0, 8)
    assert fixed[0] == fixed[1] == []  # warm-up
    assert search.done
    policy = search.finish()
    totals = policy.meta["totals"]["bitops"]
    assert totals["policy"] <= totals["target"]
    assert set(totals["references"]) == {"fp32", "w8a8", "min", "max"}
    assert policy.meta["num_decided"] == policy.meta["num_decisions"] == 4
    assert policy.layers["conv1"] == {"w_bits": 8, "a_bits": 8, "pinned": True, "certainty": None,
                                      "decided_at": None}
    assert all(policy.layers[n]["decided_at"] in (4, 6, 8) for n in ("dw", "conv2"))
    path = policy.save(tmp_path / "policy.json")
    fresh = HandNet()
    cells = apply_policy(fresh, load_policy(path))
    assert {n: c.bits() for n, c in cells.items()} == policy.bits()
    stats = search.stats()
    assert stats["num_decided"] == 4
    assert stats["tau"] == pytest.approx(5.0 * 0.1 ** (5 / 6))  # set by begin_step(7): 5 of 6 search steps
    assert stats["ratio/bitops"] == pytest.approx(totals["policy"] / totals["target"])


def test_warmup_freezes_logits_and_samples_uniformly():
    model, search, optimizer = new_search()
    search.begin_step(0)
    assert search.in_warmup and search.space.sampler.uniform and search.space.sampler.tau == 5.0
    loss = F.cross_entropy(model(batch(0)[0]), batch(0)[1])
    extra, details = search.loss_term(loss)
    assert float(extra) == 0.0 and extra.grad_fn is None and "ratio/bitops" in details
    loss.backward()
    search.step_logits()
    assert all(torch.equal(p, torch.zeros_like(p)) for p in search.space.sampler.parameters())
    search.begin_step(2)
    assert not search.in_warmup and not search.space.sampler.uniform
    search.begin_step(5)
    assert search.space.sampler.tau == pytest.approx(5.0 * 0.1 ** 0.5)


def test_sampled_signal_loss_term_moves_the_logits_towards_the_budget():
    model, search, _ = new_search(dict(budget="bitops=W2A2", warmup_steps=0, lam=10.0, signal="sampled",
                                       penalty="abs", logits_lr=3e-3))
    search.begin_step(0)
    before = float(search.expected_costs()["bitops"].detach())
    for _ in range(5):
        extra, details = search.loss_term(torch.tensor(0.0))
        extra.backward()
        search.step_logits()
    assert float(search.expected_costs()["bitops"].detach()) < before
    assert details["ratio/bitops"] > 1


def test_resume_gives_identical_state_and_decisions():
    model_a, search_a, opt_a = new_search()
    train(model_a, search_a, opt_a, 0, 5)
    # through a checkpoint file, as a runner does (plain types only: loads with weights_only=True)
    buffer = io.BytesIO()
    torch.save({"search": search_a.state_dict(), "model": model_a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    state, model_state, opt_state = checkpoint["search"], checkpoint["model"], checkpoint["opt"]

    model_b, search_b, opt_b = new_search(calibrate=False)
    model_b.load_state_dict(model_state)
    opt_b.load_state_dict(opt_state)
    search_b.load_state_dict(state)
    assert tensors_equal(search_b.state_dict(), state)
    assert search_b.space.bits() == search_a.space.bits()

    fixed_a = train(model_a, search_a, opt_a, 5, 8)
    fixed_b = train(model_b, search_b, opt_b, 5, 8)
    assert fixed_a == fixed_b
    assert tensors_equal(search_b.state_dict(), search_a.state_dict())
    assert search_b.finish().to_dict() == search_a.finish().to_dict()


def test_several_budgets_and_exclusions():
    model, search, optimizer = new_search(dict(budget="bitops=W4A4,size=W4A8", exclude=["dw"]))
    train(model, search, optimizer, 0, 8)
    policy = search.finish()
    for name in ("bitops", "size"):
        totals = policy.meta["totals"][name]
        assert totals["policy"] <= totals["target"]
    assert policy.layers["dw"] == {"w_bits": 32, "a_bits": 32, "excluded": True}
    assert type(model.dw) is nn.Conv2d
    assert [b["cost"] for b in policy.meta["budgets"]] == ["bitops", "size"]
    apply_policy(HandNet(), policy)  # an excluded layer is listed, so the policy fits the model


def test_lut_budget_through_the_search(tmp_path):
    lut = tmp_path / "lut.json"
    entry = {f"w{w}a{a}": w * a / 64 for w in (2, 4, 8) for a in (2, 4, 8)}
    lut.write_text(json.dumps({"unit": "ms", "layers": dict.fromkeys(["conv1", "dw", "conv2", "fc"], entry)}))
    _, search, _ = new_search(dict(budget="lut=W4A4", cost_options={"lut": {"path": str(lut)}}))
    assert search.targets == {"lut": 2.0 + 2 * 0.25}
    policy = search.finish()
    assert policy.meta["totals"]["lut"]["unit"] == "ms"
    assert policy.meta["totals"]["lut"]["policy"] <= 2.5
    # the table has no 32/32 entries: no FP32 reference
    assert policy.meta["totals"]["lut"]["references"] == {"w8a8": 4.0, "min": 2.125, "max": 4.0}
    with pytest.raises(BudgetError, match=r"Reachable range: 2.125 ms .* FP32 = n/a"):
        new_search(dict(budget="lut=0.1", cost_options={"lut": {"path": str(lut)}}))


@pytest.mark.parametrize("options, error, match", [
    (dict(nope=1), ValueError, r"unknown SSPS option\(s\) \['nope'\]"),
    (dict(budget="latency=3"), UnknownCostError, "accepted: bitops, size, bitfusion, lut"),
    (dict(budget="bitops=3Q"), BudgetError, "unknown suffix"),
    (dict(budget="bitops"), BudgetError, "malformed budget"),
    (dict(budget="lut=W4A4"), BudgetError, "needs a JSON table"),
    (dict(cost_options={"size": {}}), ValueError, "no budget on those costs"),
    (dict(candidates=[]), CandidateError, "empty"),
    (dict(candidates=[2, 64]), CandidateError, "not an integer in 2..32"),
    (dict(candidates=[2, 4], a_candidates=[0]), CandidateError, "1..32"),
    (dict(penalty="square"), ValueError, "unknown penalty form"),
    (dict(total_steps=4, warmup_steps=4), ValueError, "warmup_steps"),
    (dict(certainty="gini"), ValueError, "certainty measure"),
])
def test_bad_options_are_refused_before_training(options, error, match):
    with pytest.raises(error, match=match):
        SSPSSearch(HandNet(), {"budget": "bitops=W4A4", **options})


@pytest.mark.parametrize("options, match", [
    (dict(seed="abc"), "seed must be an integer"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(tau_min=-1.0), r"0 < tau_min <= tau_max"),
    (dict(tau_max=0.1, tau_min=5.0), r"0 < tau_min <= tau_max"),
    (dict(include=5), "include must be a layer-name pattern"),
    (dict(exclude=["conv1", 3]), "exclude must be a layer-name pattern"),
])
def test_search_config_checks_seed_temperature_and_patterns_at_construction(options, match):
    # refused by the config itself (so the command line answers with one error line, exit 2),
    # not later by the sampler or the layer selection as a traceback
    with pytest.raises(ValueError, match=match):
        SearchConfig(**options)
    assert SearchConfig(seed=torch.tensor(3).item(), include="conv*", exclude=("head.*",)).seed == 3


def test_bad_models_and_budgets():
    with pytest.raises(NoQuantizableLayersError):
        SSPSSearch(nn.Sequential(nn.ReLU()), SearchConfig())
    with pytest.raises(BudgetError, match=r"Reachable range: .* \(all-minimum\) to .* \(all-maximum\)"):
        new_search(dict(budget="size=1B"))
    search = SSPSSearch(HandNet(), SearchConfig(budget="bitops=W4A4"))
    with pytest.raises(RuntimeError, match="call SSPSSearch.prepare"):
        search.end_step(1)


def test_config_round_trip():
    config = SearchConfig.from_dict(dict(CONFIG))
    again = SearchConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert [b.cost for b in again.budgets] == ["bitops"]


# -- divergence, interim and final policies, nothing to search (docs/algorithm.md §6, §8) ----------

def test_nan_loss_stops_the_step_and_names_the_first_nonfinite_layer():
    from ssps_nni.errors import SearchDivergedError

    model, search, optimizer = new_search()
    train(model, search, optimizer, 0, 3)
    decided = dict(search.decider.decided)
    with torch.no_grad():
        model.dw.weight[0, 0, 0, 0] = float("nan")  # as a huge learning rate leaves it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    search.begin_step(3)
    x, y = batch(3)
    loss = F.cross_entropy(model(x), y)
    after_forward = search.space.sampler.generator.get_state()
    with pytest.raises(SearchDivergedError, match=r"diverged at step 4 of 8 \(batch 3\): the training loss is nan; "
                       r"the first layer whose output was not finite is dw \(QuantConv2d\)") as err:
        search.check_loss(loss, locate=lambda: model(x), where="batch 3")
    assert "no final policy is written" in str(err.value) and err.value.exit_status == 3
    # nothing changed: weights and BatchNorm-like buffers, the sampler's generator, the decisions
    state = model.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(torch.nan_to_num(state[k]), torch.nan_to_num(v)) for k, v in before.items())
    assert torch.equal(search.space.sampler.generator.get_state(), after_forward)
    assert search.decider.decided == decided and not search.policy().meta["final"]


def test_finite_loss_passes_and_a_loss_nan_outside_the_layers_is_said_so():
    from ssps_nni.errors import SearchDivergedError

    model, search, _ = new_search()
    search.begin_step(0)
    x, y = batch(0)
    search.check_loss(F.cross_entropy(model(x), y), locate=lambda: pytest.fail("located a finite loss"))
    with pytest.raises(SearchDivergedError, match="the training loss is inf; every layer output was finite on a "
                                                  "re-run of this step: the loss computation is not"):
        search.check_loss(F.cross_entropy(model(x), y) / 0.0, locate=lambda: model(x))


def test_nonfinite_logits_objective_names_its_source():
    from ssps_nni.errors import SearchDivergedError

    model, search, optimizer = new_search()
    train(model, search, optimizer, 0, 3)
    search.costs["bitops"].table[0, 1, 1] = float("nan")  # e.g. a broken LUT entry of layer dw
    search.begin_step(3)
    x, y = batch(3)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(SearchDivergedError, match=r"the logits objective J is nan.*it comes from dw \(its bitops cost "
                                                  r"table\)"):
        search.step_logits()


def test_the_parts_run_on_their_declared_inputs():
    """The objective and the divergence guard are objects built from explicit inputs, not mixins."""
    from ssps_nni.divergence import DivergenceGuard
    from ssps_nni.objective import LogitsObjective
    from ssps_nni.sampler import SLOTS

    assert SSPSSearch.__bases__ == (object,)
    model, search, optimizer = new_search()
    train(model, search, optimizer, 0, 3)
    guard = DivergenceGuard(search.space, 8)  # the space and the search length, the step per call
    assert str(guard.diverged(3, "x", "at y", "z", "h")) == str(search.diverged("x", "at y", "z", "h"))
    objective = LogitsObjective(search.space, search.scores, search.logits_optimizer, "dense", None,
                                lambda what, layer: ValueError(f"{what} | {layer}"))
    masks = {s: search.space.masks(s) for s in SLOTS}
    probs = {s: search.space.probs(s).detach().double() for s in SLOTS}
    assert torch.equal(objective.value(probs, masks, search.costs, search.targets), search.logits_objective(probs, masks))
    assert objective.mu == search.mu and len(objective.mu) == 1
    search.costs["bitops"].table[0, 1, 1] = float("nan")
    search.begin_step(3)
    x, y = batch(3)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match=r"J is nan .*\| it comes from dw \(its bitops cost table\)"):
        objective.step(False, search.costs, search.targets)


def test_policy_is_final_only_when_finished_and_lists_open_decisions():
    model, search, optimizer = new_search()
    train(model, search, optimizer, 0, 3)
    snapshot = search.policy()
    assert snapshot.meta["final"] is False and not snapshot.final
    assert set(snapshot.meta["open"]) == {f"{n}.{s}_bits" for n in ("dw", "conv2") for s in "wa"} - set(
        search.decider.decided)
    assert snapshot.meta["open"]
    train(model, search, optimizer, 3, 8)
    assert search.done and search.policy().meta["final"] is False  # decided, not yet filled
    policy = search.finish()
    assert policy.final and policy.meta["final"] is True and policy.meta["open"] == []
    state = search.state_dict()
    assert state["finished"] is True
    _, restored, _ = new_search(calibrate=False)
    restored.load_state_dict(state)
    assert restored.finished and restored.policy().final


@pytest.mark.parametrize("options, reason, bits", [
    (dict(candidates=(4,)), r"every decision has one candidate \(weights \[4\], activations \[4\]\)", (4, 4)),
    (dict(budget="bitops=W2A2"), r"the budget bitops=W2A2 leaves one feasible policy", (2, 2)),
])
def test_nothing_to_search_is_settled_without_training(options, reason, bits):
    _, search, _ = new_search(options)
    why = search.single_policy()
    assert why is not None and re.search(reason, why)
    policy = search.settle()
    assert policy.final and policy.meta["settled"] == why
    assert {n: b for n, b in policy.bits().items() if n in ("dw", "conv2")} == {"dw": bits, "conv2": bits}
    assert policy.meta["num_decided"] == policy.meta["num_decisions"] == 4
    assert {d["by"] for d in policy.meta["decisions"].values()} == {"only"}
    assert search.single_policy() is None  # finished


def test_a_search_with_choices_is_not_settled():
    model, search, optimizer = new_search()
    assert search.single_policy() is None
    with pytest.raises(ValueError, match="single_policy"):
        search.settle()
    train(model, search, optimizer, 0, 1)
    assert search.single_policy() is None
