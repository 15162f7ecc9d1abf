"""Single path search cell (ssps_nni/cell.py, docs/algorithm.md §3)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssps_nni.cell as cell_module
from ssps_nni.cell import QuantConv2d, QuantLinear
from ssps_nni.convert import convert_model
from ssps_nni.quant import quantize_activation, quantize_weight
from ssps_nni.sampler import PathSampler, TemperatureSchedule
from tiny_models import HandNet, hand_input

CANDIDATES = {2: (2, 8), 6: (2, 3, 4, 5, 6, 8)}


def make_conv_cell(candidates, groups: int = 1, seed: int = 0) -> tuple[QuantConv2d, PathSampler, torch.Tensor]:
    """A calibrated conv cell (4 -> 4 channels, 3x3) with its own sampler, and an input batch."""
    torch.manual_seed(seed)
    cell = QuantConv2d.from_float(nn.Conv2d(4, 4, 3, padding=1, groups=groups), candidates, candidates)
    sampler = PathSampler(1, candidates, candidates, tau=5.0, seed=seed)
    cell.attach(sampler, 0)
    x = torch.randn(2, 4, 5, 5)
    cell.calibrating = True
    cell(x)
    cell.calibrating = False
    cell.init_scales()
    return cell, sampler, x


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("n", [2, 6])
def test_search_mode_runs_one_convolution_and_one_activation_quantizer(n, monkeypatch):
    cell, _, x = make_conv_cell(CANDIDATES[n])
    cell.train()
    conv = Counter(F.conv2d)
    act = Counter(cell_module.quantize_activation)
    wq = Counter(cell_module.quantize_weight)
    monkeypatch.setattr(torch.nn.functional, "conv2d", conv)
    monkeypatch.setattr(cell_module, "quantize_activation", act)
    monkeypatch.setattr(cell_module, "quantize_weight", wq)
    for forwards in range(1, 6):
        cell(x)
        assert (conv.calls, act.calls, wq.calls) == (forwards, forwards, forwards)


@pytest.mark.parametrize("n", [2, 6])
def test_linear_cell_runs_one_matmul(n, monkeypatch):
    cands = CANDIDATES[n]
    torch.manual_seed(0)
    cell = QuantLinear.from_float(nn.Linear(4, 3), cands, cands)
    cell.attach(PathSampler(1, cands, cands), 0)
    linear = Counter(F.linear)
    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    x = torch.randn(5, 4)
    cell.train()
    for forwards in range(1, 4):
        assert cell(x).shape == (5, 3)
        assert linear.calls == forwards


@pytest.mark.parametrize("n", [2, 6])
def test_sampled_signal_every_undecided_logit_gets_a_gradient(n):
    cell, sampler, x = make_conv_cell(CANDIDATES[n])
    sampler.signal = "sampled"  # the residual form of §3; the dense signal is tested in test_scores.py
    cell.train()
    out = cell(x)
    out.mul(torch.randn_like(out)).sum().backward()
    for slot in ("w", "a"):
        grad = sampler.logits[slot].grad
        assert grad is not None and bool((grad != 0).all()), (slot, grad)
    # the step sizes of the sampled path get gradients too
    assert bool((cell.w_scale.grad[cell.last_path["w"]] != 0).any())
    assert float(cell.a_scale.grad[cell.last_path["a"]]) != 0


def test_pruned_candidate_gets_no_gradient_and_is_never_sampled():
    cell, sampler, x = make_conv_cell(CANDIDATES[6])
    sampler.signal = "sampled"
    cell.set_mask("w", torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool))
    cell.train()
    for _ in range(20):
        out = cell(x)
        assert cell.last_path["w"] != 2
    out.sum().backward()
    grad = sampler.logits["w"].grad[0]
    assert float(grad[2]) == 0.0
    assert bool((grad[[0, 1, 3, 4, 5]] != 0).all())


def test_forward_value_is_the_quantized_path():
    cell, _, x = make_conv_cell(CANDIDATES[6])
    cell.train()
    out = cell(x)
    kw, ka = cell.last_path["w"], cell.last_path["a"]
    w_q = quantize_weight(cell.weight, cell.w_scale[kw].abs(), cell.w_candidates[kw])
    x_q = quantize_activation(x, cell.a_scale[ka].abs(), cell.a_candidates[ka], bool(int(cell.a_signed)))
    torch.testing.assert_close(out, F.conv2d(x_q, w_q, cell.bias, padding=1), rtol=1e-5, atol=1e-6)


def test_eval_mode_is_deterministic_and_runs_the_argmax():
    cell, sampler, x = make_conv_cell(CANDIDATES[6])
    with torch.no_grad():
        sampler.logits["w"][0] = torch.tensor([0.1, 0.3, 2.0, -1.0, 0.5, 0.0])
        sampler.logits["a"][0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.2, 3.0])
    cell.eval()
    outs = [cell(x) for _ in range(3)]
    assert cell.last_path == {"w": 2, "a": 5}
    assert cell.bits() == (4, 8)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    # equal to the same cell fixed at the argmax, in train mode
    cell.fix("w", 2)
    cell.fix("a", 5)
    cell.train()
    assert torch.equal(cell(x), outs[0])


def test_search_mode_samples_follow_the_logits():
    cell, sampler, x = make_conv_cell(CANDIDATES[2])
    with torch.no_grad():
        sampler.logits["w"][0] = torch.tensor([0.0, 100.0])
    cell.train()
    seen = set()
    for _ in range(10):
        cell(x)
        seen.add(cell.last_path["w"])
    assert seen == {1}


def test_fixed_mode_ignores_the_logits():
    cell, sampler, x = make_conv_cell(CANDIDATES[6])
    cell.fix("w", 1)
    cell.fix("a", 4)
    cell.train()
    state = sampler.generator.get_state()
    out1 = cell(x)
    with torch.no_grad():
        for slot in ("w", "a"):
            sampler.logits[slot].copy_(torch.randn_like(sampler.logits[slot]) * 10)
    out2 = cell(x)
    assert torch.equal(out1, out2)
    assert cell.last_path == {"w": 1, "a": 4} and cell.bits() == (3, 6)
    assert torch.equal(sampler.generator.get_state(), state)  # no noise drawn
    out2.sum().backward()
    assert all(p.grad is None for p in sampler.parameters())
    assert cell.weight.grad is not None and cell.w_scale.grad is not None


def test_open_decision_without_sampler_is_a_clear_error():
    cell = QuantLinear.from_float(nn.Linear(2, 2), (2, 4), (2, 4))
    cell.fix("w", 0)
    with pytest.raises(RuntimeError, match="no PathSampler attached"):
        cell(torch.randn(1, 2))
    with pytest.raises(ValueError, match="cannot remove every candidate"):
        cell.set_mask("a", torch.zeros(2, dtype=torch.bool))


def test_cell_takes_over_the_float_parameters():
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1, groups=2)
    cell = QuantConv2d.from_float(conv, (4,), (4,))
    assert cell.weight is conv.weight and cell.bias is conv.bias
    assert (cell.stride, cell.padding, cell.groups) == ((2, 2), (1, 1), 2)
    names = [n for n, _ in cell.named_parameters()]
    assert names == ["weight", "bias", "w_scale", "a_scale"]
    assert [n for n, _ in cell.named_buffers()] == ["w_mask", "a_mask", "a_signed", "initialized"]


def test_warmup_sampling_is_uniform_and_carries_no_gradient():
    sampler = PathSampler(1, (2, 4, 8), (2, 4, 8), seed=3)
    sampler.uniform = True
    mask = torch.tensor([True, False, True])
    picks = [sampler.sample("w", 0, mask) for _ in range(60)]
    assert {k for k, _ in picks} == {0, 2}
    assert all(h is None for _, h in picks)


def test_sampler_state_round_trip_reproduces_paths():
    a = PathSampler(2, (2, 4), (2, 4, 8), tau=2.0, seed=5)
    mask = torch.ones(3, dtype=torch.bool)
    a.sample("a", 1, mask)
    state = a.state_dict()
    b = PathSampler(2, (2, 4), (2, 4, 8), seed=0)
    b.load_state_dict(state)
    assert [a.sample("a", 1, mask)[0] for _ in range(10)] == [b.sample("a", 1, mask)[0] for _ in range(10)]
    with pytest.raises(ValueError, match="another model"):
        PathSampler(3, (2, 4), (2, 4, 8)).load_state_dict(state)


def test_temperature_schedule():
    sched = TemperatureSchedule(5.0, 0.5, 100)
    assert sched(0) == 5.0
    assert sched(50) == pytest.approx(5.0 * 0.1**0.5)
    assert sched(100) == pytest.approx(0.5) and sched(1000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="tau_min"):
        TemperatureSchedule(0.5, 5.0, 10)


def test_layer_missed_by_calibration_initialises_from_its_first_batch():
    model = HandNet()
    space = convert_model(model, (2, 4), pinned="none")
    x = hand_input()
    space.calibrate(lambda: model.conv1(x))  # only conv1 sees data
    assert int(space.cells["conv1"].initialized) == 1
    assert [int(space.cells[n].initialized) for n in ("dw", "conv2", "fc")] == [0, 0, 0]
    model.eval()
    model(x)
    fc = space.cells["fc"]
    assert int(fc.initialized) == 1 and int(fc.a_signed) == 1
    assert float(fc.a_scale.detach().min()) > 1e-3  # from real data, not the 1e-8 floor of an empty calibration


@pytest.mark.parametrize("signal", ["dense", "sampled"])
def test_search_step_is_the_same_on_the_fused_and_the_composite_quantizer(signal, monkeypatch):
    """One search forward + backward of a whole model (docs/algorithm.md §2, §3.1): identical
    output, and the same gradients of weights, step sizes, logits and score probes."""
    import ssps_nni.quant as quant_module

    runs = []
    for fused in (True, False):
        monkeypatch.setattr(quant_module, "FUSED", fused)
        torch.manual_seed(0)
        model = HandNet()
        space = convert_model(model, (2, 4, 8, 32), pinned="none")
        space.sampler.signal = signal
        x = hand_input(4)
        space.calibrate(lambda: model(x))
        model.train()
        out = model(x)
        F.cross_entropy(out, torch.arange(4)).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for slot in ("w", "a"):
            for name, t in (("logits", space.sampler.logits[slot]), ("probe", space.sampler.probes[slot])):
                if t.grad is not None:
                    grads[f"{name}.{slot}"] = t.grad.clone()
        runs.append((out.detach(), grads, {n: dict(c.last_path) for n, c in space.cells.items()}))
    (out_f, grads_f, path_f), (out_c, grads_c, path_c) = runs
    assert path_f == path_c
    assert torch.equal(out_f, out_c)
    assert grads_f.keys() == grads_c.keys() and any(k.startswith(("probe", "logits")) for k in grads_f)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_c[name], rtol=1e-4, atol=1e-6, msg=name)


def test_mask_follows_every_change_of_its_buffer():
    cell, _, x = make_conv_cell(CANDIDATES[6])
    assert cell.mask("w").tolist() == [True] * 6
    cell.set_mask("w", torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool))
    assert cell.mask("w").tolist() == [True, True, False, True, True, True]
    cell.w_mask[0] = 0  # an in-place write (e.g. a buffer broadcast) bumps the buffer's version
    assert cell.mask("w").tolist() == [False, True, False, True, True, True]
    cell.w_mask = torch.ones(6, dtype=torch.uint8)  # a new buffer object (e.g. after .to(device))
    assert cell.mask("w").tolist() == [True] * 6
    state = {k: v.clone() for k, v in cell.state_dict().items()}
    state["a_mask"] = torch.tensor([0, 0, 1, 0, 0, 0], dtype=torch.uint8)
    cell.load_state_dict(state)
    assert cell.mask("a").tolist() == [False, False, True, False, False, False]
    assert cell.fixed_index("a") == 2


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [0, (1, 2), "same", "valid"])
def test_conv_forward_is_the_conv2d_forward(padding_mode, padding):
    """cell.conv_forward (public torch API only) computes what nn.Conv2d.forward does."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 4), padding=padding, dilation=(2, 1), groups=2, padding_mode=padding_mode)
    x = torch.randn(2, 4, 9, 11)
    assert torch.equal(cell_module.conv_forward(conv, x, conv.weight, conv.bias), conv(x))
    cell = QuantConv2d.from_float(conv, (32,), (32,))  # a float cell runs the same convolution
    assert torch.equal(cell(x), conv(x))


def test_operand_at_runs_one_candidate_and_is_restored_on_error():
    cell, sampler, x = make_conv_cell(CANDIDATES[2])
    cell.eval()
    expected = F.conv2d(quantize_activation(x, cell.a_scale[1].abs(), 8, bool(cell.a_signed)),
                        quantize_weight(cell.weight, cell.w_scale[0].abs(), 2), cell.bias, padding=1)
    with cell.operand_at("w", 0), cell.operand_at("a", 1):
        torch.testing.assert_close(cell(x), expected)
        assert cell.last_path == {"w": 0, "a": 1}
    with cell.operand_at("a", -1):  # float input, the weight on its argmax path
        float_input = cell(x)
    k = sampler.argmax("w", 0, cell.mask("w"))
    torch.testing.assert_close(float_input, F.conv2d(x, quantize_weight(cell.weight, cell.w_scale[k].abs(), (2, 8)[k]),
                                                     cell.bias, padding=1))
    with pytest.raises(ZeroDivisionError), cell.operand_at("w", 1):
        1 / 0
    cell(x)
    assert cell.last_path == {"w": k, "a": sampler.argmax("a", 0, cell.mask("a"))}  # back to the sampler's paths
