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

Runs of the mmengine sections are cached under ``OUT/runs/<name>``: an interrupted benchmark
run again with the same settings reuses every finished run and redoes the unfinished one.
Results go to ``OUT/results.json`` and ``OUT/results.md`` (written atomically).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import search as search_cli
from . import train as train_cli
from .common import REPO as ROOT
from .common import InputError, fail

PROG = 'ssps benchmark'

SECTIONS = ('step-cost', 'sequential', 'quality')
CANDIDATE_SETS = {2: (4, 8), 4: (2, 4, 6, 8), 6: (2, 3, 4, 5, 6, 8)}
UNIFORM_BUDGETS = ('W2A2', 'W3A3', 'W4A4')
MIB = 2 ** 20
#: The budget midway in BitOPs between uniform W2A2 and W3A3 (given to the search as absolute BitOPs).
MIDPOINT = '2.5-bit'
MIDPOINT_OF = ('W2A2', 'W3A3')
#: The best uniform policies within a budget (all retrained, the better one reported); default: the budget's own.
BUDGET_UNIFORMS = {MIDPOINT: ('W2A3', 'W3A2')}
#: Methods of the quality section: searched, uniform, random within the budget, sensitivity.
QUALITY_METHODS = ('ssps', 'uniform', 'random', 'sensitivity')
#: FP32 start of the standard mode (trained once elsewhere; its .json beside it: top1, command).
STANDARD_FP32 = 'checkpoints/resnet20_cifar10_fp32.pth'

# Settings per mode. Step cost: (warm-up steps, timed steps). mmengine runs: epochs and
# learning rates of the FP32 training, the search (from the FP32 checkpoint) and the retraining
# (QAT from the FP32 checkpoint, the same for every policy).
MODES = {
    'full': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=3, steps=20,
        config='mmdet_configs/cifar10_resnet20_ssps_folder.py', seeds=(0, 1, 2),
        fp32=dict(epochs=200, lr=0.1), search=dict(epochs=30, lr=0.01), retrain=dict(epochs=30, lr=0.01),
        budgets=UNIFORM_BUDGETS, methods=('uniform', 'ssps')),
    'quick': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=2, steps=8, steps_resnet18=(1, 3),
        config='mmdet_configs/cifar10_resnet20_ssps_subset.py', seeds=(0, 1),
        fp32=dict(epochs=4, lr=0.05), search=dict(epochs=1, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=UNIFORM_BUDGETS, methods=('uniform', 'ssps')),
    # The quality instrument: full CIFAR-10 from the shipped FP32 checkpoint (FP32 is not trained:
    # its top-1 is read from the JSON beside it); every policy retrained from it on one schedule.
    # About 6-7 minutes per search or retraining on 2 CPU cores, a few hours in all (cached runs,
    # so it can be stopped and continued). Step cost: the quick settings.
    'standard': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=2, steps=8, steps_resnet18=(1, 3),
        config='mmdet_configs/cifar10_resnet20_ssps_folder.py', seeds=(0, 1), sensitivity_seeds=1, uniform_seeds=1,
        fp32=dict(checkpoint=STANDARD_FP32), search=dict(epochs=1, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=('W3A3', MIDPOINT, 'W4A4'), methods=QUALITY_METHODS),
    # Only keeps the benchmark working (the test suite): every code path, numbers meaningless.
    'smoke': dict(
        networks=('resnet20',), candidates=(2,), warmup=1, steps=1, batch=8,
        config='mmdet_configs/cifar10_resnet20_ssps_subset.py', seeds=(0,),
        fp32=dict(epochs=1, lr=0.05), search=dict(epochs=2, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=('W4A4',), methods=QUALITY_METHODS, sensitivity_batches=2,
        train_indices=list(range(0, 5000, 200)), test_indices=list(range(0, 1000, 50))),
}


# -- environment ---------------------------------------------------------------------------------

def environment(device: str) -> dict:
    """Machine and library versions, for the results."""
    import mmengine
    import nni
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        'python': platform.python_version(), 'torch': torch.__version__, 'nni': nni.__version__,
        'mmengine': mmengine.__version__, 'platform': platform.platform(), 'cpu': cpu,
        'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'device': device,
    }
    if device == 'cuda':
        env['gpu'] = torch.cuda.get_device_name(0)
    try:
        env['commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env['commit'] = None
    return env


# -- 1. cost per search step ---------------------------------------------------------------------

def real_batch(items: list[dict], batch: int, size: int, offset: int = 0):
    """``(images (batch, 3, size, size) float, labels (batch,) int64)`` from ``items``.

    ``items``: the shipped subset (``load_cifar10_subset('train')``). Real CIFAR-10 images,
    normalised, resized (bilinear) to ``size``; labels 0..9 (valid for a 1000-class head too).
    Step time and memory do not depend on the pixel values.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    picked = [items[(offset + i * 97) % len(items)] for i in range(batch)]  # all classes
    x = torch.from_numpy(np.stack([p['img'] for p in picked])).permute(0, 3, 1, 2).float() / 255.0
    x = (x - 0.47) / 0.25
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    y = torch.tensor([p['gt_label'] for p in picked], dtype=torch.long)
    return x.contiguous(), y


def _resnet20():
    from ssps_nni.models import resnet20
    return resnet20(num_classes=10)


def _resnet18():
    import torchvision
    return torchvision.models.resnet18(num_classes=1000)


#: network -> (builder, input size, batch) of the step-cost section.
NETWORKS = {'resnet20': (_resnet20, 32, 128), 'resnet18': (_resnet18, 224, 16)}


def weight_optimizer(params):
    import torch
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


def _float_step(model, optimizer, x, y):
    import torch.nn.functional as F

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def setup_fp32(model, x, y, xv, yv, candidates):
    return [_float_step(model, weight_optimizer(model.parameters()), x, y)], model


def setup_qat(model, x, y, xv, yv, candidates):
    """(b): every searched layer at W4A4, pinned layers (stem, classifier) at W8A8, as QAT."""
    import torch

    from ssps_nni.convert import DEFAULT_PINNED_BITS, fixed_model, select_layers

    searched, pins = select_layers(model, None, None, 'default', DEFAULT_PINNED_BITS)
    fixed_model(model, {**{n: (4, 4) for n in searched}, **pins})
    with torch.no_grad():
        model(x)  # LSQ step sizes from the first batch (lazy init)
    return [_float_step(model, weight_optimizer(model.parameters()), x, y)], model


def setup_ssps(model, x, y, xv, yv, candidates, **options):
    """(c): the ``SSPSSearch`` loop (sampling, dense scores, logits Adam, decider)."""
    import torch.nn.functional as F

    from ssps_nni.search import SearchConfig, SSPSSearch

    # A long search length: decisions stay open while timing, i.e. the most expensive steps.
    search = SSPSSearch(model, SearchConfig(budget='bitops=W4A4', candidates=candidates, total_steps=10 ** 6,
                                            **options))
    search.prepare(lambda: model(x), num_samples=len(x))
    optimizer = weight_optimizer(model.parameters())
    model.train()

    def step():
        search.begin_step(search.step)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        extra, _ = search.loss_term(loss)
        (loss + extra).backward()
        optimizer.step()
        search.step_logits()
        search.end_step(search.step + 1)
    return [step], model


def setup_ssps_sampled(model, x, y, xv, yv, candidates):
    """(c0): the same loop with the sampled-path signal only (no dense scores; the step before them)."""
    return setup_ssps(model, x, y, xv, yv, candidates, signal='sampled', penalty='abs', logits_lr=3e-3)


def multipath_space(model, candidates):
    """The NNI model space of (d): ``LayerChoice([W{b}A{b} for b in candidates])`` per searched layer.

    Candidate ``b`` is a fixed-bit layer (``FixedQuantConv2d``/``Linear`` from the NNI driver,
    weights copied from the float layer), so each path has its own weights, as ``LayerChoice``
    candidates do. Pinned layers (stem, classifier) are fixed W8A8 layers.
    """
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace

    from ssps_nni.convert import DEFAULT_PINNED_BITS, select_layers
    from ssps_nni.nni.ops import FIXED_OPS, copy_weights, float_type, layer_kwargs

    def fixed(layer, w, a):
        op = FIXED_OPS[float_type(layer)](**layer_kwargs(layer), w_bits=w, a_bits=a)
        copy_weights(layer, op)
        return op

    class MultiPathSpace(ModelSpace):
        def __init__(self):
            super().__init__()
            searched, pins = select_layers(model, None, None, 'default', DEFAULT_PINNED_BITS)
            for name, layer in list(model.named_modules()):
                if name in pins:
                    new = fixed(layer, *pins[name])
                elif name in searched:
                    new = LayerChoice([fixed(layer, b, b) for b in candidates], label=name.replace('.', '_'))
                else:
                    continue
                parent, _, attr = name.rpartition('.')
                setattr(model.get_submodule(parent) if parent else model, attr, new)
            self.model = model

        def forward(self, x):
            return self.model(x)

    return MultiPathSpace()


def setup_darts(model, x, y, xv, yv, candidates):
    """(d): NNI's ``DARTS`` supernet over the multi-path space (``GumbelDARTS`` differs only in
    its softmax, so its step costs the same)."""
    import nni.nas.strategy  # noqa: F401  (before oneshot: otherwise NNI's built-in strategies become placeholders)
    import torch
    import torch.nn.functional as F
    from nni.nas.oneshot.pytorch.strategy import DARTS

    supernet = DARTS().mutate_model(multipath_space(model, candidates))
    arch = list({id(p): p for m in supernet.modules() if hasattr(m, 'arch_parameters')
                 for p in m.arch_parameters()}.values())
    if not arch:
        raise RuntimeError('NNI built no architecture parameters for the multi-path space')
    arch_ids = {id(p) for p in arch}
    with torch.no_grad():
        supernet(x)  # lazy LSQ init of every path
    supernet.train()
    # NNI's DartsLightningModule: Adam(3e-4, betas (0.5, 0.999), wd 1e-3) on the alphas, the
    # task optimizer on the rest; one iteration = architecture step, then weight step.
    arch_optimizer = torch.optim.Adam(arch, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    optimizer = weight_optimizer([p for p in supernet.parameters() if id(p) not in arch_ids])

    def arch_step():
        arch_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(supernet(xv), yv).backward()
        arch_optimizer.step()

    def weight_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(supernet(x), y).backward()
        optimizer.step()
    return [arch_step, weight_step], supernet


METHODS = {
    'fp32': ('(a) FP32', setup_fp32),
    'qat': ('(b) W4A4 QAT', setup_qat),
    'ssps_sampled': ('(c0) SSPS, sampled signal only', setup_ssps_sampled),
    'ssps': ('(c) SSPS search', setup_ssps),
    'darts': ('(d) NNI DARTS multi-path', setup_darts),
}


class SavedTensorMeter:
    """Bytes an autograd graph keeps for backward (unique storages; parameters not counted).

    Used on CPU, where torch has no peak-memory counter: with the parameter, gradient and
    optimizer state bytes added, it is the memory a training step needs at its peak (after the
    forward), less transient workspace.
    """

    def __init__(self, exclude_ptrs: set):
        self.exclude = exclude_ptrs
        self.storages: dict[int, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude:
            self.storages[ptr] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def state_bytes(model) -> int:
    """Parameters + gradients + optimizer state of SGD with momentum (3 copies of each)."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def run_step(phases, device: str) -> float:
    """Seconds of one step: every phase (forward, backward, optimizer step) once."""
    import torch

    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    for phase in phases:
        phase()
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_round_robin(configs: list, warmup: int, steps: int, device: str) -> list[list[float]]:
    """Step times of every config, taken in turns (one step each, order reversed every round).

    Turns spread the drift of a shared machine (other tenants, clock, thermals) over every
    config alike, so the ratios measured in one process are fair. Returns per config the seconds
    of its ``steps`` timed steps, after ``warmup`` untimed ones.
    """
    for phases in configs:
        for _ in range(warmup):
            run_step(phases, device)
    times = [[] for _ in configs]
    for k in range(steps):
        order = range(len(configs)) if k % 2 == 0 else reversed(range(len(configs)))
        for i in order:
            times[i].append(run_step(configs[i], device))
    return times


def step_memory(phases, model, device: str) -> tuple[float, float | None]:
    """``(memory MiB, saved-for-backward MiB or None)`` of one step of ``model``.

    CUDA: what the step allocates above what was allocated before it (``max_memory_allocated``),
    plus :func:`state_bytes`. CPU (torch keeps no peak counter): the largest
    :class:`SavedTensorMeter` over the phases, plus :func:`state_bytes`.
    """
    import torch

    if device == 'cuda':
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_step(phases, device)
        extra = torch.cuda.max_memory_allocated() - before
        return (extra + state_bytes(model)) / MIB, None
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    peaks = []
    for phase in phases:
        meter = SavedTensorMeter(params)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            phase()
        peaks.append(meter.nbytes)
    return (max(peaks) + state_bytes(model)) / MIB, max(peaks) / MIB


def step_cost(settings: dict, device: str, log) -> list[dict]:
    """Section 1: one row per (network, method, candidates); ratios to (b) of the same network.

    Every config of a network is built first and timed in turns (:func:`time_round_robin`);
    the time is the median of its timed steps; memory is measured afterwards, one config at a time.
    """
    import torch

    from ssps_nni.data import load_cifar10_subset

    items = load_cifar10_subset('train')
    rows = []
    for net in settings['networks']:
        build, size, batch = NETWORKS[net]
        batch = settings.get('batch', batch)
        x, y = real_batch(items, batch, size)
        xv, yv = real_batch(items, batch, size, offset=batch)
        x, y, xv, yv = (t.to(device) for t in (x, y, xv, yv))
        plan = [('fp32', None), ('qat', None)]
        plan += [(m, n) for n in settings['candidates'] for m in ('ssps_sampled', 'ssps', 'darts')
                 if m != 'darts' or settings.get('darts', True)]
        built = []
        for method, n in plan:
            torch.manual_seed(0)
            model = build().to(device).train()
            built.append(METHODS[method][1](model, x, y, xv, yv, CANDIDATE_SETS.get(n)))
        warmup, steps = settings.get(f'steps_{net}', (settings['warmup'], settings['steps']))
        times = time_round_robin([phases for phases, _ in built], warmup, steps, device)
        net_rows = []
        for (method, n), (phases, module), t in zip(plan, built, times):
            memory, saved = step_memory(phases, module, device)
            label = METHODS[method][0]
            net_rows.append(dict(
                network=net, batch=batch, input=size, method=method, label=label, candidates=n, steps=steps,
                candidate_bits=list(CANDIDATE_SETS[n]) if n else None, phases=len(phases),
                step_s=statistics.median(t), times_s=t, memory_mib=memory, saved_mib=saved))
            log(f'step-cost {net} b{batch} {label}{f" n={n}" if n else ""}: {statistics.median(t):.3f} s/step, '
                f'{memory:.0f} MiB')
        del built
        base = next(r for r in net_rows if r['method'] == 'qat')
        for r in net_rows:
            r['time_ratio'] = r['step_s'] / base['step_s']
            r['memory_ratio'] = r['memory_mib'] / base['memory_mib']
        rows += net_rows
    return rows


# -- mmengine runs (sections 2 and 3) ------------------------------------------------------------

def schedule_options(settings: dict, phase: dict, data_root: str | None) -> list[str]:
    """``--cfg-options`` of a run: its epochs, learning rate, data (and its size in smoke mode)."""
    e = phase['epochs']
    # no validation while training (val_interval past the end): ssps train tests the final model
    opts = [f'optim_wrapper.optimizer.lr={phase["lr"]}', f'train_cfg.max_epochs={e}', f'train_cfg.val_interval={e + 1}',
            f'param_scheduler.T_max={e}', 'default_hooks.checkpoint.max_keep_ckpts=1', 'default_hooks.logger.interval=20']
    splits = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    if data_root:
        opts += [f'{s}.dataset.data_root={data_root}' for s in splits]
    if 'train_indices' in settings:  # smoke: a few samples of every class (BaseDataset ``indices``), batch 8
        def indices(values):
            return '[' + ','.join(map(str, values)) + ']'
        opts += ['train_dataloader.batch_size=8', 'default_hooks.logger.interval=1',
                 f'train_dataloader.dataset.indices={indices(settings["train_indices"])}']
        opts += [f'{s}.dataset.indices={indices(settings["test_indices"])}' for s in splits[1:]]
    return opts


class RunCache:
    """Finished runs under ``OUT/runs/<name>``, each with a ``done.json`` of its settings and result."""

    def __init__(self, out: Path, log):
        self.root = out / 'runs'
        self.log = log
        self.memo: dict[str, tuple[str, dict]] = {}

    def get(self, name: str, settings: dict, run):
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        if name in self.memo and self.memo[name][0] == key:
            return self.memo[name][1]
        result = self._get(name, key, settings, run)
        self.memo[name] = (key, result)
        return result

    def _get(self, name: str, key: str, settings: dict, run):
        folder = self.root / name
        marker = folder / 'done.json'
        if marker.is_file():
            try:
                done = json.loads(marker.read_text())
            except (ValueError, OSError) as err:
                self.log(f'{marker} is unreadable ({err}); running {name} again')
                done = {}
            if isinstance(done, dict) and done.get('key') == key and isinstance(done.get('result'), dict):
                self.log(f'reusing finished run {name}')
                return done['result']
        if folder.exists():  # unfinished or other settings: start it again
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.log(f'run {name} ...')
        start = time.perf_counter()
        result = run(folder)
        result['run_s'] = time.perf_counter() - start
        from ssps_nni.policy import atomic_write
        atomic_write(marker, json.dumps({'key': key, 'settings': settings, 'result': result}, indent=2) + '\n')
        return result


def _check_rc(rc: int, what: str):
    if rc != 0:
        raise RuntimeError(f'{what} failed with exit status {rc}; see its log above')


def train_run(folder: Path, config: str, options: list[str], seed: int, mode: list[str],
              load_from: str | None) -> dict:
    """``ssps train`` in process (FP32, ``--uniform`` or ``--policy``); its result JSON."""
    argv = [config, '--work-dir', str(folder), '--seed', str(seed), *mode]
    if load_from:
        argv += ['--load-from', load_from]
    argv += ['--cfg-options', *options, f'experiment_name={folder.name}_{os.getpid()}']
    if not load_from:  # FP32 from the initial weights, whatever start the config names
        argv.append('load_from=None')
    _check_rc(train_cli.main(argv), f'ssps train {" ".join(argv)}')
    res = json.loads((folder / 'train_result.json').read_text())
    return {'top1': res['metrics'].get('accuracy/top1'), 'bitops': res['bitops']['value'],
            'size': res['size']['value'], 'checkpoint': res['checkpoint']}


def search_run(folder: Path, config: str, options: list[str], seed: int, budget_arg: str,
               sequential: bool, load_from: str) -> dict:
    """``ssps search``'s steps in process, plus a hook tracing the argmax policy each step."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    import ssps_nni.mmengine  # noqa: F401
    from ssps_nni.policy import load_policy

    tool = search_cli
    argv = [config, '--work-dir', str(folder), '--seed', str(seed), '--budget', budget_arg,
            '--load-from', load_from, '--cfg-options', *options,
            f'experiment_name={folder.name}_{os.getpid()}']
    cfg = tool.build_config(tool.parse_args(argv))
    if not sequential:
        tool.ssps_hook_cfg(cfg).update(threshold=None, schedule='none')
    tool.validate(cfg)

    class PolicyTrace(Hook):
        """The argmax policy after every optimizer step (decided bits, argmax for open ones)."""
        priority = 'LOWEST'

        def __init__(self):
            self.ssps, self.changes, self.last, self.all_decided = None, [], None, None
            self.start, self.steps, self.last_step_s = None, 0, None

        def before_train(self, runner):
            self.ssps = next(h for h in runner.hooks if type(h).__name__ == 'SSPSHook')
            self.start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            search = self.ssps.search
            bits = search.space.bits()
            self.steps = search.step
            if bits != self.last:
                self.changes.append(search.step)
                self.last = bits
            self.last_step_s = time.perf_counter() - self.start
            if self.all_decided is None and search.done:
                self.all_decided = (search.step, self.last_step_s)

    trace = PolicyTrace()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(trace)
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    policy = load_policy(folder / 'policy.json')
    # the last step at which the argmax policy changed; the final fix/repair counts as a change
    stable = trace.changes[-1] if trace.changes else 0
    if trace.last is not None and policy.bits() != dict(trace.last):
        stable = trace.steps
    totals = policy.meta['totals']['bitops']
    # both clocks start at the first training step (after loading and calibration) and end at the
    # step that made the policy final: every decision fixed, or the last step without sequential
    decided_step, decided_s = trace.all_decided or (trace.steps, trace.last_step_s)
    return {'policy': str(folder / 'policy.json'), 'bitops': totals['policy'], 'target': totals['target'],
            'cost_ratio': totals['policy'] / totals['target'], 'steps': trace.steps, 'stable_step': stable,
            'policy_changes': len(trace.changes), 'final_step': decided_step if sequential else trace.steps,
            'final_s': decided_s if sequential else trace.last_step_s, 'search_s': wall,
            'repaired': policy.meta['repaired']}


def policy_run(folder: Path, config: str, options: list[str], seed: int, budget_arg: str, method: str,
               load_from: str, batches: int | None = None) -> dict:
    """``ssps search --method random|sensitivity`` in process: a policy found without training."""
    from ssps_nni.policy import load_policy

    argv = [config, '--work-dir', str(folder), '--seed', str(seed), '--budget', budget_arg, '--method', method,
            '--load-from', load_from]
    if method == 'sensitivity' and batches is not None:
        argv += ['--sensitivity-batches', str(batches)]
    argv += ['--cfg-options', *options, f'experiment_name={folder.name}_{os.getpid()}']
    start = time.perf_counter()
    _check_rc(search_cli.main(argv), f'ssps search {" ".join(argv)}')
    wall = time.perf_counter() - start
    policy = load_policy(folder / 'policy.json')
    totals = policy.meta['totals']['bitops']
    return {'policy': str(folder / 'policy.json'), 'bitops': totals['policy'], 'target': totals['target'],
            'cost_ratio': totals['policy'] / totals['target'], 'search_s': wall,
            'repaired': policy.meta.get('repaired')}


def uniform_pair(policy) -> str | None:
    """``'WxAy'`` if every searched layer of ``policy`` (a core ``Policy``) is at the same bits, else None."""
    searched = {bits for name, bits in policy.bits().items() if not policy.layers[name].get('pinned')}
    if len(searched) != 1:
        return None
    w, a = next(iter(searched))
    return f'W{w}A{a}'


# -- budgets -------------------------------------------------------------------------------------

def uniform_bitops(model, forward, pairs) -> tuple[dict[str, float], float]:
    """``({'WxAy': BitOPs of that uniform policy}, FP32 BitOPs)`` of ``model`` (converted in place).

    ``convert_model`` with its defaults (stem conv and classifier pinned at W8A8, as every search
    and retraining here), ``profile_layers`` during ``forward()`` (one sample, float passes:
    the cells calibrating), ``SpaceCost(BitOpsCost(), ...)``.
    """
    from ssps_nni.convert import convert_model, parse_bits_pair
    from ssps_nni.cost import BitOpsCost, SpaceCost, profile_layers

    space = convert_model(model)
    model.eval()
    for cell in space.cells.values():
        cell.calibrating = True
    try:
        profiles = profile_layers(model, space.cells, forward, 1)
    finally:
        for cell in space.cells.values():
            cell.calibrating = False
    cost = SpaceCost(BitOpsCost(), profiles, space.searched, space.pinned, space.candidates['w'],
                     space.candidates['a'])
    return {p: cost.uniform(*parse_bits_pair(p)) for p in pairs}, cost.references()['fp32']


def budget_table(config: str, budgets) -> dict:
    """Per budget label: the ``--budget`` argument, the target BitOPs and the BitOPs of its uniform
    options; ``fp32``: the FP32 BitOPs.

    Computed from ``ssps_nni.models.resnet20`` on one 1x3x32x32 input; the midpoint budget is
    ``(uniform(W2A2) + uniform(W3A3)) / 2``, given to the search as absolute ``bitops=<value>``.
    The same uniform costs are computed from the config's mmengine model (same layer MACs):
    a mismatch raises ``RuntimeError`` before any run.
    """
    import torch
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401  (registries)
    from ssps_nni.mmengine.qat import build_model_from_cfg
    from ssps_nni.models import resnet20

    pairs = sorted({p for b in budgets for p in (MIDPOINT_OF if b == MIDPOINT else (b,)) + uniform_options(b)})
    x = torch.zeros(1, 3, 32, 32)
    plain = resnet20(num_classes=10)
    costs, fp32 = uniform_bitops(plain, lambda: plain(x), pairs)
    mm = build_model_from_cfg(Config.fromfile(config))
    mm_costs, mm_fp32 = uniform_bitops(mm, lambda: mm(x, mode='tensor'), pairs)
    for key, value in [*costs.items(), ('FP32', fp32)]:
        other = mm_fp32 if key == 'FP32' else mm_costs[key]
        if abs(other - value) > 1e-9 * value:
            raise RuntimeError(f'uniform {key} BitOPs differ between ssps_nni.models.resnet20 ({value:.6g}) and '
                               f'the model of {config} ({other:.6g}): the budgets would not match the search')
    table = {'fp32': fp32}
    for b in budgets:
        target = (costs[MIDPOINT_OF[0]] + costs[MIDPOINT_OF[1]]) / 2 if b == MIDPOINT else costs[b]
        options = {p: costs[p] for p in uniform_options(b)}
        over = [p for p, v in options.items() if v > target * (1 + 1e-9)]
        if over:
            raise RuntimeError(f'uniform {over[0]} ({options[over[0]]:.6g} BitOPs) is over the {b} budget '
                               f'({target:.6g})')
        table[b] = {'arg': f'bitops={target!r}' if b == MIDPOINT else f'bitops={b}', 'target': target,
                    'uniform': options}
    return table


def uniform_options(budget: str) -> tuple[str, ...]:
    """The best uniform policies within ``budget`` (retrained; the better one is reported)."""
    return BUDGET_UNIFORMS.get(budget, (budget,))


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def shipped_fp32(checkpoint: str, config: str) -> dict:
    """The FP32 start of the standard mode: ``checkpoint`` and the JSON beside it (``top1``, ``command``).

    Raises:
        InputError: the checkpoint or its JSON is missing or malformed, or the checkpoint does
            not hold the weights of the config's model.
    """
    import torch
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.mmengine.qat import build_model_from_cfg

    path = Path(checkpoint)
    meta = path.with_suffix('.json')
    if not path.is_file():
        raise InputError(f'--standard starts every run from the shipped FP32 checkpoint, and {str(path)!r} does '
                         'not exist. Train it once (ssps train on mmdet_configs/cifar10_resnet20_ssps_folder.py, '
                         'FP32 mode) and put it there with its JSON (top1, command), or give --fp32-checkpoint PTH; '
                         'this mode does not train FP32')
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f'the FP32 checkpoint {str(path)!r} needs {str(meta)!r} beside it, a JSON object with at '
                         f'least "top1" (a number) and "command" (a string); it could not be read ({err})') from None
    # {"top1": %, "command": str}; a copy of ssps train's train_result.json also works (its
    # metrics' accuracy/top1; the command is then unknown)
    top1 = info.get('top1', (info.get('metrics') or {}).get('accuracy/top1')) if isinstance(info, dict) else None
    command = info.get('command') if isinstance(info, dict) else None
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not isinstance(command, (str, type(None))):
        raise InputError(f'{str(meta)!r} must be a JSON object with "top1" (a number, top-1 %) and "command" '
                         '(a string: how the checkpoint was trained), or the train_result.json of its training')
    try:
        saved = torch.load(path, map_location='cpu')
    except Exception as err:  # noqa: BLE001  (any unpickling error: the message says which file)
        raise InputError(f'the FP32 checkpoint {str(path)!r} cannot be read: {err}') from None
    state = saved.get('state_dict', saved) if isinstance(saved, dict) else {}
    wanted = build_model_from_cfg(Config.fromfile(config)).state_dict()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise InputError(f'{str(path)!r} is not a checkpoint of the model of {config}: {len(missing)} of its '
                         f'{len(wanted)} weights are missing (e.g. {missing[0]!r}); give an mmengine checkpoint '
                         'saved by ssps train on that config')
    return {'top1': float(top1), 'command': command, 'checkpoint': str(path.resolve()),
            'sha1': file_sha1(str(path)), 'json': str(meta.resolve()), 'trained_here': False}


# -- runs of the mmengine sections ----------------------------------------------------------------

class Experiments:
    """The mmengine runs shared by the sequential and quality sections (cached, resumable)."""

    def __init__(self, settings: dict, out: Path, data_root: str | None, log):
        self.s, self.data_root, self.log = settings, data_root, log
        self.config = str(ROOT / settings['config'])
        self.cache = RunCache(out, log)
        self._budgets = None
        self._fp32 = None

    def _settings(self, **extra) -> dict:
        return dict(config=self.s['config'], data_root=self.data_root, **extra)

    def options(self, phase: dict) -> list[str]:
        return schedule_options(self.s, phase, self.data_root)

    def seeds(self, method: str) -> tuple[int, ...]:
        """Seeds of a method's runs: every seed, or the first ``<method>_seeds`` of them."""
        seeds = tuple(self.s['seeds'])
        return seeds[:self.s.get(f'{method}_seeds', len(seeds))]

    @property
    def budgets(self) -> dict:
        """:func:`budget_table` of the quality budgets (and W4A4, the sequential section's)."""
        if self._budgets is None:
            labels = list(dict.fromkeys([*self.s['budgets'], 'W4A4']))
            self._budgets = budget_table(self.config, labels)
        return self._budgets

    def budget_arg(self, budget: str) -> str:
        return self.budgets[budget]['arg'] if budget in self.budgets else f'bitops={budget}'

    def _budget_settings(self, budget: str) -> dict:
        """The budget in a run's cache key (its absolute value when it is not a WxAy form)."""
        arg = self.budget_arg(budget)
        return dict(budget=budget) if arg == f'bitops={budget}' else dict(budget=budget, budget_arg=arg)

    def test_images(self) -> int:
        """Images of the test split every retrained model is evaluated on."""
        from ssps_nni.data import CIFAR10_CLASSES, load_cifar10_subset

        if 'test_indices' in self.s:
            return len(self.s['test_indices'])
        if self.data_root:
            return sum(1 for c in CIFAR10_CLASSES for n in os.listdir(Path(self.data_root) / 'test' / c)
                       if n.lower().endswith(('.jpg', '.jpeg', '.png')))
        return len(load_cifar10_subset('test'))

    def fp32(self) -> dict:
        """The FP32 start: trained here (cached), or the shipped checkpoint of the standard mode."""
        if self._fp32 is not None:
            return self._fp32
        phase = self.s['fp32']
        if 'checkpoint' in phase:
            entry = shipped_fp32(phase['checkpoint'], self.config)
            self.log(f'FP32 start: {entry["checkpoint"]} (top-1 {entry["top1"]:.2f} % by its JSON; not trained here)')
        else:
            entry = self.cache.get('fp32', self._settings(phase=phase), lambda d: train_run(
                d, self.config, self.options(phase), 0, [], None))
        if entry.get('bitops') is None:
            entry = dict(entry, bitops=self.budgets['fp32'])
        self._fp32 = entry
        return entry

    def _fp32_key(self):
        """The FP32 start in a run's cache key: its path (and content hash when shipped)."""
        fp32 = self.fp32()
        return {'checkpoint': fp32['checkpoint'], 'sha1': fp32['sha1']} if 'sha1' in fp32 else fp32['checkpoint']

    def search(self, budget: str, seed: int, sequential: bool = True) -> dict:
        """The SSPS search (mmengine driver) at ``budget``."""
        fp32, phase = self.fp32(), self.s['search']
        name = f'search_{budget}_{"seq" if sequential else "noseq"}_s{seed}'
        return self.cache.get(name, self._settings(phase=phase, fp32=self._fp32_key(), **self._budget_settings(budget),
                                                   seed=seed, sequential=sequential), lambda d: search_run(
            d, self.config, self.options(phase), seed, self.budget_arg(budget), sequential, fp32['checkpoint']))

    def policy_search(self, method: str, budget: str, seed: int) -> dict:
        """``ssps search --method random|sensitivity`` at ``budget`` (from the FP32 start)."""
        fp32, phase = self.fp32(), self.s['search']
        batches = self.s.get('sensitivity_batches') if method == 'sensitivity' else None
        return self.cache.get(f'{method}_{budget}_s{seed}', self._settings(
            phase=phase, fp32=self._fp32_key(), **self._budget_settings(budget), seed=seed, method=method,
            batches=batches), lambda d: policy_run(d, self.config, self.options(phase), seed, self.budget_arg(budget),
                                                   method, fp32['checkpoint'], batches))

    def find_policy(self, method: str, budget: str, seed: int) -> dict:
        return self.search(budget, seed) if method == 'ssps' else self.policy_search(method, budget, seed)

    def retrain_uniform(self, pair: str, seed: int) -> dict:
        """``ssps train --uniform WxAy`` from the FP32 start."""
        fp32, phase = self.fp32(), self.s['retrain']
        mode = ['--uniform', pair]
        return self.cache.get(f'retrain_uniform_{pair}_s{seed}', self._settings(
            phase=phase, fp32=self._fp32_key(), mode=mode, seed=seed), lambda d: train_run(
            d, self.config, self.options(phase), seed, mode, fp32['checkpoint']))

    def retrain(self, what: str, budget: str, seed: int, sequential: bool = True) -> dict:
        """``what``: ``'uniform'`` (``--uniform budget``) or a method's policy at ``budget``
        (``'ssps'``, ``'random'``, ``'sensitivity'``), retrained from the FP32 start.

        A policy that is a uniform ``WxAy`` reuses that uniform retraining (``same_as_uniform``).
        """
        if what == 'uniform':
            return self.retrain_uniform(budget, seed)
        from ssps_nni.policy import load_policy

        fp32, phase = self.fp32(), self.s['retrain']
        found = self.search(budget, seed, sequential) if what == 'ssps' else self.policy_search(what, budget, seed)
        policy = found['policy']
        pair = uniform_pair(load_policy(policy))
        if pair is not None:  # e.g. the W2A2 budget with 2 bits the lowest candidate: there was no choice
            return dict(self.retrain_uniform(pair, seed), same_as_uniform=pair)
        name = (f'retrain_ssps_{budget}_{"seq" if sequential else "noseq"}_s{seed}' if what == 'ssps'
                else f'retrain_{what}_{budget}_s{seed}')
        mode = ['--policy', policy]
        return self.cache.get(name, self._settings(phase=phase, fp32=self._fp32_key(), mode=mode, seed=seed),
                              lambda d: train_run(d, self.config, self.options(phase), seed, mode,
                                                  fp32['checkpoint']))


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'n': len(values)}


def decision_stats(policy_path: str) -> dict:
    """How a policy's searched decisions were made: mean certainty at decision, fraction by threshold.

    Reads the policy's ``decisions`` (``{label: {bits, certainty, step, by}}``) when present;
    otherwise the per-layer ``certainty`` (the fraction by threshold is then unknown: None).
    """
    data = json.loads(Path(policy_path).read_text())
    decisions = data.get('decisions')
    if isinstance(decisions, dict) and decisions:
        entries = [d for d in decisions.values() if isinstance(d, dict)]
        values = [d['certainty'] for d in entries if isinstance(d.get('certainty'), (int, float))]
        by = [d.get('by') for d in entries]
        return {'certainty': statistics.fmean(values) if values else None,
                'by_threshold': by.count('threshold') / len(by) if by else None,
                'by': {k: by.count(k) for k in sorted(set(map(str, by)))}, 'decisions': len(entries),
                'source': 'decisions'}
    return {'certainty': mean_certainty(policy_path), 'by_threshold': None, 'by': None, 'decisions': None,
            'source': 'layers'}


def policy_agreement(paths: list[str]) -> float | None:
    """Fraction of searched (layer, slot) decisions with equal bits, averaged over pairs of policies."""
    import itertools

    from ssps_nni.policy import load_policy

    policies = [load_policy(p) for p in paths]
    values = []
    for a, b in itertools.combinations(policies, 2):
        keys = [(n, k) for n, v in a.layers.items() if not v.get('pinned') and not v.get('excluded')
                for k in ('w_bits', 'a_bits')]
        if keys:
            values.append(sum(a.layers[n][k] == b.layers.get(n, {}).get(k) for n, k in keys) / len(keys))
    return statistics.fmean(values) if values else None


def quality_row(exp: Experiments, budget: str, method: str, found: dict) -> dict:
    """One row of the quality section from the runs finished so far (``n`` counts them)."""
    target = exp.budgets[budget]['target']
    row = {'budget': budget, 'budget_arg': exp.budget_arg(budget), 'target': target, 'method': method}
    searches = list(found['searches'])
    if method == 'uniform':
        options = {pair: {'top1': _spread([r['top1'] for _, r in runs]), 'top1_runs': [r['top1'] for _, r in runs]}
                   for pair, runs in found['options'].items()}
        done = [p for p in options if options[p]['top1']['n']]
        best = max(done, key=lambda p: options[p]['top1']['mean']) if done else None
        runs = [dict(r, seed=seed, uniform=best) for seed, r in found['options'].get(best, [])]
        row.update(uniform_policy=best, uniform_options=options)
    else:
        runs = [dict(r, seed=seed) for seed, r in found['runs']]
    row.update({
        'top1': _spread([r['top1'] for r in runs]), 'top1_runs': [r['top1'] for r in runs],
        'bitops': _spread([r['bitops'] for r in runs]),
        'cost_ratio': _spread([r['bitops'] / target for r in runs if r.get('bitops') is not None]),
        'search_cost_ratio': _spread([s['cost_ratio'] for _, s in searches]) if searches else None,
        'search_s': _spread([s['search_s'] for _, s in searches]) if searches else None,
        'same_as_uniform': [r.get('same_as_uniform') or False for r in runs] if method != 'uniform' else None,
        'runs': [{'seed': r['seed'], 'top1': r['top1'], 'bitops': r['bitops'], 'cost_ratio': r['bitops'] / target,
                  'checkpoint': r.get('checkpoint'), 'uniform': r.get('uniform') or r.get('same_as_uniform') or None}
                 for r in runs],
        'searches': [{'seed': seed, 'policy': s['policy'], 'cost_ratio': s['cost_ratio'], 'search_s': s['search_s']}
                     for seed, s in searches],
    })
    if len(searches) > 1:
        row['agreement'] = policy_agreement([s['policy'] for _, s in searches])
    if method == 'ssps' and searches:
        stats = [decision_stats(s['policy']) for _, s in searches]
        row.update(certainty=_spread([d['certainty'] for d in stats]),
                   by_threshold=_spread([d['by_threshold'] for d in stats]),
                   final_step=_spread([s['final_step'] for _, s in searches]),
                   steps=_spread([s['steps'] for _, s in searches]),
                   decisions_source=stats[0]['source'])
        for entry, d in zip(row['searches'], stats):
            entry.update(certainty=d['certainty'], by_threshold=d['by_threshold'], by=d['by'])
        for entry, (_, s) in zip(row['searches'], searches):
            entry.update(final_step=s['final_step'], steps=s['steps'])
    return row


def quality(exp: Experiments, progress=None) -> dict:
    """Section 3: every method's policy at each budget, retrained from the same FP32 start.

    Budgets and methods run in the order of the settings; ``progress(value)`` is called with the
    section as it stands after every finished search and retraining (rows without a finished run
    have ``n = 0``), so a stopped benchmark still leaves a table of what finished.
    """
    fp32 = exp.fp32()
    plan = [(b, m) for b in exp.s['budgets'] for m in exp.s.get('methods', ('uniform', 'ssps'))]
    found = {key: {'searches': [], 'runs': [], 'options': {}} for key in plan}

    def snapshot(complete: bool) -> dict:
        return {'test_images': exp.test_images(), 'fp32': fp32, 'complete': complete,
                'budgets': {b: exp.budgets[b] for b in exp.s['budgets']},
                'methods': list(exp.s.get('methods', ('uniform', 'ssps'))),
                'rows': [quality_row(exp, b, m, found[(b, m)]) for b, m in plan]}

    def finished():
        if progress is not None:
            progress(snapshot(False))

    # first seed of every method at every budget, then the second seeds: a stopped run still
    # leaves every row with a first result
    rounds = max(len(exp.seeds(m)) for _, m in plan)
    for rank in range(rounds):
        for budget, method in plan:
            seeds = exp.seeds(method)
            if rank >= len(seeds):
                continue
            seed, record = seeds[rank], found[(budget, method)]
            if method == 'uniform':
                for pair in uniform_options(budget):
                    record['options'].setdefault(pair, []).append((seed, exp.retrain_uniform(pair, seed)))
                    finished()
            else:
                record['searches'].append((seed, exp.find_policy(method, budget, seed)))
                finished()
                record['runs'].append((seed, exp.retrain(method, budget, seed)))
                finished()
    return snapshot(True)


def mean_certainty(policy_path: str) -> float | None:
    """Mean selection certainty (max probability) of a policy's searched decisions when fixed."""
    from ssps_nni.policy import load_policy

    layers = load_policy(policy_path).layers.values()
    values = [e['certainty'] for e in layers if not e.get('pinned') and e.get('certainty') is not None]
    return statistics.fmean(values) if values else None


def sequential(exp: Experiments) -> dict:
    """Section 2: the W4A4-budget search with and without sequential determination."""
    budget = 'W4A4' if 'W4A4' in exp.s['budgets'] else exp.s['budgets'][-1]
    rows = []
    for seq in (True, False):
        searches = [exp.search(budget, seed, seq) for seed in exp.s['seeds']]
        retrains = [exp.retrain('ssps', budget, seed, seq) for seed in exp.s['seeds']]
        rows.append({
            'sequential': seq, 'budget': budget,
            'steps': _spread([s['steps'] for s in searches]),
            'stable_step': _spread([s['stable_step'] for s in searches]),
            'final_step': _spread([s['final_step'] for s in searches]),
            'final_s': _spread([s['final_s'] for s in searches]),
            'search_s': _spread([s['search_s'] for s in searches]),
            'cost_ratio': _spread([s['cost_ratio'] for s in searches]),
            'policy_changes': _spread([s['policy_changes'] for s in searches]),
            'certainty': _spread([mean_certainty(s['policy']) for s in searches]),
            'top1': _spread([r['top1'] for r in retrains]), 'top1_runs': [r['top1'] for r in retrains],
        })
    return {'budget': budget, 'rows': rows}


# -- report --------------------------------------------------------------------------------------

def _pm(s: dict | None, fmt: str = '{:.2f}') -> str:
    if not s or s.get('mean') is None:
        return 'n/a'
    text = fmt.format(s['mean'])
    return text + (f' ± {fmt.format(s["std"])}' if s['n'] > 1 else '')


METHOD_LABELS = {'ssps': 'SSPS', 'uniform': 'uniform', 'random': 'random within budget',
                 'sensitivity': 'sensitivity'}


def _giga(s: dict | None) -> dict | None:
    return None if not s else {k: (v / 1e9 if isinstance(v, float) and k != 'n' else v) for k, v in s.items()}


def _method_label(r: dict) -> str:
    """The policy column: the method, which uniform policy won, or that a search found a uniform one."""
    method = r['method']
    if method == 'uniform':
        options = r.get('uniform_options') or {}
        best = r.get('uniform_policy') or (r['budget'] if not options else None)
        if len(options) > 1:
            tried = ', '.join(f'{p} {_pm(o["top1"])}' for p, o in options.items())
            return f'uniform {best or "n/a"} (better of {tried})'
        return f'uniform {best}' if best else 'uniform'
    label = METHOD_LABELS.get(method, method)
    same = r.get('same_as_uniform') or []
    if same and all(same):
        found = sorted({v for v in same if isinstance(v, str)})
        return f'{label} (found the uniform policy{" " + ", ".join(found) if found else ""})'
    return label


def quality_lines(q: dict, seeds: str) -> list[str]:
    """The quality table: every row's spread (mean ± std over its runs; n/a: no finished run)."""
    fp32 = q['fp32']
    start = ('shipped checkpoint' if fp32.get('trained_here') is False else 'trained here')
    images = f'; {q["test_images"]:,} test images' if q.get('test_images') else ''
    if fp32.get('trained_here') is False:
        start += (f' `{fp32["checkpoint"]}`' if fp32.get('checkpoint') else '') + (
            f', trained by `{fp32["command"]}`' if fp32.get('command') else '')
    head = (f'FP32 start ({start}): top-1 {fp32["top1"]:.2f} %, {fp32["bitops"] / 1e9:.2f} GBitOPs{images}. '
            f'Mean ± std over the runs of each row (seeds {seeds}; the standard mode runs the sensitivity method '
            'with the first seed only), in brackets. Cost / target: the retrained model\'s BitOPs over the budget; '
            'search cost / target: the policy\'s. SSPS columns: mean selection certainty when a decision was fixed, fraction of decisions '
            'fixed by the certainty threshold, fraction of searched (layer, slot) decisions on which the seeds\' '
            'policies agree, optimizer step at which the policy was final.')
    if q.get('complete') is False:
        head += ' **Partial: the benchmark is still running or was stopped; rows with n/a have no finished run.**'
    lines = [head, '',
             '| budget | policy | top-1 % | runs | GBitOPs | cost / target | search cost / target | search s | '
             'certainty at decision | by threshold | seed agreement | final at step |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in q['rows']:
        runs = ', '.join(f'{v:.1f}' for v in r.get('top1_runs', []) if v is not None)
        target = f' ({r["target"] / 1e9:.4f} G)' if r.get('target') else ''
        agreement = r.get('agreement')
        lines.append(
            f'| {r["budget"]}{target} | {_method_label(r)} | {_pm(r["top1"])} | [{runs}] | '
            f'{_pm(_giga(r.get("bitops")), "{:.4f}")} | {_pm(r.get("cost_ratio"), "{:.3f}")} | '
            f'{_pm(r.get("search_cost_ratio"), "{:.3f}")} | {_pm(r.get("search_s"), "{:.0f}")} | '
            f'{_pm(r.get("certainty"), "{:.3f}")} | {_pm(r.get("by_threshold"), "{:.2f}")} | '
            f'{"n/a" if agreement is None else f"{agreement:.2f}"} | {_pm(r.get("final_step"), "{:.0f}")} |')
    lines.append('')
    return lines


def markdown(results: dict) -> str:
    """The result tables (the body of docs/benchmarks.md's results)."""
    env = results['environment']
    walls = ', '.join(f'{k} {v / 60:.1f} min' for k, v in results.get('section_s', {}).items())

    def seeds(section: str) -> str:
        return ', '.join(map(str, results.get('section_settings', {}).get(section, {}).get('seeds', [])))

    def header(title: str, section: str) -> list[str]:
        command = results.get('commands', {}).get(section, 'n/a')
        commit = results.get('section_commit', {}).get(section, env.get('commit'))
        return [f'### {title}', '', f'Command: `{command}` (commit {commit})', '']
    lines = [f'Mode `{results["mode"]}`, device `{env["device"]}`{" (" + env["gpu"] + ")" if env.get("gpu") else ""}, '
             f'CPU {env["cpu"]} ({env["cpu_count"]} cores, {env["torch_threads"]} torch threads); '
             f'torch {env["torch"]}, nni {env["nni"]}, mmengine {env["mmengine"]}, Python {env["python"]}; '
             f'last call at commit {env.get("commit")}. Wall time of each section (the runs its last call did; reused runs '
             f'cost nothing): {walls or "n/a"}.', '']
    if 'step-cost' in results:
        mem = ('allocated by the step + params/grads/momentum' if env['device'] == 'cuda'
               else 'saved-for-backward + params/grads/momentum')
        lines += header('Cost per search step', 'step-cost') + [
                  f'Median of the timed steps (configs of a network timed in turns); memory: {mem}. '
                  'Ratios are to (b) W4A4 QAT of the same network.', '',
                  '| network | batch | method | candidates | s/step | × (b) | memory MiB | × (b) |',
                  '|---|---|---|---|---|---|---|---|']
        for r in results['step-cost']:
            cands = f'{r["candidates"]} {tuple(r["candidate_bits"])}' if r['candidates'] else '-'
            lines.append(f'| {r["network"]} {r["input"]}² | {r["batch"]} | {r["label"]} | {cands} | '
                         f'{r["step_s"]:.3f} | {r["time_ratio"]:.2f} | {r["memory_mib"]:.0f} | {r["memory_ratio"]:.2f} |')
        lines.append('')
    if 'sequential' in results:
        seq = results['sequential']
        lines += header('Sequential determination', 'sequential') + [
                  f'Budget bitops={seq["budget"]}; mean ± std over seeds {seeds("sequential")}.', '',
                  '| sequential | search steps | policy stable from step | policy final at step | '
                  's to final policy | search s | cost / target | argmax changes | mean certainty at decision | '
                  'retrained top-1 % |',
                  '|---|---|---|---|---|---|---|---|---|---|']
        for r in seq['rows']:
            lines.append(f'| {"yes" if r["sequential"] else "no (argmax at end)"} | {_pm(r["steps"], "{:.0f}")} | '
                         f'{_pm(r["stable_step"], "{:.0f}")} | {_pm(r["final_step"], "{:.0f}")} | {_pm(r["final_s"], "{:.0f}")} | '
                         f'{_pm(r["search_s"], "{:.0f}")} | {_pm(r["cost_ratio"], "{:.3f}")} | '
                         f'{_pm(r["policy_changes"], "{:.0f}")} | {_pm(r.get("certainty"), "{:.3f}")} | '
                         f'{_pm(r["top1"])} |')
        lines.append('')
    if 'quality' in results:
        lines += header('Quality at equal BitOPs (real CIFAR-10, ResNet-20)', 'quality') + quality_lines(
            results['quality'], seeds('quality'))
    return '\n'.join(lines)


# -- command line --------------------------------------------------------------------------------

def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n', 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sections', nargs='*', metavar='SECTION',
                        help=f'any of {", ".join(SECTIONS)} (default: all)')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--quick', action='store_true', help='reduced settings for 2 CPU cores (documented)')
    size.add_argument('--standard', action='store_true',
                      help='the quality instrument: full CIFAR-10 from the shipped FP32 checkpoint, budgets '
                           'W3A3 / 2.5-bit / W4A4, methods SSPS, uniform, random, sensitivity (hours on 2 cores)')
    size.add_argument('--smoke', action='store_true', help='smallest setting: checks the benchmark runs')
    parser.add_argument('--out', help='output folder (default: work_dirs/benchmark_<mode>)')
    parser.add_argument('--seeds', help='comma-separated seeds of the searches and retrainings')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda if available')
    parser.add_argument('--data-root', help='CIFAR-10 folder with train/ and test/ (full and standard modes; '
                                            'default ../shared/data/cifar10)')
    parser.add_argument('--budgets', help="comma-separated budgets of the quality section, e.g. W4A4 or "
                                          "W3A3,2.5-bit (default: the mode's)")
    parser.add_argument('--networks', help='comma-separated networks of the step-cost section '
                                           f'(default: the mode\'s; accepted: {", ".join(NETWORKS)})')
    parser.add_argument('--no-darts', action='store_true', help='step-cost section without the NNI DARTS rows')
    parser.add_argument('--fp32-checkpoint', metavar='PTH',
                        help=f'FP32 start of --standard (default {STANDARD_FP32}; a JSON with top1 and command '
                             'beside it)')
    return parser.parse_args(argv)


def resolve(args) -> tuple[str, dict, list[str], str, str | None]:
    import torch

    bad = [s for s in args.sections if s not in SECTIONS and s != 'all']
    if bad:
        raise InputError(f'unknown section {bad[0]!r}; accepted: {", ".join(SECTIONS)} or all')
    sections = [s for s in SECTIONS if not args.sections or 'all' in args.sections or s in args.sections]
    mode = 'smoke' if args.smoke else 'quick' if args.quick else 'standard' if args.standard else 'full'
    settings = copy.deepcopy(MODES[mode])
    if args.networks is not None:
        nets = tuple(n.strip() for n in args.networks.split(',') if n.strip())
        bad = [n for n in nets if n not in NETWORKS]
        if not nets or bad:
            raise InputError(f'--networks {args.networks!r}: accepted networks are {", ".join(NETWORKS)}')
        settings['networks'] = nets
    if args.no_darts:
        settings['darts'] = False
    if args.budgets is not None:
        wanted = tuple(b.strip() for b in args.budgets.split(',') if b.strip())
        bad = [b for b in wanted if b != MIDPOINT and not re.fullmatch(r'W\d+A\d+', b)]
        if not wanted or bad:
            raise InputError(f'--budgets {args.budgets!r}: give uniform budgets WxAy or {MIDPOINT}, comma-separated')
        settings['budgets'] = wanted
    if args.seeds is not None:
        try:
            settings['seeds'] = tuple(int(s) for s in args.seeds.split(',') if s.strip())
        except ValueError:
            raise InputError(f'--seeds {args.seeds!r} is not a comma-separated list of integers') from None
        if not settings['seeds']:
            raise InputError('--seeds is empty; give seeds such as 0,1')
        bad = [s for s in settings['seeds'] if not 0 <= s < 2 ** 32]
        if bad:
            raise InputError(f'--seeds: seed {bad[0]} is outside 0..2**32-1 (what torch and numpy accept)')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise InputError('--device cuda: no CUDA device is available; use --device cpu')
    mmengine_sections = set(sections) & {'sequential', 'quality'}
    if args.fp32_checkpoint is not None and mode != 'standard':
        raise InputError('--fp32-checkpoint is used only by --standard (the other modes train their FP32 start)')
    if 'checkpoint' in settings['fp32'] and mmengine_sections:
        path = Path(args.fp32_checkpoint or ROOT / settings['fp32']['checkpoint']).resolve()
        settings['fp32']['checkpoint'] = str(path)
        shipped_fp32(str(path), str(ROOT / settings['config']))  # refuse now, before any run
    data_root = None
    if mode in ('full', 'standard') and mmengine_sections:
        from ssps_nni.data import shared_data_root
        shared = shared_data_root()
        data_root = args.data_root or (str(shared / 'cifar10') if shared else None)
        if not data_root or not (Path(data_root) / 'train').is_dir() or not (Path(data_root) / 'test').is_dir():
            raise InputError(f'{mode} mode trains on the full CIFAR-10 as JPEG folders: --data-root {data_root!r} '
                             'has no train/ and test/ folders. Give --data-root PATH (as ../shared/data/cifar10), '
                             'or use --quick (the shipped subset)')
        data_root = str(Path(data_root).resolve())
    elif args.data_root:
        raise InputError('--data-root is used only by the sequential and quality sections in full and standard '
                         'modes; --quick and --smoke use the shipped CIFAR-10 subset, step-cost uses no data root')
    return mode, settings, sections, device, data_root


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps benchmark``; returns the exit status (0 done, 2 bad input)."""
    args = parse_args(argv, prog)
    try:
        mode, settings, sections, device, data_root = resolve(args)
    except InputError as err:
        return fail(prog, err)
    from ssps_nni.policy import atomic_write

    out = Path(args.out or ROOT / 'work_dirs' / f'benchmark_{mode}').resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / '.write-test'
        probe.write_text('')
        probe.unlink()
    except OSError as err:
        return fail(prog, InputError(f'--out {str(out)!r} is not a writable folder ({err.strerror}); '
                                     'give a folder that exists or can be created'))
    started = time.perf_counter()

    def log(msg: str):
        print(f'[benchmark {time.perf_counter() - started:7.1f} s] {msg}', flush=True)

    results = {}
    previous = out / 'results.json'
    if previous.is_file():  # keep the other sections of an earlier call in this mode
        try:
            results = json.loads(previous.read_text())
        except ValueError:
            results = {}
        if results.get('mode') != mode:
            results = {}
    command = f'{prog} ' + ' '.join(sys.argv[1:] if argv is None else argv)
    results.update({'mode': mode, 'environment': environment(device)})
    for key in ('commands', 'section_settings', 'section_s', 'section_commit'):
        results.setdefault(key, {})

    def save(name: str, value, seconds: float) -> None:
        """Record a finished section (with its command and settings) and write the results now."""
        results[name] = value
        results['commands'][name] = command
        results['section_settings'][name] = settings
        results['section_s'][name] = seconds
        results['section_commit'][name] = results['environment'].get('commit')
        results['sections'] = [s for s in SECTIONS if s in results]
        atomic_write(out / 'results.json', json.dumps(results, indent=2, default=str) + '\n')
        atomic_write(out / 'results.md', markdown(results) + '\n')

    if 'step-cost' in sections:
        start = time.perf_counter()
        save('step-cost', step_cost(settings, device, log), time.perf_counter() - start)
    if set(sections) & {'sequential', 'quality'}:
        os.chdir(ROOT)  # the configs' relative paths (data/, mmdet_configs/)
        exp = Experiments(settings, out, data_root, log)
        for name, run in (('quality', quality), ('sequential', sequential)):
            if name in sections:  # seconds of this call's runs (reused runs cost nothing)
                start = time.perf_counter()
                if name == 'quality':  # partial results after every finished run
                    value = run(exp, lambda partial, t=start: save(name, partial, time.perf_counter() - t))
                else:
                    value = run(exp)
                save(name, value, time.perf_counter() - start)
    text = markdown(results)
    print('\n' + text)
    print(f'results: {out / "results.json"}, {out / "results.md"} ({time.perf_counter() - started:.0f} s)')
    return 0

