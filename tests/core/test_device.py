"""The core on each device: CUDA against the CPU reference, and a search step under autocast.

Parametrised over ``DEVICES`` (``cpu``, plus ``cuda`` where torch sees a GPU), so
``pytest -k cuda`` runs the CUDA half (tools/gpu_check.sh) and a CPU-only machine runs the rest.
The sampler and the logits stay on the CPU by design (one CPU ``torch.Generator`` draws the
paths, the same on every rank and device); cells, masks, step sizes and score probes live on
the model's device.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssps_nni.quant as quant_module
from ssps_nni.convert import convert_model
from ssps_nni.quant import (activation_candidate_scores, activation_qrange, quantize_activation, quantize_weight,
                            weight_candidate_scores)
from ssps_nni.sampler import PathSampler
from ssps_nni.search import SSPSSearch
from tiny_models import HandNet, hand_input, search_steps

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CONFIG = dict(budget="bitops=W4A4", candidates=(2, 4, 8), total_steps=8, warmup_steps=2, interval=2,
              threshold=0.95, logits_lr=0.05, seed=3)


def _quantize(fn, device, fused, *tensors, monkeypatch):
    """``fn(*tensors)`` on ``device`` (fused or composite path): output, and the grads of the first two inputs."""
    monkeypatch.setattr(quant_module, "FUSED", fused)
    v, s, g = (t.to(device).clone() for t in tensors)
    v.requires_grad_()
    s.requires_grad_()
    y = fn(v, s)
    y.backward(g)
    return y.detach().cpu(), v.grad.cpu(), s.grad.cpu()


def _same(got, ref, bits):
    """Values bit-identical, the same STE mask; gradients as close as the composite's own rounding
    (its input gradient is ``g * s / s``, the fused one exactly ``g``)."""
    assert torch.equal(got[0], ref[0]), bits
    assert torch.equal(got[1] != 0, ref[1] != 0), bits
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[2], ref[2], rtol=2e-5, atol=1e-6)  # as test_quant.py against float64


@pytest.mark.parametrize("device", DEVICES)
def test_fused_on_device_is_bit_identical_to_the_cpu_composite(device, monkeypatch):
    """Values identical to the CPU composite; gradients up to the composite's rounding and summation order."""
    gen = torch.Generator().manual_seed(5)
    for bits in (2, 3, 4, 8):
        x = torch.randn(32, 8, 6, 6, generator=gen) * 1.3
        s = torch.tensor(0.0731)
        g = torch.randn(x.shape, generator=gen)
        act = lambda v, t: quantize_activation(v, t, bits, True)  # noqa: E731
        ref = _quantize(act, "cpu", False, x, s, g, monkeypatch=monkeypatch)
        got = _quantize(act, device, True, x, s, g, monkeypatch=monkeypatch)
        _same(got, ref, bits)
        w = torch.randn(16, 8, 3, 3, generator=gen)
        ws = torch.rand(16, generator=gen) * 0.3 + 0.02
        gw = torch.randn(w.shape, generator=gen)
        wq = lambda v, t: quantize_weight(v, t, bits)  # noqa: E731
        ref = _quantize(wq, "cpu", False, w, ws, gw, monkeypatch=monkeypatch)
        got = _quantize(wq, device, True, w, ws, gw, monkeypatch=monkeypatch)
        _same(got, ref, bits)


@pytest.mark.parametrize("device", DEVICES)
def test_score_taps_on_device_match_a_float64_reference(device):
    """``<g, Q_j(v) - v>`` per candidate, on the device, against float64 on the CPU (§3.1)."""
    gen = torch.Generator().manual_seed(9)
    bits = (2, 4, 8, 32)
    w, gw = torch.randn(8, 4, 3, 3, generator=gen), torch.randn(8, 4, 3, 3, generator=gen)
    scales = torch.rand(len(bits), 8, generator=gen) * 0.2 + 0.05
    x, gx = torch.randn(16, 4, 5, 5, generator=gen), torch.randn(16, 4, 5, 5, generator=gen)
    a_scales = torch.rand(len(bits), generator=gen) * 0.2 + 0.05
    got_w = weight_candidate_scores(w.to(device), gw.to(device), scales.to(device), bits).cpu()
    got_a = activation_candidate_scores(x.to(device), gx.to(device), a_scales.to(device), bits, True).cpu()
    for j, b in enumerate(bits):
        if b == 32:
            assert got_w[j] == 0 and got_a[j] == 0
            continue
        q = 2 ** (b - 1) - 1
        s = scales[j].double().reshape(-1, 1, 1, 1)
        ref_w = ((w.double() / s).round().clamp(-q, q) * s - w.double()).mul(gw.double()).sum()
        lo, hi = activation_qrange(b, True)
        sa = a_scales[j].double()
        ref_a = ((x.double() / sa).round().clamp(lo, hi) * sa - x.double()).mul(gx.double()).sum()
        torch.testing.assert_close(got_w[j].double(), ref_w, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_a[j].double(), ref_a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_draws_the_same_paths_whatever_the_device_of_the_masks(device):
    cpu, dev = PathSampler(3, (2, 4, 8), (2, 4, 8), seed=7), PathSampler(3, (2, 4, 8), (2, 4, 8), seed=7)
    mask = torch.tensor([True, False, True])
    for uniform in (True, False):
        cpu.uniform = dev.uniform = uniform
        for layer in range(3):
            assert cpu.sample("w", layer, mask)[0] == dev.sample("w", layer, mask.to(device))[0]
    assert cpu.argmax("a", 1, mask) == dev.argmax("a", 1, mask.to(device))
    assert dev.probs("w", torch.ones(3, 3, dtype=torch.bool, device=device)).device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_cell_state_follows_the_model_to_the_device_and_back(device):
    torch.manual_seed(0)
    model = HandNet()
    space = convert_model(model, (2, 4, 8), pinned="none")
    model(hand_input(2))  # lazy LSQ init
    model.to(device)
    cell = space.cells["conv2"]
    for name in ("w_scale", "a_scale", "w_mask", "a_mask", "a_signed", "initialized"):
        assert getattr(cell, name).device.type == device, name
    assert cell.mask("w").device.type == device  # the cached bool mask follows the new buffer
    assert cell.host("w_mask").device.type == "cpu" and cell.host("initialized") == 1
    for flag in (1, 0):  # host copies follow in-place writes of the device buffers
        cell.a_signed.fill_(flag)
        assert cell.host("a_signed") == flag
    cell.fix("w", 1)  # a CPU index mask written into a device buffer
    assert cell.fixed_index("w") == 1 and cell.bits()[0] == 4
    out = model(hand_input(2).to(device))
    assert out.device.type == device and torch.isfinite(out).all()
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    fresh = HandNet()
    space2 = convert_model(fresh, (2, 4, 8), pinned="none")
    fresh.load_state_dict(state)
    assert space2.cells["conv2"].fixed_index("w") == 1


def _search(device, seed=0):
    torch.manual_seed(seed)
    model = HandNet().to(device)
    search = SSPSSearch(model, dict(CONFIG))
    x = hand_input(4).to(device)
    search.prepare(lambda: model(x), num_samples=4)
    return model, search


def _batch(step, device):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 3, 8, 8, generator=gen).to(device), torch.randint(0, 10, (4,), generator=gen).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_one_search_step_on_device_gives_the_cpu_scores(device):
    """Same weights, same paths (CPU generator): the dense scores of one step agree with the CPU run."""
    # TF32 convolutions (the CUDA default) round the inputs to 10 mantissa bits: not the CPU's numbers
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        scores = _one_step_scores(device)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    for slot in ("w", "a"):
        torch.testing.assert_close(scores[1][slot], scores[0][slot], rtol=1e-3, atol=1e-6)


def _one_step_scores(device):
    scores = []
    for dev in ("cpu", device):
        model, search = _search(dev)
        model.train()
        search.begin_step(2)  # past the warm-up: sampled paths
        x, y = _batch(0, dev)
        loss = F.cross_entropy(model(x), y)
        extra, _ = search.loss_term(loss)
        (loss + extra).backward()
        probes = search.space.sampler.probes
        assert all(p.grad is not None and p.grad.device.type == dev for p in probes.values())
        scores.append({s: p.grad.detach().cpu() for s, p in probes.items()})
    return scores


@pytest.mark.parametrize("device", DEVICES)
def test_search_on_device_ends_in_budget_and_its_state_loads_on_cpu(device):
    model, search = _search(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    search_steps(model, search, optimizer, range(8), lambda step: _batch(step, device))
    policy = search.finish()
    totals = policy.meta["totals"]["bitops"]
    assert policy.meta["final"] and totals["policy"] <= totals["target"]
    assert all(p.device.type == "cpu" for p in search.space.sampler.parameters())
    _, cpu_search = _search("cpu")
    cpu_search.load_state_dict(search.state_dict())
    assert cpu_search.space.sampler.logits["w"].equal(search.space.sampler.logits["w"])


AUTOCAST = [(d, t) for d in DEVICES for t in ((torch.bfloat16, torch.float16) if d == "cuda" else (torch.bfloat16,))]


@pytest.mark.parametrize("device,dtype", AUTOCAST, ids=[f"{d}-{str(t)[6:]}" for d, t in AUTOCAST])
def test_search_steps_under_autocast(device, dtype):
    """Mixed precision as mmengine's AmpOptimWrapper runs it: forward under autocast, the SSPS term
    in fp32 (autocast off, as SSPSHook adds it); scores and logits stay finite and move."""
    model, search = _search(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = {s: p.detach().clone() for s, p in zip("wa", search.space.sampler.parameters())}
    model.train()
    for step in range(2, 6):
        search.begin_step(step)
        x, y = _batch(step, device)
        with torch.autocast(device_type=device, dtype=dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype == dtype  # the autocast ran the convs in low precision
        with torch.autocast(device_type=device, enabled=False):
            extra, _ = search.loss_term(loss.float())
        assert extra.dtype == torch.float32
        optimizer.zero_grad()
        (loss + extra).backward()
        probes = search.space.sampler.probes
        assert all(torch.isfinite(p.grad).all() for p in probes.values())
        optimizer.step()
        search.step_logits()
        search.end_step(step + 1)
    moved = [not torch.equal(start[s], p.detach()) for s, p in zip("wa", search.space.sampler.parameters())]
    assert all(torch.isfinite(p).all() for p in search.space.sampler.parameters()) and any(moved)
    assert math.isfinite(search.stats()["ratio/bitops"])
