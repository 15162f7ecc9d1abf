"""Conversion of a plain model into a search space (ssps_nni/convert.py, docs/algorithm.md §1, §3)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ssps_nni.cell import QuantConv2d, QuantLinear
from ssps_nni.convert import check_candidates, convert_model, parse_bits_pair, select_layers
from ssps_nni.errors import CandidateError, NoQuantizableLayersError
from ssps_nni.quant import quantize_weight
from tiny_models import HandNet, hand_input

NEW_KEYS = ("w_scale", "a_scale", "w_mask", "a_mask", "a_signed", "initialized")


class Net(nn.Module):
    """Layers named like a real network: ``conv1``, ``block.conv_a``, ``block.conv_b``, ``head.fc1``, ``head.fc2``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential()
        self.block.add_module("conv_a", nn.Conv2d(4, 4, 3, padding=1, groups=2))
        self.block.add_module("conv_b", nn.Conv2d(4, 4, 1))
        self.head = nn.Sequential()
        self.head.add_module("fc1", nn.Linear(4, 4))
        self.head.add_module("fc2", nn.Linear(4, 2))

    def forward(self, x):
        x = self.block(torch.relu(self.conv1(x)))
        return self.head(x.mean((2, 3)))


def test_parameter_names_are_kept():
    model = HandNet()
    before = [n for n, _ in model.named_parameters()]
    weights = {n: p for n, p in model.named_parameters()}
    convert_model(model, (2, 4))
    after = [n for n, _ in model.named_parameters()]
    assert [n for n in after if n.rsplit(".", 1)[1] not in NEW_KEYS] == before
    for name, p in model.named_parameters():
        if name in weights:
            assert p is weights[name]  # the same Parameter objects: optimizers built earlier keep working


def test_resnet18_float_checkpoint_loads_into_the_supernet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    donor = torchvision.models.resnet18(num_classes=10)
    model = torchvision.models.resnet18(num_classes=10)
    space = convert_model(model, (2, 4, 8))
    assert isinstance(model.conv1, QuantConv2d) and isinstance(model.fc, QuantLinear)
    assert space.pinned == {"conv1": (8, 8), "fc": (8, 8)}
    assert len(space.searched) == 19  # 16 block convs + 3 downsample convs
    result = model.load_state_dict(donor.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys  # the new keys, and only those
    assert all(k.rsplit(".", 1)[1] in NEW_KEYS for k in result.missing_keys)
    assert len(result.missing_keys) == len(NEW_KEYS) * 21
    assert torch.equal(model.layer1[0].conv1.weight, donor.layer1[0].conv1.weight)
    assert torch.equal(model.fc.bias, donor.fc.bias)
    # and the supernet's own state dict round-trips strictly
    model.load_state_dict(model.state_dict())


def test_grouped_and_depthwise_convolutions():
    torch.manual_seed(0)
    for groups in (2, 4):
        conv = nn.Conv2d(4, 8, 3, padding=1, groups=groups)
        cell = QuantConv2d.from_float(conv, (4,), (8,))
        x = torch.randn(2, 4, 6, 6)
        out = cell(x)  # lazy LSQ init, fixed mode
        assert out.shape == (2, 8, 6, 6)
        assert cell.w_scale.shape == (1, 8)
        w_q = quantize_weight(cell.weight, cell.w_scale[0], 4)
        assert all(w_q[c].unique().numel() <= 15 for c in range(8))
        assert not torch.equal(out, conv(x))  # quantized
    model = HandNet()
    space = convert_model(model, (2, 4), pinned="none")
    assert space.searched == ["conv1", "dw", "conv2", "fc"]
    assert model.dw.groups == 4 and model.dw.w_scale.shape == (2, 4)
    model.train()
    model(hand_input()).sum().backward()
    assert model.dw.weight.grad is not None


def test_default_pins_first_conv_and_last_linear():
    searched, pins = select_layers(Net())
    assert searched == ["block.conv_a", "block.conv_b", "head.fc1"]
    assert pins == {"conv1": (8, 8), "head.fc2": (8, 8)}
    searched, pins = select_layers(Net(), pinned="default", pinned_bits="W6A4")
    assert pins == {"conv1": (6, 4), "head.fc2": (6, 4)}
    searched, pins = select_layers(Net(), pinned="none")
    assert searched == ["conv1", "block.conv_a", "block.conv_b", "head.fc1", "head.fc2"] and pins == {}
    searched, pins = select_layers(Net(), pinned=None)
    assert pins == {}


def test_exclude_beats_include_and_default_pins_move():
    # excluding conv1 makes block.conv_a the first conv left, so it is the one pinned
    searched, pins = select_layers(Net(), exclude=["conv1"])
    assert pins == {"block.conv_a": (8, 8), "head.fc2": (8, 8)}
    assert searched == ["block.conv_b", "head.fc1"]
    # a layer both included and excluded stays float
    searched, pins = select_layers(Net(), include=["block.*"], exclude=["block.conv_b"], pinned="none")
    assert searched == ["block.conv_a"] and pins == {}
    # globs: '*' also matches dots
    searched, pins = select_layers(Net(), exclude="*conv*", pinned="none")
    assert searched == ["head.fc1", "head.fc2"]


def test_include_limits_search_but_default_pins_stay():
    searched, pins = select_layers(Net(), include=["head.*"])
    assert searched == ["head.fc1"]
    assert pins == {"conv1": (8, 8), "head.fc2": (8, 8)}


def test_explicit_pins_beat_exclude_and_replace_the_default():
    searched, pins = select_layers(Net(), exclude=["conv1", "head.*"], pinned={"conv1": "W4A8", "head.fc1": (6, 6)})
    assert pins == {"conv1": (4, 8), "head.fc1": (6, 6)}
    assert searched == ["block.conv_a", "block.conv_b"]
    model = Net()
    space = convert_model(model, (2, 4), exclude=["head.fc2"], pinned={"conv1": "w4a8"})
    assert list(space.cells) == ["conv1", "block.conv_a", "block.conv_b", "head.fc1"]
    assert type(model.head.fc2) is nn.Linear  # excluded: stays float
    assert model.conv1.w_candidates == (4,) and model.conv1.a_candidates == (8,)
    assert model.conv1.fixed_index("w") == 0 and model.conv1.bits() == (4, 8)
    assert space.sampler.logits["w"].shape == (3, 2)


def test_pinned_errors():
    with pytest.raises(CandidateError, match="not a quantizable layer"):
        select_layers(Net(), pinned={"nope": "W8A8"})
    with pytest.raises(CandidateError, match="WxAy"):
        select_layers(Net(), pinned={"conv1": "8bit"})
    with pytest.raises(CandidateError, match="'default', 'none'"):
        select_layers(Net(), pinned="first")
    model = Net()
    with pytest.raises(CandidateError, match="pinned weight bits of 'head.fc2' must be 2..32, got 1"):
        convert_model(model, (2, 4), pinned={"conv1": "W4A8", "head.fc2": "W1A8"})
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())  # left untouched


def test_parse_bits_pair():
    assert parse_bits_pair("W8A8") == (8, 8)
    assert parse_bits_pair(" w4a32 ") == (4, 32)
    assert parse_bits_pair((3, 5)) == (3, 5)
    for bad in ("W8", "A8W8", "W8A", "WxA8", "W8A33", 8, (8,), "W-1A4"):
        with pytest.raises(CandidateError):
            parse_bits_pair(bad)


def test_candidates_are_validated():
    assert check_candidates([8, 2, 4, 4]) == (2, 4, 8)
    assert check_candidates([1, 32], "activation") == (1, 32)
    with pytest.raises(CandidateError, match="empty"):
        check_candidates([])
    with pytest.raises(CandidateError, match="list of bit-widths"):
        check_candidates(4)
    for bad in ([0], [-2], [33], [2.5], ["4"], [True], [4, None]):
        with pytest.raises(CandidateError, match=r"weight candidate .* not an integer in 2\.\.32"):
            check_candidates(bad)
    with pytest.raises(CandidateError, match="below 2"):
        check_candidates([1, 4], "weight")
    with pytest.raises(CandidateError, match="empty"):
        convert_model(HandNet(), [])
    with pytest.raises(CandidateError, match="1..32"):
        convert_model(HandNet(), (2, 4), a_candidates=[0, 4])


def test_model_without_quantizable_layers():
    with pytest.raises(NoQuantizableLayersError, match="no quantizable layer"):
        convert_model(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)))
    # one conv and one linear: both pinned by default, nothing left to search
    with pytest.raises(NoQuantizableLayersError, match="2 pinned"):
        convert_model(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(3, 2)))
    with pytest.raises(NoQuantizableLayersError):
        convert_model(Net(), exclude=["*"])


def test_subclasses_are_not_converted_and_double_conversion_refused():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 3, 1), nn.Conv2d(3, 3, 1))
    space = convert_model(model, (2, 4), pinned="none")
    assert space.searched == ["1"] and type(model[0]) is MyConv
    with pytest.raises(ValueError, match="already converted"):
        convert_model(model)


def test_space_state_round_trip_and_log10_size():
    model = HandNet()
    space = convert_model(model, (2, 4, 8), pinned="none")
    assert space.num_decisions == 8 and space.num_decided == 0
    assert space.log10_size() == pytest.approx(8 * 0.47712125471966244)
    space.fix(0, "w", 2)
    space.cell(1).set_mask("a", torch.tensor([True, False, True]))
    assert space.num_decided == 1
    assert space.log10_size() == pytest.approx(6 * 0.47712125471966244 + 0.3010299956639812)
    with torch.no_grad():
        space.sampler.logits["a"].normal_()
    state = space.state_dict()
    other = convert_model(HandNet(), (2, 4, 8), pinned="none")
    other.load_state_dict(state)
    for slot in ("w", "a"):
        assert torch.equal(other.masks(slot), space.masks(slot))
        assert torch.equal(other.sampler.logits[slot], space.sampler.logits[slot])
    assert other.bits() == space.bits()
    with pytest.raises(ValueError, match="other layers"):
        convert_model(HandNet(), (2, 4, 8)).load_state_dict(state)


def test_probs_are_masked_and_decided_rows_one_hot():
    space = convert_model(HandNet(), (2, 4, 8), pinned="none")
    space.fix(0, "w", 1)
    space.cell(1).set_mask("w", torch.tensor([True, False, True]))
    p = space.probs("w")
    assert p[0].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(p[1], torch.tensor([0.5, 0.0, 0.5]))
    torch.testing.assert_close(p[2], torch.full((3,), 1 / 3))


def test_buffers_restore_decisions_through_module_state_dict():
    model = HandNet()
    space = convert_model(model, (2, 4, 8), pinned="none")
    space.fix(2, "a", 1)
    assert space.cell(2).fixed_index("a") == 1
    model2 = HandNet()
    space2 = convert_model(model2, (2, 4, 8), pinned="none")
    assert space2.cell(2).fixed_index("a") == -1  # cache filled before the load
    model2.load_state_dict(model.state_dict())
    assert space2.cell(2).fixed_index("a") == 1
