"""From policy to deployable model on real CIFAR-10: search -> retrain -> ONNX -> onnxruntime.

The policy is the tiny search's (``full_run``, ``ssps search``). ``ssps train --policy``
retrains it for one short epoch from the search checkpoint (each layer keeps the search's step
sizes of its policy bits, a row of its per-candidate ones); ``ssps export --config`` exports the
retrained mmengine checkpoint; onnxruntime then runs the 1,000 test images of the shipped subset
and is compared with the PyTorch fake-quantized model, built independently from the config, the
policy and the checkpoint (``load_state_dict(strict=True)``).

Tolerance. Both sides use the same float32 step sizes (``quant.scale_grad``'s forward value is
exactly the stored step, and ONNX gets that step) and round half to even, so the integer codes
agree unless a value lies within float32 noise of a rounding boundary: PyTorch and onnxruntime
accumulate convolutions in different orders (~1e-6 relative). Such a flip moves one element by
one quantization step and can spread through the later quantizers. Required: top-1 agreement
>= 99 %, median per-image ``max |logit diff|`` <= 1e-4, >= 90 % of the images within 1e-3, and
every image within ``0.5 * std(logits)``. The measured values are printed (``pytest -s``).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip('mmpretrain')
onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

import ssps_nni.mmengine  # noqa: E402,F401  (torch safe globals for mmengine checkpoints)
from ssps_nni.data import load_cifar10_subset  # noqa: E402
from ssps_nni.mmengine.qat import build_model_from_cfg  # noqa: E402
from ssps_nni.apply_policy import apply_policy  # noqa: E402
from ssps_nni.policy import load_policy  # noqa: E402

from mm_search_helpers import EXPORT_TOOL, TRAIN_TOOL, run_tool  # noqa: E402

MIN_AGREEMENT = 0.99
MEDIAN_ATOL = 1e-4
LOGIT_ATOL, MIN_WITHIN = 1e-3, 0.90
MAX_DIFF_PER_STD = 0.5


def retrain_and_export(config, policy, load_from, work_dir, *cfg_options):
    result = run_tool(TRAIN_TOOL, config, '--policy', policy, '--load-from', load_from, '--work-dir', work_dir,
                      '--cfg-options', *cfg_options, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (work_dir / 'stdout.txt').write_text(result.stdout + result.stderr)
    res = json.loads((work_dir / 'train_result.json').read_text())
    onnx_path = work_dir / 'model.onnx'
    exported = run_tool(EXPORT_TOOL, '--config', config, '--policy', policy, '--checkpoint', res['checkpoint'],
                        '--output', onnx_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    return res, onnx_path


@pytest.fixture(scope='module')
def retrained(full_run, tiny_config, tmp_path_factory):
    """One epoch (8 iterations, 250 images) of QAT from the search checkpoint, exported."""
    work_dir = tmp_path_factory.mktemp('qat')
    res, onnx_path = retrain_and_export(tiny_config, full_run / 'policy.json', full_run / 'epoch_2.pth', work_dir,
                                        'train_cfg.max_epochs=1')
    return work_dir, res, onnx_path


def fake_quantized_model(config, policy_path, checkpoint):
    """The PyTorch fixed model of ``policy`` with the checkpoint's weights and step sizes (eval)."""
    from mmengine.config import Config

    model = build_model_from_cfg(Config.fromfile(str(config)))
    apply_policy(model, load_policy(policy_path))
    model.load_state_dict(torch.load(checkpoint, map_location='cpu')['state_dict'], strict=True)
    return model.eval()


def cifar_test_images(n: int = 1000, step: int = 1):
    """The first ``n`` of every ``step``-th test image, normalised as the config's data_preprocessor."""
    items = load_cifar10_subset('test')[::step][:n]
    mean = np.asarray([125.307, 122.961, 113.8575], dtype=np.float32)
    std = np.asarray([51.5865, 50.847, 51.255], dtype=np.float32)
    imgs = np.stack([it['img'] for it in items]).astype(np.float32)
    x = torch.from_numpy(((imgs - mean) / std).transpose(0, 3, 1, 2).copy())
    return x, np.asarray([it['gt_label'] for it in items])


def compare(model, onnx_path, x: torch.Tensor, y: np.ndarray) -> dict:
    with torch.no_grad():
        ref = torch.cat([model(b, mode='tensor') for b in x.split(250)]).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got = np.concatenate([sess.run(None, {'input': b.numpy()})[0] for b in x.split(250)])
    diff = np.abs(ref - got).max(1)
    return {
        'images': len(y),
        'agree': float((ref.argmax(1) == got.argmax(1)).mean()),
        'median_diff': float(np.median(diff)),
        'within_1e-3': float((diff <= LOGIT_ATOL).mean()),
        'max_diff': float(diff.max()),
        'logit_std': float(ref.std()),
        'acc_torch': float((ref.argmax(1) == y).mean()),
        'acc_onnx': float((got.argmax(1) == y).mean()),
    }


def check(stats: dict) -> None:
    assert stats['agree'] >= MIN_AGREEMENT, stats
    assert stats['median_diff'] <= MEDIAN_ATOL, stats
    assert stats['within_1e-3'] >= MIN_WITHIN, stats
    assert stats['max_diff'] <= MAX_DIFF_PER_STD * stats['logit_std'], stats


def test_retrained_model_reports_cost_and_accuracy(retrained, full_run):
    work_dir, res, _ = retrained
    policy = load_policy(full_run / 'policy.json')
    assert res['mode'] == 'policy' and 0 <= res['metrics']['accuracy/top1'] <= 100
    # the search's policy totals, recomputed on the retrained model
    assert res['bitops']['value'] == pytest.approx(policy.meta['totals']['bitops']['policy'], rel=1e-9)
    assert res['bitops']['fp32'] == pytest.approx(policy.meta['totals']['bitops']['references']['fp32'], rel=1e-9)
    assert load_policy(res['qat_policy']).bits() == policy.bits()
    out = (work_dir / 'stdout.txt').read_text()
    assert 'taken for 18 of its 18 per-candidate layers' in out and 'step sizes from the checkpoint' in out
    assert 'GBitOPs' in out and 'accuracy/top1' in out
    ckpt = torch.load(res['checkpoint'], map_location='cpu')
    groups = ckpt['optimizer']['param_groups']
    assert len(groups) == 2 and groups[1]['weight_decay'] == 0  # step sizes: their own group
    assert ckpt['state_dict']['backbone.layer1.0.conv1.w_scale'].shape == (1, 16)


def test_onnx_matches_fake_quantized_pytorch_on_1000_cifar_images(retrained, tiny_config, full_run):
    work_dir, res, onnx_path = retrained
    model = fake_quantized_model(tiny_config, full_run / 'policy.json', res['checkpoint'])
    stats = compare(model, onnx_path, *cifar_test_images(1000))
    print('ONNX vs PyTorch (1-epoch QAT), 1000 CIFAR-10 test images:', stats)
    check(stats)
    # the model compared is the one mmengine evaluated: its 100 test images ([::10]) score the same
    x, y = cifar_test_images(100, step=10)
    with torch.no_grad():
        acc = float((model(x, mode='tensor').argmax(1).numpy() == y).mean())
    assert acc * 100 == pytest.approx(res['metrics']['accuracy/top1'], abs=1e-6)


@pytest.mark.slow
def test_longer_retrain_onnx_agreement(full_run, tiny_config, tmp_path):
    """Retrain 3 epochs on the whole 5,000-image training subset (a better-trained model)."""
    res, onnx_path = retrain_and_export(
        tiny_config, full_run / 'policy.json', full_run / 'epoch_2.pth', tmp_path,
        'train_cfg.max_epochs=3', 'param_scheduler.T_max=3', 'train_dataloader.batch_size=64',
        'train_dataloader.dataset.indices=None')
    model = fake_quantized_model(tiny_config, full_run / 'policy.json', res['checkpoint'])
    stats = compare(model, onnx_path, *cifar_test_images(1000))
    print('ONNX vs PyTorch (3-epoch QAT), 1000 CIFAR-10 test images:', stats, res['metrics'])
    check(stats)
