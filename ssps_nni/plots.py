"""Figures of a policy: bits per layer and the search space over time (docs/algorithm.md §8)."""
from __future__ import annotations

import io
import os
from pathlib import Path

from .files import atomic_write
from .policy import Policy

__all__ = ["plot_policy"]


def plot_policy(policy: Policy, history: list | None, path: str | os.PathLike) -> Path:
    """PNG: bits per layer (bars) and, if ``history`` is given, log10 search-space size over steps.

    Args:
        policy: the policy to draw.
        history: ``[{'step': int, 'log10_size': float}, ...]`` (the decider's), or None / empty
            for the bars alone.
        path: the PNG, written atomically with the umask's mode (:func:`ssps_nni.files.atomic_write`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(policy.layers)
    w = [policy.layers[n]["w_bits"] for n in names]
    a = [policy.layers[n]["a_bits"] for n in names]
    ncols = 2 if history else 1
    fig, axes = plt.subplots(1, ncols, figsize=(max(6, 0.3 * len(names)) + 4 * (ncols - 1), 4), squeeze=False)
    try:
        ax = axes[0][0]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], w, width=0.4, label="weight bits")
        ax.bar([i + 0.2 for i in x], a, width=0.4, label="activation bits")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel("bits")
        ax.set_title("bit-width per layer")
        ax.legend()
        if history:
            ax2 = axes[0][1]
            ax2.plot([h["step"] for h in history], [h["log10_size"] for h in history], marker=".")
            ax2.set_xlabel("step")
            ax2.set_ylabel("log10 search-space size")
            ax2.set_title("search space over time")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return atomic_write(path, buffer.getvalue())
