"""Policy JSON, its validation and application (ssps_nni/policy.py, docs/algorithm.md §8)."""
from __future__ import annotations

import json

import pytest
import torch

from ssps_nni.cell import QuantConv2d, QuantLinear
from ssps_nni.convert import fixed_model
from ssps_nni.errors import PolicyError
from ssps_nni.policy import Policy, apply_policy, load_policy
from tiny_models import HandNet, hand_input


def policy_dict(**layer_overrides) -> dict:
    layers = {
        "conv1": {"w_bits": 8, "a_bits": 8, "pinned": True},
        "dw": {"w_bits": 2, "a_bits": 4},
        "conv2": {"w_bits": 4, "a_bits": 2},
        "fc": {"w_bits": 32, "a_bits": 32, "excluded": True},
    }
    layers.update(layer_overrides)
    return {"format": "ssps-policy", "version": 1, "candidates": {"w": [2, 4], "a": [2, 4]},
            "cost_model": "bitops", "layers": layers}


def write(tmp_path, data, name="policy.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_round_trip_and_apply(tmp_path):
    policy = Policy.from_dict(policy_dict())
    path = policy.save(tmp_path / "out" / "policy.json")
    loaded = load_policy(path)
    assert loaded.to_dict() == policy.to_dict() == policy_dict()
    assert loaded.bits() == {"conv1": (8, 8), "dw": (2, 4), "conv2": (4, 2)}
    model = HandNet()
    cells = apply_policy(model, loaded)
    assert list(cells) == ["conv1", "dw", "conv2"]
    assert isinstance(model.dw, QuantConv2d) and type(model.fc) is torch.nn.Linear
    assert model.conv2.bits() == (4, 2) and model.conv2.fixed_index("w") == 0
    model.train()
    out = model(hand_input())
    assert out.shape == (2, 10)
    table = loaded.table()
    assert table.splitlines()[0].split() == ["layer", "W", "A", "certainty", "decided", "at"]
    assert "pinned" in table and "float" in table


def test_missing_layer(tmp_path):
    data = policy_dict()
    del data["layers"]["conv2"]
    policy = load_policy(write(tmp_path, data))
    with pytest.raises(PolicyError, match="model layer 'conv2' is missing from the policy"):
        apply_policy(HandNet(), policy)


def test_extra_layer(tmp_path):
    policy = load_policy(write(tmp_path, policy_dict(head={"w_bits": 4, "a_bits": 4})))
    with pytest.raises(PolicyError, match="policy layer 'head' is not a Conv2d/Linear of HandNet"):
        apply_policy(HandNet(), policy)


def test_bits_outside_the_candidates(tmp_path):
    with pytest.raises(PolicyError, match=r"layer 'dw' has w_bits=3, not among the candidates \[2, 4\]"):
        load_policy(write(tmp_path, policy_dict(dw={"w_bits": 3, "a_bits": 4})))
    with pytest.raises(PolicyError, match="a_bits=8, not among"):
        load_policy(write(tmp_path, policy_dict(conv2={"w_bits": 4, "a_bits": 8})))
    for bad in (0, 33, 4.0, "4", True, None):
        with pytest.raises(PolicyError, match="accepted: integers 1..32"):
            load_policy(write(tmp_path, policy_dict(dw={"w_bits": bad, "a_bits": 4})))
    # pinned layers may sit outside the candidates, but still within 1..32
    assert load_policy(write(tmp_path, policy_dict())).bits()["conv1"] == (8, 8)


def test_not_json_and_unreadable(tmp_path):
    with pytest.raises(PolicyError, match="is not valid JSON"):
        load_policy(write(tmp_path, "{'format': 'ssps-policy'"))
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.json")
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path)  # a folder


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format="other"), "'format' must be 'ssps-policy'"),
    (lambda d: d.update(version=2), "unsupported version 2"),
    (lambda d: d.pop("candidates"), "'candidates' must be"),
    (lambda d: d.update(candidates={"w": [2]}), "'candidates' must be"),
    (lambda d: d.update(layers={}), "'layers' must be a non-empty object"),
    (lambda d: d.update(layers=[1, 2]), "'layers' must be a non-empty object"),
    (lambda d: d["layers"].update(dw=4), "layer 'dw' must be an object"),
])
def test_malformed_policies(tmp_path, mutate, match):
    data = policy_dict()
    mutate(data)
    with pytest.raises(PolicyError, match=match):
        load_policy(write(tmp_path, data))


def test_top_level_must_be_an_object(tmp_path):
    with pytest.raises(PolicyError, match="must be a JSON object, got list"):
        load_policy(write(tmp_path, "[]"))


def test_fixed_model_checks_names_itself():
    with pytest.raises(PolicyError, match="not a Conv2d/Linear"):
        fixed_model(HandNet(), {"nope": (4, 4)})
    cells = fixed_model(HandNet(), {"fc": (4, 8)})
    assert isinstance(cells["fc"], QuantLinear) and cells["fc"].bits() == (4, 8)
