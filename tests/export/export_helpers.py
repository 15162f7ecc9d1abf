"""Shared set-up of the export tests: a calibrated mixed-precision ResNet-20 on real CIFAR-10.

Imported explicitly by the tests of this folder (no hidden fixtures). The network is the plain
CIFAR ResNet-20 of ``ssps_nni.models`` with random convolutions (no trained weights ship and
there is no network); its BatchNorm statistics are re-estimated on real training images so that
the activations have realistic ranges, and its classifier is fitted on the pooled features of
2,000 real training images (a linear probe, a few seconds), so that it predicts all classes and
top-1 agreement is a real check. The quantizer steps are calibrated on real images too.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssps_nni.data import load_cifar10_subset
from ssps_nni.calibrate import calibrate_cells
from ssps_nni.models import resnet20
from ssps_nni.apply_policy import apply_policy
from ssps_nni.policy import Policy

#: mmpretrain's CIFAR-10 normalisation (RGB, 0..255).
MEAN = np.asarray((125.307, 122.961, 113.8575), dtype=np.float32)
STD = np.asarray((51.5865, 50.847, 51.255), dtype=np.float32)
CANDIDATES = [2, 3, 4, 5, 6, 8, 32]
#: (w_bits, a_bits) cycled over the searched layers: every candidate 2..8 and 32 in both slots.
CYCLE = [(2, 4), (3, 3), (4, 2), (5, 6), (6, 5), (8, 8), (32, 8), (8, 32), (32, 32), (4, 8), (3, 6), (2, 8)]


def to_tensor(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR items -> normalised images ``(N, 3, 32, 32)`` float32 and labels ``(N,)`` int64."""
    imgs = np.stack([it["img"] for it in items]).astype(np.float32)
    x = torch.from_numpy(((imgs - MEAN) / STD).transpose(0, 3, 1, 2).copy())
    y = torch.tensor([it["gt_label"] for it in items], dtype=torch.int64)
    return x, y


#: a milder mix (4..8 and 32 bits), as a deployed W4A4-or-better policy would be.
MILD_CYCLE = [(4, 4), (5, 6), (6, 5), (8, 8), (32, 8), (8, 32), (32, 32), (4, 8), (6, 4)]


def mixed_policy(model: nn.Module, cycle=CYCLE) -> Policy:
    """Policy over every Conv2d/Linear of ``model``: first conv and last linear pinned W8A8, the
    rest cycling through :data:`CYCLE`."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers = {}
    for i, name in enumerate(names):
        pinned = i == 0 or i == len(names) - 1
        w, a = (8, 8) if pinned else cycle[(i - 1) % len(cycle)]
        layers[name] = {"w_bits": w, "a_bits": a, "pinned": pinned, "certainty": None, "decided_at": None}
    return Policy(layers=layers, candidates={"w": list(CANDIDATES), "a": list(CANDIDATES)},
                  meta={"cost_model": "bitops", "repaired": False})


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = 128) -> None:
    """Re-estimate every BatchNorm's running statistics on ``x`` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    model.eval()


def fit_linear_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> None:
    """Fit ``model.fc`` on the frozen pooled features of ``x`` (full-batch Adam, cross-entropy)."""
    feats = []
    model.eval()
    with torch.no_grad():
        for b in x.split(250):
            feats.append(model.forward_features(b).mean((2, 3)))
    f = torch.cat(feats)
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    opt = torch.optim.Adam(model.fc.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model.fc(f), y).backward()
        opt.step()
    # fold the feature standardisation into fc: fc((h - m) / s) = (W / s) h + (b - W m / s)
    with torch.no_grad():
        mean, std = torch.cat(feats).mean(0), torch.cat(feats).std(0) + 1e-6
        w = model.fc.weight / std
        model.fc.bias -= (w * mean).sum(1)
        model.fc.weight.copy_(w)


def calibrated_model(n_calib: int = 256, seed: int = 0, cycle=CYCLE) -> tuple[nn.Module, Policy]:
    """Fixed mixed-precision ResNet-20 (eval mode) with BN and quantizer steps from real images."""
    torch.manual_seed(seed)
    model = resnet20()
    train = load_cifar10_subset("train")
    x, _ = to_tensor(train[:: 5000 // n_calib][:n_calib])
    recalibrate_bn(model, x)
    xp, yp = to_tensor(train[1::2][:2000] if len(train) >= 4000 else train)
    fit_linear_probe(model, xp, yp)
    policy = mixed_policy(model, cycle)
    apply_policy(model, policy)
    calibrate_cells(model, x.split(128))
    model.eval()
    return model, policy
