"""The proxy against the truth (ssps_nni/proxy.py, proxy_report.py; docs/algorithm.md §10.1)."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from ssps_nni.proxy import holdout_split, measured_increase, operand_override
from ssps_nni.proxy_report import agreement, proxy_rows, write_proxy_report
from ssps_nni.sampler import SLOTS
from ssps_nni.search import SSPSSearch
from ssps_nni.sensitivity import first_order_scores, sensitivity_scores
from tiny_models import HandNet, hand_input, tensors_equal


def prepared():
    torch.manual_seed(0)
    model = HandNet()
    search = SSPSSearch(model, dict(budget="bitops=W4A4", candidates=(2, 4, 8), total_steps=8, seed=3))
    search.prepare(lambda: model(hand_input(8)), num_samples=8)
    return model, search


def batches(n=2):
    out = []
    for k in range(n):
        gen = torch.Generator().manual_seed(50 + k)
        out.append((torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen)))
    return out


def loss_fn(model):
    return lambda b: F.cross_entropy(model(b[0]), b[1])


def mean_loss(model, data):
    with torch.no_grad():
        return sum(float(loss_fn(model)(b)) for b in data) / len(data)


def test_holdout_split_is_disjoint_even_and_deterministic():
    fit, held = holdout_split(100)
    assert sorted(fit + held) == list(range(100)) and not set(fit) & set(held)
    assert held == list(range(9, 100, 10))
    # a class-sorted dataset of 10 classes x 10 gives one held-out image per class
    assert sorted(i // 10 for i in held) == list(range(10))
    with pytest.raises(ValueError, match="every >= 2"):
        holdout_split(5)


def test_float_reference_equals_the_loss_with_that_decision_fixed():
    """M[l, j] = L(only that operand at j) - L(float), through the cell's own fixed-decision path."""
    model, search = prepared()
    space, data = search.space, batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = measured_increase(search, loss_fn(model), data, "float")
    assert out["forwards"] == len(data) * (1 + len(space.searched) * 6)
    assert tensors_equal(model.state_dict(), before)  # nothing changed, masks included
    assert model.training  # the mode is restored
    model.eval()
    space.sampler.float_forward = True
    base = mean_loss(model, data)
    assert out["base"] == pytest.approx(base, rel=1e-12)
    for l, name in enumerate(space.searched):
        for slot in SLOTS:
            for j in range(3):
                space.fix(l, slot, j)
                expected = mean_loss(model, data) - base
                space.cells[name].set_mask(slot, torch.ones(3, dtype=torch.bool))
                assert float(out[slot][l, j]) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert bool((out["a"][:, 0] != 0).all()) and bool((out["w"][:, 0] != 0).all())  # 2 bits change the loss
    space.sampler.float_forward = False


def test_policy_reference_differences_match_fixed_policies():
    model, search = prepared()
    space, data = search.space, batches()
    for l in range(len(space.searched)):
        space.fix(l, "w", 1)
        space.fix(l, "a", 2)
    out = measured_increase(search, loss_fn(model), data, "policy")
    assert out["forwards"] == len(data) * (1 + len(space.searched) * 2 * 4)  # every candidate, not only the fixed one
    model.eval()
    policy_loss = mean_loss(model, data)
    assert out["base"] == pytest.approx(policy_loss, rel=1e-12)
    for l, name in enumerate(space.searched):
        cell = space.cells[name]
        with operand_override(cell, "a", -1):
            ref = mean_loss(model, data)
        assert float(out["a"][l, 2]) == pytest.approx(policy_loss - ref, rel=1e-6, abs=1e-9)
        losses = []
        for j in range(3):
            space.fix(l, "a", j)
            losses.append(mean_loss(model, data))
        space.fix(l, "a", 2)
        for j in range(3):
            assert float(out["a"][l, j] - out["a"][l, 0]) == pytest.approx(losses[j] - losses[0], rel=1e-6, abs=1e-9)
    assert "_operand" not in vars(space.cells[space.searched[0]])  # the override is gone


def test_first_order_scores_give_the_sensitivity_and_its_signed_mean():
    model, search = prepared()
    data = batches(3)
    both = first_order_scores(search, loss_fn(model), data, 3)
    assert tensors_equal(both["squared"], sensitivity_scores(search, loss_fn(model), data, 3))
    # the mean of s^2 is at least the square of the mean of s (Jensen), and both are measured
    for s in SLOTS:
        assert bool((both["squared"][s] >= both["signed"][s] ** 2 - 1e-12).all())
        assert bool((both["squared"][s][:, :2] > 0).all())


def test_agreement_on_hand_numbers(tmp_path):
    layers = ["a", "b", "c", "d"]
    cands = {"w": (2, 4), "a": (2, 4)}
    pred = {"w": torch.tensor([[1.0, 0.1], [2.0, 0.2], [3.0, 0.3], [4.0, 0.4]]),
            "a": torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])}
    meas = {"w": torch.tensor([[1.0, 0.4], [2.0, 0.3], [3.0, 0.2], [4.0, 0.1]]),
            "a": torch.tensor([[4.0, 0.0], [8.0, 0.0], [12.0, 0.0], [16.0, 0.0]])}
    rows = proxy_rows(layers, cands, {"p": pred, "m": meas, "none": None})
    assert len(rows) == 16 and "none" not in rows[0]
    groups = {(g["operand"], g["bits"]): g for g in agreement(rows, "p", "m")}
    assert groups[("weights", 2)]["spearman"] == pytest.approx(1.0)
    assert groups[("weights", 4)]["spearman"] == pytest.approx(-1.0)
    assert groups[("weights", 2)]["calibration"] == pytest.approx(1.0)
    assert groups[("activations", 2)]["calibration"] == pytest.approx(0.25)
    assert math.isnan(groups[("activations", 4)]["spearman"])  # constant: no rank
    assert math.isnan(groups[("activations", 4)]["calibration"])  # nothing measured
    assert groups[("both", "all")]["n"] == 16
    paths = write_proxy_report(tmp_path, rows, {"hand": ("p", "m")}, {"command": "test"})
    text = paths["md"].read_text()
    assert "2-bit activations are priced at 0.250 x" in text
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == 16


def test_policies_at_budgets_equal_fresh_solves():
    """One measurement, one solve per budget: the same policy as a search prepared at that budget."""
    from ssps_nni.sensitivity import policies_at, sensitivity_policy

    model, search = prepared()
    scores = sensitivity_scores(search, loss_fn(model), batches(), 2)
    found = policies_at(search, scores, ["bitops=W2A2", "bitops=W4A4", "bitops=W8A8"])
    for budget, policy in found.items():
        torch.manual_seed(0)
        fresh_model = HandNet()
        fresh = SSPSSearch(fresh_model, dict(budget=budget, candidates=(2, 4, 8), total_steps=8, seed=3))
        fresh.prepare(lambda: fresh_model(hand_input(8)), num_samples=8)
        expected = sensitivity_policy(fresh, scores)
        assert {n: (e["w_bits"], e["a_bits"]) for n, e in policy.layers.items()} == \
            {n: (e["w_bits"], e["a_bits"]) for n, e in expected.layers.items()}
        assert policy.meta["budgets"][0]["spec"] == budget and policy.meta["final"]
    assert found["bitops=W2A2"].layers["dw"]["w_bits"] == 2  # W2A2 leaves one policy


def test_calibration_factors_on_hand_numbers():
    from ssps_nni.score_calibration import calibrated, calibration_factors, scores_of_kind

    cands = {"w": (2, 4, 32), "a": (2, 4, 32)}
    pred = {"w": torch.tensor([[1.0, 0.5, 0.0], [3.0, 0.5, 0.0]]), "a": torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])}
    meas = {"w": torch.tensor([[2.0, 1.0, 0.0], [6.0, -1.0, 0.0]]), "a": torch.tensor([[4.0, -1.0, 0.0], [4.0, -1.0, 0.0]])}
    pooled = calibration_factors(pred, meas, cands)
    assert pooled["w"].tolist() == pytest.approx([8 / 5] * 3)  # (2 + 6 + 1 - 1) / (1 + 3 + 0.5 + 0.5)
    assert pooled["a"].tolist() == pytest.approx([6 / 4] * 3)
    per_bit = calibration_factors(pred, meas, cands, per_bit=True)
    assert per_bit["w"].tolist() == pytest.approx([2.0, 0.0, 8 / 5])  # 4 bits: measured sum 0 -> 0; 32: pooled
    assert per_bit["a"].tolist() == pytest.approx([4.0, 0.0, 6 / 4])
    assert calibrated(pred, pooled)["a"][0, 0] == pytest.approx(1.5)
    assert torch.equal(scores_of_kind("measured", pred, meas, cands)["w"], meas["w"].double())
    with pytest.raises(ValueError, match="need the measured"):
        scores_of_kind("calibrated", pred, None, cands)
    with pytest.raises(ValueError, match="cannot calibrate the a scores"):
        calibration_factors(pred, {"w": meas["w"], "a": -meas["a"].abs()}, cands)


def test_score_scale_multiplies_the_running_estimate_and_survives_resume():
    from ssps_nni.scores import ScoreAverage

    avg = ScoreAverage({"w": (2, 3), "a": (2, 3)}, ema=0.0)
    masks = {s: torch.ones(2, 3, dtype=torch.bool) for s in SLOTS}
    avg.update({"w": torch.ones(2, 3), "a": torch.full((2, 3), 2.0)}, masks)
    assert avg.value("a")[0, 0] == pytest.approx(4.0)
    avg.set_scale({"w": torch.tensor([1.0, 1.0, 1.0]), "a": torch.tensor([3.0, 3.0, 3.0])})
    assert avg.value("a")[0, 0] == pytest.approx(12.0) and avg.value("w")[0, 0] == pytest.approx(1.0)
    other = ScoreAverage({"w": (2, 3), "a": (2, 3)}, ema=0.0)
    other.load_state_dict(avg.state_dict())
    assert tensors_equal(other.value("a"), avg.value("a"))


def test_calibrate_search_scales_the_scores_by_the_measured_ratio():
    from ssps_nni.score_calibration import calibrate_search, calibration_factors
    from ssps_nni.search_config import SearchConfig

    model, search = prepared()
    data = batches(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = calibrate_search(search, loss_fn(model), data[:1], data[1:])
    assert tensors_equal(model.state_dict(), before)
    first = first_order_scores(search, loss_fn(model), data[:1], 1)
    truth = measured_increase(search, loss_fn(model), data[1:], "float")
    expected = calibration_factors(first["squared"], truth, search.space.candidates)
    for s in SLOTS:
        assert info["factors"][s] == pytest.approx(expected[s].tolist(), rel=1e-9)
        assert tensors_equal(search.scores.scale[s], expected[s])
    assert info["forwards"] == 1 + 1 + 2 * 6 and info["backwards"] == 1
    with pytest.raises(ValueError, match="score_calibration"):
        SearchConfig(score_calibration="fisher")


def test_search_cli_scores_options_are_checked_before_anything_loads():
    from argparse import Namespace

    from ssps_nni.cli.common import InputError
    from ssps_nni.cli.search import check_args, parse_args

    args = parse_args(["--method", "sensitivity", "--scores", "measured"])
    check_args(args)
    assert (args.scores, args.measure_batches, args.sensitivity_batches) == ("measured", 4, 128)
    args = parse_args(["--method", "sensitivity"])
    check_args(args)
    assert args.scores == "fisher"
    for argv, message in ((["--scores", "measured"], "only by --method sensitivity"),
                          (["--method", "sensitivity", "--measure-batches", "0"], "must be >= 1")):
        with pytest.raises(InputError, match=message):
            check_args(parse_args(argv))
    assert isinstance(parse_args([]), Namespace)


def test_adapted_increase_is_a_short_qat_per_operand_and_restores_the_model():
    import copy

    from ssps_nni.adapted import adapted_factors, adapted_increase

    model, search = prepared()
    space, train, held = search.space, batches(2), batches(3)[2:]
    before = copy.deepcopy(model.state_dict())
    out = adapted_increase(search, loss_fn(model), train, held, steps=3, lr=0.05)
    assert tensors_equal(model.state_dict(), before) and space.num_decided == 0 and model.training
    assert out["bits"] == {"w": 2, "a": 2}
    # the same by hand for the activations: every searched input at 2 bits, 3 SGD steps, eval loss
    torch.manual_seed(0)
    space.sampler.float_forward, space.sampler.signal = True, "sampled"
    base = mean_loss(model.eval(), held)
    for l in range(len(space.searched)):
        space.fix(l, "a", 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for b in [train[0], train[1], train[0]]:
        optimizer.zero_grad()
        loss_fn(model)(b).backward()
        optimizer.step()
    assert out["a"] == pytest.approx(mean_loss(model.eval(), held) - base, rel=1e-5, abs=1e-7)
    assert out["base"] == pytest.approx(base, rel=1e-12)
    fisher = {s: torch.ones(2, 3, dtype=torch.float64) for s in SLOTS}
    factors = adapted_factors(fisher, {"w": 0.4, "a": 0.8}, {"w": (2, 4, 8), "a": (2, 4, 8)})
    assert factors["w"].tolist() == pytest.approx([0.2] * 3) and factors["a"].tolist() == pytest.approx([0.4] * 3)
    zero = adapted_factors(fisher, {"w": -0.1, "a": 0.8}, {"w": (2, 4, 8), "a": (2, 4, 8)})
    assert zero["w"].tolist() == [0.0] * 3  # no loss left after adaptation: free
    with pytest.raises(ValueError, match="no operand's loss increased"):
        adapted_factors(fisher, {"w": -0.1, "a": 0.0}, {"w": (2, 4, 8), "a": (2, 4, 8)})
