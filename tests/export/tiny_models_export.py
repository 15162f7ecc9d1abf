"""A tiny conv net for the export tests (imported explicitly)."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Input ``(N, 3, 8, 8)``; conv 3->4 3x3 pad 1 with bias, global mean, linear 4->5.

    The fc input is the conv output without ReLU, so it can be negative (signed range).
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))
