"""Fake quantizers (ssps_nni/quant.py, docs/algorithm.md §2), checked against a short reference."""
from __future__ import annotations

import math

import pytest
import torch

from ssps_nni.convert import convert_model
from ssps_nni.errors import CandidateError
from ssps_nni.quant import (
    activation_qrange,
    check_bits,
    fake_quantize,
    init_activation_scale,
    init_weight_scale,
    quantize_activation,
    quantize_weight,
    weight_qrange,
)
from tiny_models import HandNet, hand_input


def reference_quantize(x: torch.Tensor, scale: torch.Tensor, q_min: int, q_max: int) -> torch.Tensor:
    """Element by element in Python floats: ``clamp(round(x / s), q_min, q_max) * s``."""
    out = torch.empty_like(x)
    flat_x, flat_s, flat_o = x.reshape(-1), scale.expand_as(x).reshape(-1), out.view(-1)
    for i in range(flat_x.numel()):
        s = float(flat_s[i])
        flat_o[i] = min(max(round(float(flat_x[i]) / s), q_min), q_max) * s  # round(): half to even
    return out


def _random_cases(count: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        dims = int(torch.randint(2, 5, (1,), generator=gen))
        shape = tuple(int(d) for d in torch.randint(1, 5, (dims,), generator=gen))
        bits = int(torch.randint(2, 9, (1,), generator=gen))
        yield shape, bits, gen


def test_qranges():
    assert weight_qrange(2) == (-1, 1)
    assert weight_qrange(8) == (-127, 127)
    assert activation_qrange(1, signed=False) == (0, 1)
    assert activation_qrange(8, signed=False) == (0, 255)
    assert activation_qrange(8, signed=True) == (-128, 127)
    with pytest.raises(ValueError, match="at least 2 bits"):
        weight_qrange(1)


@pytest.mark.parametrize("bad", [0, -1, 33, 2.0, "4", True, None])
def test_check_bits_rejects(bad):
    with pytest.raises(CandidateError, match="1..32"):
        check_bits(bad)


def reference_grads(x, scale, q_min, q_max, factor):
    """STE mask and LSQ scale gradient of ``sum(Q(x))``: inside the range (after rounding, as
    ``torch.fake_quantize_per_tensor_affine`` does) ``dx = 1``, ``ds = round(x/s) - x/s``; outside
    ``dx = 0``, ``ds = q_min`` or ``q_max``."""
    v = x / scale
    r = v.round()
    inside = (r >= q_min) & (r <= q_max)
    ds = torch.where(inside, r - v, r.clamp(q_min, q_max)) * factor
    return inside.to(x.dtype), ds


def test_weight_quantizer_matches_reference_and_is_symmetric():
    for shape, bits, gen in _random_cases(12, seed=1):
        w = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).requires_grad_()
        scale = (torch.rand(shape[0], generator=gen, dtype=torch.float64) * 0.5 + 0.05).requires_grad_()
        w_q = quantize_weight(w, scale, bits)
        q_min, q_max = weight_qrange(bits)
        view = scale.detach().reshape(-1, *([1] * (w.dim() - 1)))
        w_q.sum().backward()
        mask, ds = reference_grads(w.detach(), view, q_min, q_max, 1 / math.sqrt(w[0].numel() * q_max))
        assert torch.equal(w.grad, mask)
        torch.testing.assert_close(scale.grad, ds.flatten(1).sum(1), rtol=1e-9, atol=1e-12)
        w, scale, w_q = w.detach(), scale.detach(), w_q.detach()
        torch.testing.assert_close(w_q, reference_quantize(w, view, q_min, q_max), rtol=0, atol=1e-12)
        # symmetric: Q(-w) == -Q(w), and the integer grid is [-(2^(b-1)-1), 2^(b-1)-1]
        torch.testing.assert_close(quantize_weight(-w, scale, bits), -w_q, rtol=0, atol=0)
        ints = w_q / view
        torch.testing.assert_close(ints, ints.round(), rtol=0, atol=1e-9)
        assert ints.round().min() >= -(2 ** (bits - 1) - 1) and ints.round().max() <= 2 ** (bits - 1) - 1
        for c in range(shape[0]):
            assert w_q[c].unique().numel() <= 2**bits - 1


def test_weight_quantizer_uses_all_levels_of_a_wide_tensor():
    w = torch.linspace(-1, 1, 1001).reshape(1, -1)
    w_q = quantize_weight(w, torch.tensor([1 / 7]), 4)
    assert w_q.unique().numel() == 15  # 2^4 - 1 levels, -7/7 .. 7/7
    assert float(w_q.min()) == pytest.approx(-1.0) and float(w_q.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("signed", [False, True])
def test_activation_quantizer_matches_reference(signed):
    for shape, bits, gen in _random_cases(10, seed=2 + signed):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
        if not signed:
            x = x.abs()
        scale = torch.tensor(0.1 + float(torch.rand(1, generator=gen)), dtype=torch.float64)
        x.requires_grad_()
        scale.requires_grad_()
        x_q = quantize_activation(x, scale, bits, signed)
        q_min, q_max = activation_qrange(bits, signed)
        x_q.sum().backward()
        mask, ds = reference_grads(x.detach(), scale.detach(), q_min, q_max, 1 / math.sqrt(x.numel() * max(q_max, 1)))
        assert torch.equal(x.grad, mask)
        torch.testing.assert_close(scale.grad, ds.sum(), rtol=1e-9, atol=1e-12)
        x, scale, x_q = x.detach(), scale.detach(), x_q.detach()
        torch.testing.assert_close(x_q, reference_quantize(x, scale, q_min, q_max), rtol=0, atol=1e-12)
        assert x_q.unique().numel() <= 2**bits
        if not signed:
            assert float(x_q.min()) >= 0


def test_unsigned_activation_uses_at_most_2_pow_b_levels():
    x = torch.linspace(-2, 20, 5000)
    for bits in (1, 2, 3, 4):
        x_q = quantize_activation(x, torch.tensor(0.01), bits, signed=False)
        assert x_q.unique().numel() == 2**bits
        assert float(x_q.min()) == 0.0


def test_bits_32_bypasses():
    w = torch.randn(3, 4)
    assert quantize_weight(w, torch.ones(3), 32) is w
    assert quantize_activation(w, torch.tensor(1.0), 32, signed=True) is w
    assert torch.equal(init_weight_scale(w, 32), torch.ones(3))
    assert init_activation_scale(5.0, 32, signed=False) == 1.0


def test_lsq_init():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    # 2 * mean|w| / sqrt(q_max), q_max = 7 at 4 bits
    torch.testing.assert_close(init_weight_scale(w, 4), torch.tensor([4.0, 1.0]) / math.sqrt(7))
    assert init_activation_scale(1.5, 2, signed=False) == pytest.approx(3.0 / math.sqrt(3))
    assert init_activation_scale(1.5, 4, signed=True) == pytest.approx(3.0 / math.sqrt(7))


# (x, d x_q / d x, d x_q / d s) at s = 0.5, range [-3, 3]; LSQ: round(x/s) - x/s inside,
# q_min / q_max outside.
LSQ_CASES = [
    (-3.0, 0.0, -3.0),
    (-0.6, 1.0, 0.2),  # x/s = -1.2 -> -1
    (0.1, 1.0, -0.2),  # x/s = 0.2 -> 0
    (0.74, 1.0, -0.48),  # x/s = 1.48 -> 1
    (2.0, 0.0, 3.0),
    (5.0, 0.0, 3.0),
]


@pytest.mark.parametrize("x_value, grad_x, grad_s", LSQ_CASES)
@pytest.mark.parametrize("factor", [1.0, 0.25])
def test_ste_and_lsq_gradients(x_value, grad_x, grad_s, factor):
    x = torch.tensor(x_value, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y = fake_quantize(x, s, -3, 3, grad_factor=factor)
    y.backward()
    assert float(x.grad) == pytest.approx(grad_x, abs=1e-12)
    assert float(s.grad) == pytest.approx(grad_s * factor, abs=1e-12)
    assert float(y.detach()) == pytest.approx(min(max(round(x_value / 0.5), -3), 3) * 0.5)


def test_weight_and_activation_scales_get_lsq_scaled_gradient():
    w = torch.tensor([[0.74, 5.0]], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    quantize_weight(w, s, 3).sum().backward()  # range [-3, 3], numel per channel 2
    assert w.grad.tolist() == [[1.0, 0.0]]
    assert float(s.grad) == pytest.approx((-0.48 + 3.0) / math.sqrt(2 * 3))

    x = torch.tensor([0.74, 5.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    quantize_activation(x, a, 2, signed=False).sum().backward()  # range [0, 3]
    assert x.grad.tolist() == [1.0, 0.0]
    assert float(a.grad) == pytest.approx((-0.48 + 3.0) / math.sqrt(2 * 3))


def test_signed_activation_is_picked_from_calibration():
    torch.manual_seed(0)
    model = HandNet()
    space = convert_model(model, (2, 4), pinned="none")
    x = hand_input()  # randn: negative values reach conv1; fc sees conv2's raw output
    space.calibrate(lambda: model(x))
    assert int(space.cells["conv1"].a_signed) == 1
    assert int(space.cells["dw"].a_signed) == 0  # after a ReLU
    assert int(space.cells["conv2"].a_signed) == 0  # after a ReLU
    assert int(space.cells["fc"].a_signed) == 1
    assert all(int(c.initialized) == 1 for c in space.cells.values())
    # lazy init from the first batch (nobody calibrated) picks the sign the same way
    model2 = HandNet()
    space2 = convert_model(model2, (2, 4), pinned="none")
    model2.eval()
    model2(x.abs())
    assert int(space2.cells["conv1"].a_signed) == 0
    assert int(space2.cells["fc"].a_signed) == 1
