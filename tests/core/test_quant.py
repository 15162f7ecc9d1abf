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


# -- fused path (quant.LSQFakeQuantize) against the composite reference ---------------------------

import ssps_nni.quant as quant_module  # noqa: E402
from ssps_nni.quant import LSQFakeQuantize, ScoreTap, fused_applies  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _both_paths(fn, monkeypatch):
    """``fn()`` once on the fused path and once on the composite (``quant.FUSED = False``)."""
    out = []
    for fused in (True, False):
        monkeypatch.setattr(quant_module, "FUSED", fused)
        out.append(fn())
    return out


def _act_run(x0, s0, g, bits, signed):
    def run():
        x = x0.clone().requires_grad_()
        s = s0.clone().requires_grad_()
        y = quantize_activation(x, s, bits, signed)
        y.backward(g)
        return y.detach(), x.grad, s.grad
    return run


def _weight_run(w0, s0, g, bits):
    def run():
        w = w0.clone().requires_grad_()
        s = s0.clone().requires_grad_()
        y = quantize_weight(w, s, bits)
        y.backward(g)
        return y.detach(), w.grad, s.grad
    return run


def _lsq_scale_grad(x, scale, g, q_min, q_max, factor, dims=None):
    """float64 LSQ step gradient ``factor * sum(g * (round(v) - v | q_edge))``, from the same ``v = x / s``."""
    v = (x / scale).double()  # the quantizer's own division, in its dtype
    r = v.round()
    inside = (r >= q_min) & (r <= q_max)
    terms = g.double() * torch.where(inside, r - v, r.clamp(q_min, q_max)) * factor
    return terms.sum() if dims is None else terms.flatten(1).sum(1)


def test_fused_path_is_taken_only_where_it_applies(monkeypatch):
    x, s = torch.randn(4), torch.tensor(0.5)
    assert fused_applies(x, s, 0, 15) and fused_applies(x.double(), s.double(), -8, 7)
    assert not fused_applies(x.half(), s.half(), 0, 15)  # e.g. an autocast operand: composite
    assert not fused_applies(x, s.double(), 0, 15)  # mixed dtypes: composite
    assert not fused_applies(x, s, 0, 2**17 - 1)  # q +- 1/2 would not be exact in float32
    monkeypatch.setattr(quant_module, "FUSED", False)
    assert not fused_applies(x, s, 0, 15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("signed", [False, True])
def test_fused_activation_equals_composite(device, dtype, signed, monkeypatch):
    gen = torch.Generator().manual_seed(7 + signed)
    for bits in (1, 2, 3, 4, 6, 8):
        x0 = torch.randn(64, 4, 9, 9, generator=gen, dtype=dtype) * 1.7
        if not signed:
            x0 = x0.abs() - 0.05  # unsigned range, a few negatives below the bottom edge
        # step sizes with awkward reciprocals (1 / s rounds), and a power of two (exact ties)
        for s_value in (0.0731, 1 / 3, 0.25):
            s0 = torch.tensor(s_value, dtype=dtype)
            g = torch.randn(x0.shape, generator=gen, dtype=dtype)
            x0d, s0d, gd = x0.to(device), s0.to(device), g.to(device)
            fused, comp = _both_paths(_act_run(x0d, s0d, gd, bits, signed), monkeypatch)
            assert torch.equal(fused[0], comp[0]), (bits, s_value)  # values: identical
            assert torch.equal(fused[1] != 0, comp[1] != 0)  # the same STE mask
            torch.testing.assert_close(fused[1], comp[1], rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
            assert torch.equal(fused[1], gd * (fused[1] != 0))  # exactly g inside the range, 0 outside
            q_min, q_max = activation_qrange(bits, signed)
            ref = _lsq_scale_grad(x0d, s0d, gd, q_min, q_max, 1 / math.sqrt(x0.numel() * max(q_max, 1)))
            tol = dict(rtol=2e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(fused[2].double(), ref, **tol)
            torch.testing.assert_close(comp[2].double(), ref, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_weight_equals_composite_per_channel(device, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(11)
    for shape in ((8, 4, 3, 3), (5, 7), (3, 1, 1, 1)):
        for bits in (2, 3, 4, 8):
            w0 = torch.randn(shape, generator=gen, dtype=dtype)
            s0 = torch.rand(shape[0], generator=gen, dtype=dtype) * 0.4 + 0.03
            g = torch.randn(shape, generator=gen, dtype=dtype)
            w0d, s0d, gd = w0.to(device), s0.to(device), g.to(device)
            fused, comp = _both_paths(_weight_run(w0d, s0d, gd, bits), monkeypatch)
            assert torch.equal(fused[0], comp[0]), (shape, bits)
            assert torch.equal(fused[1] != 0, comp[1] != 0)
            assert torch.equal(fused[1], gd * (fused[1] != 0))
            q_min, q_max = weight_qrange(bits)
            view = s0d.reshape(-1, *([1] * (len(shape) - 1)))
            ref = _lsq_scale_grad(w0d, view, gd, q_min, q_max, 1 / math.sqrt(w0[0].numel() * q_max), dims=1)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(fused[2].double(), ref, **tol)
            torch.testing.assert_close(comp[2].double(), ref, **tol)


# (q_min, q_max): unsigned [0, 1] and [0, 15], 1-bit signed [-1, 0] (an even top edge), signed
# 4-bit [-8, 7] (an even bottom edge), 2- and 4-bit weights [-1, 1], [-7, 7] (odd edges).
EDGE_RANGES = [(0, 1), (0, 15), (-1, 0), (-8, 7), (-1, 1), (-7, 7)]


@pytest.mark.parametrize("q_min, q_max", EDGE_RANGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_clipping_edges_exact(q_min, q_max, dtype):
    """At and one unit in the last place around both ties ``q_min - 1/2`` and ``q_max + 1/2``
    (round half to even decides them), and far outside: value, STE mask and the LSQ step
    gradient term of every element, against Python's ``round`` (half to even)."""
    s = 0.5  # a power of two: v = x / s is exact, and so are the ties
    vs = []
    for edge, out in ((q_min - 0.5, -1.0), (q_max + 0.5, 1.0)):
        t = torch.tensor(edge, dtype=dtype)
        vs += [float(torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))), edge,
               float(torch.nextafter(t, torch.tensor(math.inf, dtype=dtype)))]
    vs += [q_min - 3.0, q_max + 3.0, (q_min + q_max) / 2 + 0.3, 0.0, -0.25, 1e6, -1e6]
    x = torch.tensor(vs, dtype=dtype).mul(s).requires_grad_()
    scale = torch.tensor(s, dtype=dtype, requires_grad=True)
    y = LSQFakeQuantize.apply(x, scale, q_min, q_max, 1.0, False, None, None)
    y.backward(torch.ones_like(y))
    terms = []
    y = y.detach()
    for i, v in enumerate(vs):
        r = round(v)  # half to even
        inside = q_min <= r <= q_max
        assert float(y[i]) == min(max(r, q_min), q_max) * s, (v, float(y[i]))
        assert float(x.grad[i]) == (1.0 if inside else 0.0), (v, float(x.grad[i]))
        terms.append((r - v) if inside else min(max(r, q_min), q_max))
    eps = torch.finfo(dtype).eps
    assert float(scale.grad) == pytest.approx(sum(terms), abs=4 * eps * sum(map(abs, terms)))
    ref = fake_quantize(x.detach(), torch.tensor(s, dtype=dtype), q_min, q_max)
    assert torch.equal(y.detach(), ref)


@pytest.mark.parametrize("signed", [False, True])
def test_fused_gradients_match_torch_learnable_kernels_at_unit_step(signed):
    """An independent reference: torch's learnable fake-quant backward on ``v = x / s`` with step
    1 (where its ``v * (1 / 1)`` is exact) gives the same STE mask and LSQ term per element."""
    torch.manual_seed(3)
    q_min, q_max = activation_qrange(4, signed)
    v = torch.randn(4, 3, 8, 8) * 6
    g = torch.randn_like(v)
    dx, ds, _ = torch.ops.aten._fake_quantize_learnable_per_tensor_affine_backward(
        g, v, torch.ones(1), torch.zeros(1), q_min, q_max, 0.25)
    x = v.clone().requires_grad_()
    one = torch.tensor(1.0, requires_grad=True)
    LSQFakeQuantize.apply(x, one, q_min, q_max, 0.25, False, None, None).backward(g)
    assert torch.equal(x.grad, dx)
    torch.testing.assert_close(one.grad, ds.reshape(()), rtol=1e-5, atol=1e-6)
    # per channel: the learnable per-channel kernel, one unit step per output channel
    w = torch.randn(6, 4, 3, 3) * 5
    gw = torch.randn_like(w)
    q_min, q_max = weight_qrange(4)
    dw, dsw, _ = torch.ops.aten._fake_quantize_learnable_per_channel_affine_backward(
        gw, w, torch.ones(6), torch.zeros(6), 0, q_min, q_max, 1.0)
    wl = w.clone().requires_grad_()
    ones = torch.ones(6, requires_grad=True)
    LSQFakeQuantize.apply(wl, ones, q_min, q_max, 1.0, True, None, None).backward(gw)
    assert torch.equal(wl.grad, dw)
    torch.testing.assert_close(ones.grad, dsw, rtol=1e-5, atol=1e-6)


def test_fused_tap_gives_the_scoretap_scores(monkeypatch):
    """The dense-signal tap inside the fused backward (§3.1) writes what ScoreTap writes."""
    from ssps_nni.quant import activation_candidate_scores, weight_candidate_scores

    torch.manual_seed(5)
    x0, g = torch.randn(6, 3, 5, 5).abs(), torch.randn(6, 3, 5, 5)
    w0, gw = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    a_scales, w_scales = torch.tensor([0.3, 0.1, 0.05]), torch.rand(3, 4) * 0.2 + 0.05
    bits = (2, 4, 32)

    def run():
        probe_a = torch.zeros(3, requires_grad=True)
        probe_w = torch.zeros(3, requires_grad=True)
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        tap_a = (probe_a, lambda v, grad: activation_candidate_scores(v, grad, a_scales, bits, False, fraction=0.5))
        tap_w = (probe_w, lambda v, grad: weight_candidate_scores(v, grad, w_scales, bits))
        quantize_activation(x, a_scales[1], 4, False, tap=tap_a).backward(g)
        quantize_weight(w, w_scales[0], 2, tap=tap_w).backward(gw)
        return probe_a.grad, probe_w.grad, x.grad, w.grad

    fused, comp = _both_paths(run, monkeypatch)
    for a, b in zip(fused, comp):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert float(fused[0][2]) == 0.0 and float(fused[1][2]) == 0.0  # 32 bits: score 0
    # 32 bits on the path itself: the input passes unchanged, the tap still scores
    probe = torch.zeros(3, requires_grad=True)
    x = x0.clone().requires_grad_()
    y = quantize_activation(x, torch.tensor(1.0), 32, False,
                            tap=(probe, lambda v, grad: activation_candidate_scores(v, grad, a_scales, bits, False)))
    assert torch.equal(y, x0)
    y.backward(g)
    assert torch.equal(x.grad, g) and float(probe.grad[0]) != 0.0


def test_fused_keeps_no_more_for_backward_than_the_composite(monkeypatch):
    x0 = torch.randn(8, 4, 6, 6).abs()

    def saved():
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t
        x = x0.clone().requires_grad_()
        s = torch.tensor(0.2, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = quantize_activation(x, s, 4, False)
        y.sum().backward()
        return sum(sizes)

    fused, comp = _both_paths(saved, monkeypatch)
    assert fused <= comp


def test_fused_falls_back_to_the_composite_for_half_and_under_tracing(monkeypatch):
    x = torch.randn(2, 3, 4, 4)
    s = torch.tensor(0.1)
    calls = []
    real = LSQFakeQuantize.apply
    monkeypatch.setattr(LSQFakeQuantize, "apply", lambda *a: calls.append(1) or real(*a))
    quantize_activation(x, s, 4, True)
    assert calls == [1]
    half = quantize_activation(x.half(), s.half(), 4, True)
    assert calls == [1] and torch.equal(half, fake_quantize(x.half(), s.half(), -8, 7))
    expected = fake_quantize(x, s, -8, 7)
    # check_trace=False: the check would run the function again outside the trace (fused)
    traced = torch.jit.trace(lambda t: quantize_activation(t, s, 4, True), (x,), check_trace=False)
    assert calls == [1] and torch.equal(traced(x), expected)
    assert "PythonOp" not in str(traced.graph)  # plain ops an ONNX export can read
    assert ScoreTap is quant_module.ScoreTap
