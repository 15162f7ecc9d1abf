"""The search learns on a small real task (docs/algorithm.md §3.1, §3.2, §5).

A two-branch net on the shipped real CIFAR-10 subset: both branches are 3x3 convs of the same
shape (so the same cost at every bit-width), but the second one's output is multiplied by 0.01
before the sum, so its quantization error barely reaches the loss. With a budget that fits the
main branch at 8/8 only if the side branch drops to 2/2, the search must find that policy, and
the main branch's decisions must pass the certainty threshold before the schedule forces them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssps_nni.data import load_cifar10_subset
from ssps_nni.search import SSPSSearch

MACS = 16 * 16 * 16 * 8 * 9  # each branch at 16x16: 4096 outputs x 8 inputs x 3x3
PINNED_MACS = 16 * 16 * 8 * 3 * 9 + 16 * 10  # stem conv and head at W8A8


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.main = nn.Conv2d(8, 16, 3, padding=1)
        self.side = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.main(x) + 0.01 * self.side(x))
        return self.head(x.mean((2, 3)))


def _data(n=1024):
    items = load_cifar10_subset("train")[:n]
    x = torch.tensor(np.stack([i["img"] for i in items])).permute(0, 3, 1, 2).float() / 255
    x = F.avg_pool2d(x, 2)  # 16x16: keeps the test fast
    y = torch.tensor([i["gt_label"] for i in items])
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True), y


def test_sensitive_layer_decided_by_threshold_and_gets_the_bits():
    torch.manual_seed(0)
    x, y = _data()
    model = TwoBranch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(150):  # a float model first, as a search from an FP32 checkpoint
        idx = torch.randint(len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    target = MACS * (8 * 8 + 2 * 2) + PINNED_MACS * 64
    total = 200
    search = SSPSSearch(model, dict(budget=f"bitops={target}", candidates=(2, 3, 4, 5, 6, 8),
                                    pinned={"stem": "W8A8", "head": "W8A8"}, total_steps=total, warmup_steps=20))
    search.prepare(lambda: model(x[:256]), num_samples=256)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for step in range(total):
        search.begin_step(step)
        idx = torch.randint(len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        search.step_logits()
        search.end_step(step + 1)
        if search.done:
            break
    policy = search.finish()
    decisions = policy.meta["decisions"]
    assert policy.bits()["main"] == (8, 8) and policy.bits()["side"] == (2, 2), policy.bits()
    for slot in ("w", "a"):
        # fixed by its certainty, before the schedule forced it (then 'by' would say 'schedule')
        info = decisions[f"main.{slot}_bits"]
        assert info["by"] == "threshold" and info["certainty"] >= 0.9 and info["step"] < total, decisions
    bitops = policy.meta["totals"]["bitops"]
    assert 0.97 <= bitops["policy"] / bitops["target"] <= 1.0
