"""Dense per-candidate scores (quant.ScoreTap, cell taps, scores.py; docs/algorithm.md §3.1, §5)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssps_nni.cell import QuantConv2d, QuantLinear
from ssps_nni.convert import convert_model, fixed_model
from ssps_nni.quant import quantize_activation, quantize_weight
from ssps_nni.sampler import PathSampler
from ssps_nni.scores import ScoreAverage, lagrange_multipliers, normalized
from ssps_nni.search import SSPSSearch
from tiny_models import HandNet, hand_input

C6 = (2, 3, 4, 5, 6, 8)


def _cell(kind: str, candidates, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "conv":
        cell = QuantConv2d.from_float(nn.Conv2d(4, 5, 3, padding=1), candidates, candidates)
        x = torch.randn(3, 4, 6, 6)
    else:
        cell = QuantLinear.from_float(nn.Linear(7, 5), candidates, candidates)
        x = torch.randn(3, 7)  # signed input: the signed activation range
    sampler = PathSampler(1, candidates, candidates, seed=seed)
    cell.attach(sampler, 0)
    cell.calibrating = True
    cell(x.abs() if kind == "conv" else x)
    cell.calibrating = False
    cell.init_scales()
    return cell, sampler, (x.abs() if kind == "conv" else x)


def _hand_scores(cell, x, upstream):
    """Reference: run the sampled path on leaf operands, then <g, Q_j(v) - v> with the composite quantizer."""
    kw, ka = cell.last_path["w"], cell.last_path["a"]
    signed = bool(int(cell.a_signed))
    w_q = quantize_weight(cell.weight, cell.w_scale[kw].abs(), cell.w_candidates[kw]).detach().requires_grad_()
    x_q = quantize_activation(x, cell.a_scale[ka].abs(), cell.a_candidates[ka], signed).detach().requires_grad_()
    out = F.conv2d(x_q, w_q, cell.bias, padding=1) if isinstance(cell, nn.Conv2d) else F.linear(x_q, w_q, cell.bias)
    (out * upstream).sum().backward()
    ref_w = torch.stack([(w_q.grad * (quantize_weight(cell.weight, cell.w_scale[j].abs(), b) - cell.weight)).sum()
                         for j, b in enumerate(cell.w_candidates)])
    ref_a = torch.stack([(x_q.grad * (quantize_activation(x, cell.a_scale[j].abs(), b, signed) - x)).sum()
                         for j, b in enumerate(cell.a_candidates)])
    return ref_w.detach(), ref_a.detach()


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_scores_equal_hand_computed_inner_products(kind):
    cell, sampler, x = _cell(kind, C6)
    cell.train()
    out = cell(x)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    raw = sampler.take_scores()
    ref_w, ref_a = _hand_scores(cell, x, upstream)
    torch.testing.assert_close(raw["w"][0], ref_w, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(raw["a"][0], ref_a, rtol=1e-4, atol=1e-6)
    assert sampler.probes["w"].grad is None  # take_scores cleared them


def test_32_bits_and_pruned_candidates_score_zero():
    cell, sampler, x = _cell("conv", (2, 4, 32))
    cell.set_mask("w", torch.tensor([0, 1, 1], dtype=torch.bool))
    cell.train()
    cell(x).square().sum().backward()
    raw = sampler.take_scores()
    assert float(raw["w"][0, 0]) == 0.0 and float(raw["w"][0, 2]) == 0.0 and float(raw["a"][0, 2]) == 0.0
    assert float(raw["w"][0, 1]) != 0.0 and float(raw["a"][0, 0]) != 0.0


def test_search_forward_is_bit_identical_to_the_fixed_policy():
    cell, sampler, x = _cell("conv", C6)
    cell.train()
    out = cell(x)
    kw, ka = cell.last_path["w"], cell.last_path["a"]
    fixed = QuantConv2d.from_float(nn.Conv2d(4, 5, 3, padding=1), (C6[kw],), (C6[ka],))
    fixed.weight, fixed.bias = cell.weight, cell.bias
    with torch.no_grad():
        fixed.w_scale[0] = cell.w_scale[kw]
        fixed.a_scale[0] = cell.a_scale[ka]
    fixed.a_signed.copy_(cell.a_signed)
    fixed.initialized.fill_(1)
    assert torch.equal(out, fixed(x))


def test_no_logit_gradient_from_the_task_loss_with_the_dense_signal():
    cell, sampler, x = _cell("conv", C6)
    cell.train()
    cell(x).sum().backward()
    assert sampler.logits["w"].grad is None and sampler.logits["a"].grad is None


def _saved_bytes(candidates) -> int:
    cell, _, x = _cell("conv", candidates)
    cell.train()
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = cell(x)
    out.sum().backward()
    return sum(total)


def test_step_memory_does_not_grow_with_the_number_of_candidates():
    # the per-candidate step sizes are parameters, not activations: what the backward keeps is the same
    assert _saved_bytes((4, 8)) == _saved_bytes(C6)


def test_score_average_forms_and_bias_correction():
    avg = ScoreAverage({"w": (2, 3), "a": (2, 3)}, form="squared", ema=0.5)
    raw = {"w": torch.tensor([[1.0, -2.0, 5.0], [3.0, 0.0, 0.0]]), "a": torch.zeros(2, 3)}
    # row 0: candidate 2 pruned; row 1: decided (one candidate left)
    masks = {"w": torch.tensor([[True, True, False], [False, True, False]]), "a": torch.ones(2, 3, dtype=torch.bool)}
    avg.update(raw, masks)
    assert avg.value("w").tolist() == [[1.0, 4.0, 0.0], [0.0, 0.0, 0.0]]  # bias-corrected first step
    avg.update({"w": torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), "a": torch.zeros(2, 3)}, masks)
    assert avg.value("w")[0, 0].item() == pytest.approx((0.25 * 1 + 0.5 * 9) / 0.75)
    signed = ScoreAverage({"w": (1, 2), "a": (1, 2)}, form="signed", ema=0.0)
    signed.update({"w": torch.tensor([[-1.0, 2.0]]), "a": torch.zeros(1, 2)},
                  {"w": torch.ones(1, 2, dtype=torch.bool), "a": torch.ones(1, 2, dtype=torch.bool)})
    assert signed.value("w").tolist() == [[-1.0, 2.0]]
    with pytest.raises(ValueError, match="score form"):
        ScoreAverage({"w": (1, 2)}, form="cubed")


def test_lagrange_multiplier_prices_the_budget():
    # 2 layers, candidates (2, 8) for w and a; layer 0 is sensitive, layer 1 is not
    d = {"w": torch.tensor([[10.0, 0.0], [0.1, 0.0]]), "a": torch.tensor([[10.0, 0.0], [0.1, 0.0]])}
    masks = {s: torch.ones(2, 2, dtype=torch.bool) for s in "wa"}
    bits = torch.tensor([2.0, 8.0])
    table = (bits[:, None] * bits[None, :]).expand(2, 2, 2).double()  # macs 1 each
    # unconstrained: both layers 8/8 = 128; a limit of 68 = layer 0 at 8/8 + layer 1 at 2/2
    assert lagrange_multipliers(d, masks, [table], [200.0], [200.0]) == [0.0]
    (mu,) = lagrange_multipliers(d, masks, [table], [68.0], [68.0])
    assert mu > 0
    obj = d["w"][:, :, None] + d["a"][:, None, :] + mu * table / 68.0
    choice = obj.flatten(1).argmin(1).tolist()
    assert choice == [3, 0]  # layer 0 at (8, 8), layer 1 at (2, 2)
    # scale-free: multiplying the scores multiplies mu
    (mu10,) = lagrange_multipliers({s: v * 10 for s, v in d.items()}, masks, [table], [68.0], [68.0])
    assert mu10 == pytest.approx(10 * mu, rel=1e-6)
    n = normalized(d, masks)
    assert float(torch.cat([(n[s].max(1).values - n[s].min(1).values) for s in "wa"]).mean()) == pytest.approx(1.0)


def test_dense_search_logits_follow_the_scores_and_budget():
    torch.manual_seed(0)
    model = HandNet()
    search = SSPSSearch(model, dict(budget="bitops=W4A4", candidates=(2, 4, 8), pinned="none", total_steps=40,
                                    threshold=None, schedule="none", fill=False))
    search.prepare(lambda: model(hand_input(4)), num_samples=4)
    assert search.logits_optimizer.param_groups[0]["lr"] == pytest.approx(20.0 / 40)  # §3.2 rule
    model.train()
    for step in range(30):
        search.begin_step(step)
        x = hand_input(8, seed=step)
        F.cross_entropy(model(x), torch.arange(8) % 10).backward()
        search.step_logits()
        search.end_step(step + 1)
    assert search.scores.measured
    moved = max(float(search.space.sampler.logits[s].detach().abs().max()) for s in "wa")
    assert moved > 1.0  # far beyond what lr 3e-3 allows in 30 steps (0.09)
    assert search.mu and search.mu[0] >= 0


def test_score_fraction_uses_the_first_samples_rescaled():
    from ssps_nni.quant import activation_candidate_scores

    torch.manual_seed(0)
    x, g = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    scales, bits = torch.tensor([0.5, 0.1]), (2, 4)
    part = activation_candidate_scores(x, g, scales, bits, True, fraction=0.25)
    head = activation_candidate_scores(x[:2], g[:2], scales, bits, True)
    torch.testing.assert_close(part, head * 2.0)  # sqrt(8 / 2)
