"""``ssps export``: policy + checkpoint -> ONNX (and NNI config_list), and its errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export_helpers import calibrated_model
from ssps_nni.checkpoint import load_fixed_state
from ssps_nni.convert import convert_model
from ssps_nni.errors import ExportError
from ssps_nni.models import resnet20
from ssps_nni.apply_policy import apply_policy

ROOT = Path(__file__).resolve().parents[2]
onnx = pytest.importorskip("onnx")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssps_nni.cli", "export", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model, policy = calibrated_model(n_calib=64)
    policy_path = policy.save(tmp / "policy.json")
    ckpt = tmp / "fixed.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"epoch": 1}}, ckpt)
    return tmp, model, policy, policy_path, ckpt


def test_cli_exports_fixed_checkpoint(saved):
    tmp, model, policy, policy_path, ckpt = saved
    out = tmp / "out" / "r20.onnx"
    res = run_cli("--policy", str(policy_path), "--checkpoint", str(ckpt), "--output", str(out),
                  "--model", "resnet20", "--nni-config", str(tmp / "config_list.json"))
    assert res.returncode == 0, res.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["ssps.bits"]) == {k: list(v) for k, v in policy.bits().items()}
    assert meta["ssps.model"] == "resnet20"
    config = json.loads((tmp / "config_list.json").read_text())
    assert {c["op_names"][0] for c in config} <= set(policy.layers)


def test_cli_float_checkpoint_needs_calibration(saved, tmp_path):
    _, _, _, policy_path, _ = saved
    ckpt = tmp_path / "float.pth"
    torch.save(resnet20().state_dict(), ckpt)
    res = run_cli("--policy", str(policy_path), "--checkpoint", str(ckpt), "--output", str(tmp_path / "a.onnx"))
    assert res.returncode == 2 and "pass --calibrate N" in res.stderr
    res = run_cli("--policy", str(policy_path), "--checkpoint", str(ckpt), "--output", str(tmp_path / "a.onnx"),
                  "--calibrate", "100")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "a.onnx").is_file()


def test_cli_calibrates_on_the_users_data(saved, tmp_path):
    """--calib-data FOLDER: real images resized to --input-shape (3x up: a warning), the ONNX at
    that shape; --calib-data FILE: a tensor of model inputs, the shape taken from it. Both print
    the data used and the file's weight bytes next to the policy's."""
    from torchvision.io import write_png

    from export_helpers import to_tensor
    from ssps_nni.data import load_cifar10_subset

    _, _, _, policy_path, _ = saved
    ckpt = tmp_path / "float.pth"
    torch.save(resnet20().state_dict(), ckpt)
    items = load_cifar10_subset("train")[::250][:20]
    (tmp_path / "images" / "cls").mkdir(parents=True)
    for k, item in enumerate(items):
        write_png(torch.from_numpy(item["img"]).permute(2, 0, 1).contiguous(), str(tmp_path / "images" / "cls" / f"{k}.png"))
    out = tmp_path / "r20_96.onnx"
    res = run_cli("--policy", str(policy_path), "--checkpoint", str(ckpt), "--output", str(out),
                  "--calib-data", str(tmp_path / "images"), "--input-shape", "1,3,96,96", "--calibrate", "16")
    assert res.returncode == 0, res.stderr
    assert "ssps export: warning: calibration images as small as 32x32 are resized up to 96x96 (3.0x)" in res.stderr
    assert "on 16 images of" in res.stdout and "resized to 96x96" in res.stdout
    assert "weights in the file" in res.stdout and "the policy's weights at their bit-widths" in res.stdout
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 96, 96]
    x, _ = to_tensor(items[:8])
    torch.save(x, tmp_path / "inputs.pt")
    res = run_cli("--policy", str(policy_path), "--checkpoint", str(ckpt), "--output", str(tmp_path / "t.onnx"),
                  "--calib-data", str(tmp_path / "inputs.pt"))
    assert res.returncode == 0, res.stderr
    assert f"on 8 inputs of {tmp_path / 'inputs.pt'}" in res.stdout and "warning" not in res.stderr


# Bad input of ssps export: the table of tests/mmengine/test_bad_input.py.


def test_supernet_checkpoint_rows_are_selected(saved):
    """A search supernet's per-candidate step sizes load into the fixed model: the policy's row."""
    _, _, policy, _, _ = saved
    space = convert_model(resnet20(), w_candidates=policy.candidates["w"], pinned={
        n: (e["w_bits"], e["a_bits"]) for n, e in policy.layers.items() if e.get("pinned")})
    with torch.no_grad():
        for name, cell in space.cells.items():
            cell.w_scale.copy_(torch.arange(1, cell.w_scale.shape[0] + 1, dtype=torch.float32)[:, None]
                               .expand_as(cell.w_scale))
            cell.a_scale.copy_(torch.arange(1, cell.a_scale.shape[0] + 1, dtype=torch.float32))
            cell.initialized.fill_(1)
    state = space.model.state_dict()
    fixed = resnet20()
    apply_policy(fixed, policy)
    assert load_fixed_state(fixed, state, policy) == []
    cands = sorted(policy.candidates["w"])
    for name, entry in policy.layers.items():
        cell = fixed.get_submodule(name)
        if not entry.get("pinned"):
            assert float(cell.w_scale[0, 0]) == cands.index(entry["w_bits"]) + 1
            assert float(cell.a_scale[0]) == cands.index(entry["a_bits"]) + 1
    with pytest.raises(ExportError, match="supernet checkpoint"):
        load_fixed_state(resnet20_fixed(policy), state)


def resnet20_fixed(policy):
    model = resnet20()
    apply_policy(model, policy)
    return model


def test_mismatching_checkpoint_names_keys(saved):
    _, model, policy, _, _ = saved
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ExportError, match="extra.weight"):
        load_fixed_state(resnet20_fixed(policy), state, policy)
    state = {k: v for k, v in model.state_dict().items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(ExportError, match="lacks parameters of the model: layer1.0.conv1.weight"):
        load_fixed_state(resnet20_fixed(policy), state, policy)


def test_config_export_calibrates_at_the_config_datas_shape(tmp_path, capsys):
    """--config without --input-shape: a --calib-data FOLDER is resized to the config's training
    inputs (here a pipeline resizing to 40x40) and exported at that shape; a tensor file of 32x32
    inputs is refused, naming both shapes and --input-shape (which then overrides the config)."""
    pytest.importorskip("mmpretrain")
    from mmengine.config import Config
    from torchvision.io import write_png

    import ssps_nni.mmengine  # noqa: F401  (registries)
    from ssps_nni.cli import export
    from ssps_nni.data import load_cifar10_subset
    from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg

    config = tmp_path / "r20_40px.py"
    config.write_text(f"_base_ = [{str(ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps_subset.py')!r}]\n"
                      "train_dataloader = dict(dataset=dict(pipeline=[dict(type='Resize', scale=(40, 40)), "
                      "dict(type='PackInputs')]))\n")
    model = build_model_from_cfg(Config.fromfile(str(config)))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(QuantPolicyHook(uniform="W4A4").resolve(model).to_dict()))
    ckpt = tmp_path / "float.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    (tmp_path / "images").mkdir()
    for k, item in enumerate(load_cifar10_subset("train")[:4]):
        write_png(torch.from_numpy(item["img"]).permute(2, 0, 1).contiguous(), str(tmp_path / "images" / f"{k}.png"))
    common = ["--config", str(config), "--policy", str(policy), "--checkpoint", str(ckpt), "--calibrate", "4"]

    assert export.main([*common, "--output", str(tmp_path / "f.onnx"), "--calib-data", str(tmp_path / "images")]) == 0
    assert "resized to 40x40" in capsys.readouterr().out
    dims = [d.dim_value for d in onnx.load(str(tmp_path / "f.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 40, 40]

    torch.save(torch.randn(4, 3, 32, 32), tmp_path / "x32.pt")
    tensor = [*common, "--calib-data", str(tmp_path / "x32.pt")]
    assert export.main([*tensor, "--output", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ssps export: error: ") and "--input-shape 1,3,32,32" in err, err
    assert "holds inputs of 3x32x32 but the training data of --config" in err and "gives inputs of 3x40x40" in err
    assert not (tmp_path / "t.onnx").exists()
    assert export.main([*tensor, "--output", str(tmp_path / "t.onnx"), "--input-shape", "1,3,32,32"]) == 0
    torch.save(torch.randn(4, 1, 40, 40), tmp_path / "grey.pt")  # other channels: --input-shape would not help
    assert export.main([*common, "--calib-data", str(tmp_path / "grey.pt"), "--output", str(tmp_path / "g.onnx")]) == 2
    err = capsys.readouterr().err
    assert "holds inputs of 1x40x40" in err and "--input-shape" not in err, err
