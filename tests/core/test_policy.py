"""Policy JSON, validation, name matching, application (ssps_nni/policy.py, layer_names.py, apply_policy.py, §8)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ssps_nni.cell import QuantConv2d, QuantLinear
from ssps_nni.convert import fixed_model
from ssps_nni.errors import PolicyError
from ssps_nni.apply_policy import apply_policy
from ssps_nni.policy import Policy, load_policy
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


# -- final flag (docs/algorithm.md §8) -----------------------------------------------------------

def snapshot_dict(**meta) -> dict:
    data = policy_dict()
    data.update(num_decided=2, num_decisions=4, step=120,
                budgets=[{"cost": "bitops", "spec": "bitops=W4A4", "target": 100.0}],
                totals={"bitops": {"policy": 247.0, "target": 100.0}}, **meta)
    return data


def test_final_flag_round_trip_and_files_without_it(tmp_path):
    assert Policy.from_dict(policy_dict()).final  # hand-written / older file: final
    assert not Policy.from_dict(snapshot_dict()).final  # an older hook snapshot: decisions still open
    assert Policy.from_dict(snapshot_dict(final=True)).final  # the flag wins
    partial = load_policy(write(tmp_path, snapshot_dict(final=False, open=["dw.w_bits", "conv2.a_bits"])))
    assert not partial.final and partial.meta["open"] == ["dw.w_bits", "conv2.a_bits"]
    assert load_policy(partial.save(tmp_path / "again.json")).to_dict() == partial.to_dict()
    with pytest.raises(PolicyError, match="'final' must be true or false, got 'no'"):
        Policy.from_dict(snapshot_dict(final="no"))
    with pytest.raises(PolicyError, match="'open' must be a list of decision labels"):
        Policy.from_dict(snapshot_dict(open="dw"))


def test_require_final_names_progress_and_cost_against_the_budget():
    from ssps_nni.errors import PolicyNotFinalError
    from ssps_nni.policy import require_final

    assert require_final(Policy.from_dict(policy_dict())) is None
    snapshot = Policy.from_dict(snapshot_dict(final=False))
    with pytest.raises(PolicyNotFinalError, match=r"work/policy.partial.json is not a final policy but a running "
                       r"search's snapshot: 2 of 4 decisions made at step 120 \(2 open\); bitops 2.47x its budget "
                       r"bitops=W4A4\..*pass --allow-partial to use it anyway") as err:
        require_final(snapshot, "work/policy.partial.json", allow_option="--allow-partial")
    assert err.value.exit_status == 2 and isinstance(err.value, PolicyError)
    warning = require_final(snapshot, "p.json", allow=True)
    assert warning.startswith("warning: using p.json") and "2.47x its budget" in warning


# -- layer names across routes -------------------------------------------------------------------

class Classifier(nn.Module):
    """HandNet's layers as an OpenMMLab classifier names them: ``backbone.*`` and ``head.fc``."""

    def __init__(self):
        super().__init__()
        hand = HandNet()
        self.backbone = nn.Module()
        for name in ("conv1", "dw", "conv2"):
            self.backbone.add_module(name, getattr(hand, name))
        self.head = nn.Module()
        self.head.fc = hand.fc

    def forward(self, x):
        b = self.backbone
        x = b.conv2(torch.relu(b.dw(torch.relu(b.conv1(x)))))
        return self.head.fc(x.mean((2, 3)))


def test_a_plain_policy_applies_to_the_nested_model_and_back():
    lines = []
    model = Classifier()
    cells = apply_policy(model, Policy.from_dict(policy_dict()), log=lines.append)
    assert {n: c.bits() for n, c in cells.items()} == {
        "backbone.conv1": (8, 8), "backbone.dw": (2, 4), "backbone.conv2": (4, 2)}
    assert type(model.head.fc) is torch.nn.Linear  # excluded
    assert model(hand_input()).shape == (2, 10)
    assert lines == ["policy layer names matched to Classifier by dotted suffix: 'backbone.' added to 3 "
                     "(e.g. conv1 -> backbone.conv1), 'head.' added to 1 (e.g. fc -> head.fc)"]
    nested = Policy.from_dict(policy_dict()).for_model(Classifier(), log=lambda line: None)
    assert list(nested.layers) == ["backbone.conv1", "backbone.dw", "backbone.conv2", "head.fc"]
    assert nested.meta["renamed_from"]["backbone.dw"] == "dw"
    back = []
    cells = apply_policy(HandNet(), nested, log=back.append)
    assert {n: c.bits() for n, c in cells.items()} == {"conv1": (8, 8), "dw": (2, 4), "conv2": (4, 2)}
    assert back and "'backbone.' removed from 3" in back[0]
    quiet = []
    apply_policy(HandNet(), Policy.from_dict(policy_dict()), log=quiet.append)
    assert quiet == []  # exact names: nothing to report


def test_suffix_matching_takes_the_one_layer_left():
    from ssps_nni.layer_names import match_layer_names

    model = ["backbone.conv1", "backbone.layer1.0.conv1", "backbone.layer1.0.conv2", "head.fc"]
    policy = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]  # 'conv1' ends two model names
    assert match_layer_names(policy, model) == dict(zip(policy, model))
    assert match_layer_names(model, policy) == dict(zip(model, policy))
    assert match_layer_names(["fc", "backbone.conv1"], ["backbone.conv1", "head.fc"]) == {
        "fc": "head.fc", "backbone.conv1": "backbone.conv1"}


@pytest.mark.parametrize("policy, model, match", [
    (["conv"], ["a.conv", "b.conv"], r"policy layer 'conv' matches several layers of M by suffix \(a.conv, b.conv\)"),
    (["conv", "nope"], ["conv"], r"policy layer 'nope' is not a Conv2d/Linear of M \(extra layer\)"),
    (["onv"], ["conv"], r"policy layer 'onv' is not a Conv2d/Linear of M"),  # dotted boundaries only
    (["b.conv", "conv"], ["a.b.conv", "z"], "'conv' matches only layers of M that other policy layers already"),
    (["conv1"], ["conv1", "conv2"], "model layer 'conv2' is missing from the policy"),
])
def test_names_that_match_no_layer_or_several_are_refused(policy, model, match):
    from ssps_nni.layer_names import match_layer_names

    with pytest.raises(PolicyError, match=match):
        match_layer_names(policy, model, "M")
