"""Tiny models shared by the core tests (imported explicitly, no hidden fixtures)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HandNet(nn.Module):
    """Two convs, one depthwise conv and a linear; every cost of it is worked out by hand.

    Input ``(N, 3, 8, 8)``. Per sample:

    ==========  ===========================  ======  =====================  ======
    layer       op                           output  MACs                   params
    ==========  ===========================  ======  =====================  ======
    ``conv1``   3->4, 3x3, pad 1, no bias    4x8x8   256 * 3 * 9 = 6912     108
    ``dw``      4->4, 3x3, s2, pad 1, g4     4x4x4   64 * 1 * 9 = 576       36
    ``conv2``   4->8, 1x1, bias              8x4x4   128 * 4 = 512          32 + 8
    ``fc``      8->10, bias                  10      10 * 8 = 80            80 + 10
    ==========  ===========================  ======  =====================  ======
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
        self.conv2 = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.dw(x))
        x = self.conv2(x)  # no ReLU: the input of fc can be negative
        return self.fc(x.mean((2, 3)))


def hand_input(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def linear_stack(num_layers: int, width: int = 3) -> nn.Sequential:
    """``num_layers`` Linear layers ``width -> width`` (names ``'0'``, ``'1'``, ...)."""
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(num_layers)])


def tensors_equal(a, b) -> bool:
    """Exact recursive equality of nested dicts / lists / tensors / scalars."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(tensors_equal(x, y) for x, y in zip(a, b)))
    return a == b


def search_steps(model, search, optimizer, steps, batch) -> list[list[str]]:
    """SSPS steps as a trainer runs them (task loss + ``loss_term``, one backward, weight and logits
    steps); ``batch(step) -> (x, y)``. Returns the decisions fixed at each step."""
    model.train()
    fixed = []
    for step in steps:
        search.begin_step(step)
        x, y = batch(step)
        loss = F.cross_entropy(model(x), y)
        extra, _ = search.loss_term(loss)
        optimizer.zero_grad()
        (loss + extra).backward()
        optimizer.step()
        search.step_logits()
        fixed.append(search.end_step(step + 1))
    return fixed
