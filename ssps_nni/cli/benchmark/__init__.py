"""``ssps benchmark``: cost per search step, sequential determination, quality at equal cost.

    ssps benchmark --quick                 # all three sections, reduced (CPU, ~35 min)
    ssps benchmark quality --quick         # the quality run alone (< 20 min, 2 cores)
    ssps benchmark quality --standard      # the quality instrument: full CIFAR-10 from the
                                           # shipped FP32 checkpoint (hours on 2 cores)
    ssps benchmark [SECTION ...]           # full settings (meant for a GPU)
        [--out DIR] [--seeds 0,1] [--device cpu|cuda] [--data-root CIFAR10_FOLDER] [--smoke]
        [--fp32-checkpoint PTH]

Sections (results and the exact commands are in docs/benchmarks.md):

``step-cost``
    Time per training step and peak memory of (a) FP32 training, (b) fixed W4A4 QAT, (c) the
    SSPS search (the core ``SSPSSearch`` loop both drivers run) and (d) a multi-path supernet
    built as an NNI user would: a ``LayerChoice`` over fixed-bit layers per searched layer,
    turned into a supernet by NNI's ``DARTS`` strategy (every candidate computed and mixed;
    one iteration = an architecture step on a held-out batch plus a weight step, as
    ``DartsLightningModule.training_step``). ResNet-20 at 32x32 (batch 128) and ResNet-18 at
    224x224 (batch 16), with 2, 4 and 6 candidate bit-widths; every row is also given as a
    ratio to (b), measured in the same process.
``sequential``
    The same search with and without sequential determination (``threshold=None,
    schedule='none'``: every decision stays open and the argmax is taken at the end): steps
    until the policy stops changing, wall time to the final policy, its cost and its
    retrained accuracy.
``quality``
    On real CIFAR-10: an FP32 ResNet-20 trained by ``ssps train``; SSPS policies searched
    by the mmengine driver at budgets equal to the BitOPs of uniform W2A2, W3A3 and W4A4,
    against those uniform policies, all retrained (``ssps train``) on one schedule, over
    several seeds. ``--standard`` (the quality instrument): the full CIFAR-10 (50,000 / 10,000
    images), starting from the shipped FP32 checkpoint (``checkpoints/resnet20_cifar10_fp32.pth``,
    not trained here), budgets W3A3, ``2.5-bit`` (midway in BitOPs between uniform W2A2 and
    W3A3) and W4A4, and four methods per budget: SSPS, the best uniform policy within the
    budget, a random policy within the budget and the sensitivity policy
    (``ssps search --method random|sensitivity``), all retrained on one schedule.

``time-to-model`` (only when named)
    The wall time to a deployable model and its accuracy, at equal total training steps: the
    SSPS search (ending at its last decision) continued by QAT from its own checkpoint, against
    the sensitivity policy and the best uniform policies, each then QAT from FP32; paired seeds
    at the ``2.5-bit`` and W3A3 budgets (``time_to_model.py``).

Runs of the mmengine sections are cached under ``OUT/runs/<name>``: an interrupted benchmark
run again with the same settings reuses every finished run and redoes the unfinished one.
Results go to ``OUT/results.json`` and ``OUT/results.md`` (written atomically).

Layout: ``command`` (options, checks, dispatch), ``common`` (modes and shared helpers), one
module per section (``step_cost``, ``sequential``, ``quality``), the mmengine runs they share
(``runs``, ``experiments``, ``budgets``) and the Markdown tables (``report``). Every section
uses only the public API of the core, the drivers and the ``ssps search``/``ssps train``
commands.
"""
from __future__ import annotations

from .budgets import budget_table, shipped_fp32, uniform_bitops, uniform_options
from .command import PROG, main, parse_args, resolve
from .common import MIDPOINT, MODES, SECTIONS, environment
from .experiments import Experiments
from .quality import quality
from .report import markdown
from .sequential import sequential
from .step_cost import METHODS, NETWORKS, step_cost

__all__ = ['PROG', 'main', 'parse_args', 'resolve', 'SECTIONS', 'MODES', 'MIDPOINT', 'environment',
           'budget_table', 'shipped_fp32', 'uniform_bitops', 'uniform_options', 'Experiments',
           'step_cost', 'METHODS', 'NETWORKS', 'sequential', 'quality', 'markdown']
