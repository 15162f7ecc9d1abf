"""policy_to_nni_config_list: an SSPS policy as an NNI 3.0 ``nni.compression`` config_list.

The config_list built from a mixed 2..8/32-bit policy is handed to NNI's own ``LsqQuantizer``
and ``QATQuantizer`` wrapping the *plain* float ResNet-20 (not our cells); one training step on
real CIFAR-10 images must run, and NNI's target spaces must carry the policy's bits.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from export_helpers import mixed_policy, to_tensor
from ssps_nni.data import load_cifar10_subset
from ssps_nni.errors import PolicyError
from ssps_nni.models import resnet20
from ssps_nni.nni.config_list import policy_to_nni_config_list
from ssps_nni.apply_policy import apply_policy


def test_entries_follow_the_policy():
    model = resnet20()
    policy = mixed_policy(model)
    config = policy_to_nni_config_list(policy)
    json.dumps(config)  # serialisable
    by_name = {c["op_names"][0]: c for c in config}
    for name, (w, a) in policy.bits().items():
        if w == 32 and a == 32:
            assert name not in by_name
            continue
        entry = by_name[name]
        assert entry["target_names"] == [t for t, b in (("weight", w), ("_input_", a)) if b < 32]
        if w < 32:
            assert entry["target_settings"]["weight"] == {
                "quant_dtype": f"int{w}", "quant_scheme": "symmetric", "granularity": "out_channel"}
        if a < 32:  # sign unknown without a calibrated model: signed, never clips negatives
            assert entry["target_settings"]["_input_"]["quant_dtype"] == f"int{a}"


def test_input_sign_from_calibrated_cells_and_qat_scheme():
    from export_helpers import calibrated_model

    model, policy = calibrated_model(n_calib=64)
    lsq = {c["op_names"][0]: c for c in policy_to_nni_config_list(policy, model)}
    qat = {c["op_names"][0]: c for c in policy_to_nni_config_list(policy, model, quantizer="qat")}
    assert lsq["conv1"]["target_settings"]["_input_"]["quant_dtype"] == "int8"  # normalised image: signed
    relu_in = lsq["layer1.0.conv1"]["target_settings"]["_input_"]
    assert relu_in == {"quant_dtype": "uint4", "quant_scheme": "symmetric", "granularity": "default"}
    assert qat["layer1.0.conv1"]["target_settings"]["_input_"]["quant_scheme"] == "affine"
    assert qat["conv1"]["target_settings"]["_input_"]["quant_scheme"] == "symmetric"


def test_wrong_model_and_quantizer_are_refused():
    policy = mixed_policy(resnet20())
    with pytest.raises(PolicyError, match="not a Conv2d/Linear"):
        policy_to_nni_config_list(policy, torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="'lsq' or 'qat'"):
        policy_to_nni_config_list(policy, quantizer="dorefa")


@pytest.mark.parametrize("name", ["LsqQuantizer", "QATQuantizer"])
def test_nni_quantizer_accepts_config_and_trains_one_step(name):
    nni = pytest.importorskip("nni")
    from nni.compression import quantization
    from nni.compression.utils import TorchEvaluator

    torch.manual_seed(0)
    policy = mixed_policy(resnet20())
    signed_model = resnet20()
    apply_policy(signed_model, policy)
    x, y = to_tensor(load_cifar10_subset("train")[::125][:32])
    with torch.no_grad():
        signed_model.eval()(x)  # lazy LSQ init records each input's sign
    config = policy_to_nni_config_list(policy, signed_model, quantizer="lsq" if name == "LsqQuantizer" else "qat")

    model = resnet20()  # the plain float model: NNI wraps its layers itself
    steps = []

    def training_step(batch, model):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for _ in range(max_steps or 1):
            optimizers.zero_grad()
            loss = training_step((x, y), model)
            loss.backward()
            optimizers.step()
            steps.append(float(loss.detach()))

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    evaluator = TorchEvaluator(training_func, optimizer, training_step)
    quantizer = getattr(quantization, name)(model, config, evaluator)
    _, calibration = quantizer.compress(max_steps=1, max_epochs=None)
    assert len(steps) == 1 and steps[0] == steps[0]  # ran, finite
    for entry in config:
        layer = entry["op_names"][0]
        spaces = quantizer._target_spaces[layer]
        for target, setting in entry["target_settings"].items():
            key = "_input_0" if target == "_input_" else target
            assert spaces[key].quant_dtype == setting["quant_dtype"]
        assert layer in calibration
