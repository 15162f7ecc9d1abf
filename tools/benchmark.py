"""Benchmarks of SSPS: cost per search step, sequential determination, quality at equal cost.

    python tools/benchmark.py --quick                 # all three sections, reduced (CPU, ~35 min)
    python tools/benchmark.py quality --quick         # the quality run alone (< 20 min, 2 cores)
    python tools/benchmark.py [SECTION ...]           # full settings (meant for a GPU)
        [--out DIR] [--seeds 0,1] [--device cpu|cuda] [--data-root CIFAR10_FOLDER] [--smoke]

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
    On real CIFAR-10: an FP32 ResNet-20 trained by ``tools/train.py``; SSPS policies searched
    by the mmengine driver at budgets equal to the BitOPs of uniform W2A2, W3A3 and W4A4,
    against those uniform policies, all retrained (``tools/train.py``) on one schedule, over
    several seeds.

Runs of the mmengine sections are cached under ``OUT/runs/<name>``: an interrupted benchmark
run again with the same settings reuses every finished run and redoes the unfinished one.
Results go to ``OUT/results.json`` and ``OUT/results.md`` (written atomically).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECTIONS = ('step-cost', 'sequential', 'quality')
CANDIDATE_SETS = {2: (4, 8), 4: (2, 4, 6, 8), 6: (2, 3, 4, 5, 6, 8)}
UNIFORM_BUDGETS = ('W2A2', 'W3A3', 'W4A4')
MIB = 2 ** 20

# Settings per mode. Step cost: (warm-up steps, timed steps). mmengine runs: epochs and
# learning rates of the FP32 training, the search (from the FP32 checkpoint) and the retraining
# (QAT from the FP32 checkpoint, the same for every policy).
MODES = {
    'full': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=3, steps=20,
        config='mmdet_configs/cifar10_resnet20_ssps_folder.py', seeds=(0, 1, 2),
        fp32=dict(epochs=200, lr=0.1), search=dict(epochs=30, lr=0.01), retrain=dict(epochs=30, lr=0.01),
        budgets=UNIFORM_BUDGETS),
    'quick': dict(
        networks=('resnet20', 'resnet18'), candidates=(2, 4, 6), warmup=2, steps=8, steps_resnet18=(1, 3),
        config='mmdet_configs/cifar10_resnet20_ssps_subset.py', seeds=(0, 1),
        fp32=dict(epochs=4, lr=0.05), search=dict(epochs=1, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=UNIFORM_BUDGETS),
    # Only keeps the benchmark working (the test suite): every code path, numbers meaningless.
    'smoke': dict(
        networks=('resnet20',), candidates=(2,), warmup=1, steps=1, batch=8,
        config='mmdet_configs/cifar10_resnet20_ssps_subset.py', seeds=(0,),
        fp32=dict(epochs=1, lr=0.05), search=dict(epochs=2, lr=0.01), retrain=dict(epochs=1, lr=0.01),
        budgets=('W4A4',), train_indices=list(range(0, 5000, 200)), test_indices=list(range(0, 1000, 50))),
}


class InputError(Exception):
    """Bad command-line input; the message is shown as is."""


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


def setup_ssps(model, x, y, xv, yv, candidates):
    """(c): the ``SSPSSearch`` loop (sampling, constraint loss, logits Adam, decider)."""
    import torch.nn.functional as F

    from ssps_nni.search import SearchConfig, SSPSSearch

    # A long search length: decisions stay open while timing, i.e. the most expensive steps.
    search = SSPSSearch(model, SearchConfig(budget='bitops=W4A4', candidates=candidates, total_steps=10 ** 6))
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
    import nni.nas.strategy  # noqa: F401  (before oneshot: NNI_NOTES pitfall)
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
        plan += [(m, n) for n in settings['candidates'] for m in ('ssps', 'darts')]
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

def _tool(name: str):
    """``tools/<name>.py`` as a module (its functions are reused in process)."""
    key = f'ssps_{name}_tool'
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, ROOT / 'tools' / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return module


def schedule_options(settings: dict, phase: dict, data_root: str | None) -> list[str]:
    """``--cfg-options`` of a run: its epochs, learning rate, data (and its size in smoke mode)."""
    e = phase['epochs']
    # no validation while training (val_interval past the end): tools/train.py tests the final model
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
    """``tools/train.py`` in process (FP32, ``--uniform`` or ``--policy``); its result JSON."""
    argv = [config, '--work-dir', str(folder), '--seed', str(seed), *mode]
    if load_from:
        argv += ['--load-from', load_from]
    argv += ['--cfg-options', *options, f'experiment_name={folder.name}_{os.getpid()}']
    _check_rc(_tool('train').main(argv), f'tools/train.py {" ".join(argv)}')
    res = json.loads((folder / 'train_result.json').read_text())
    return {'top1': res['metrics'].get('accuracy/top1'), 'bitops': res['bitops']['value'],
            'size': res['size']['value'], 'checkpoint': res['checkpoint']}


def search_run(folder: Path, config: str, options: list[str], seed: int, budget: str,
               sequential: bool, load_from: str) -> dict:
    """``tools/search.py``'s steps in process, plus a hook tracing the argmax policy each step."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    import ssps_nni.mmengine  # noqa: F401
    from ssps_nni.policy import load_policy

    tool = _tool('search')
    argv = [config, '--work-dir', str(folder), '--seed', str(seed), '--budget', f'bitops={budget}',
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


def is_uniform(policy, budget: str) -> bool:
    """True if every searched layer of ``policy`` (a core ``Policy``) is at ``budget``'s ``WxAy``."""
    from ssps_nni.convert import parse_bits_pair

    uniform = parse_bits_pair(budget)
    return all(bits == uniform for name, bits in policy.bits().items() if not policy.layers[name].get('pinned'))


class Experiments:
    """The mmengine runs shared by the sequential and quality sections (cached, resumable)."""

    def __init__(self, settings: dict, out: Path, data_root: str | None, log):
        self.s, self.data_root, self.log = settings, data_root, log
        self.config = str(ROOT / settings['config'])
        self.cache = RunCache(out, log)

    def _settings(self, **extra) -> dict:
        return dict(config=self.s['config'], data_root=self.data_root, **extra)

    def options(self, phase: dict) -> list[str]:
        return schedule_options(self.s, phase, self.data_root)

    def fp32(self) -> dict:
        phase = self.s['fp32']
        return self.cache.get('fp32', self._settings(phase=phase), lambda d: train_run(
            d, self.config, self.options(phase), 0, [], None))

    def search(self, budget: str, seed: int, sequential: bool = True) -> dict:
        fp32, phase = self.fp32(), self.s['search']
        name = f'search_{budget}_{"seq" if sequential else "noseq"}_s{seed}'
        return self.cache.get(name, self._settings(phase=phase, fp32=fp32['checkpoint'], budget=budget, seed=seed,
                                                   sequential=sequential), lambda d: search_run(
            d, self.config, self.options(phase), seed, budget, sequential, fp32['checkpoint']))

    def retrain(self, what: str, budget: str, seed: int, sequential: bool = True) -> dict:
        """``what``: ``'uniform'`` (``--uniform budget``) or ``'ssps'`` (the searched policy)."""
        fp32, phase = self.fp32(), self.s['retrain']
        if what == 'uniform':
            name, mode = f'retrain_uniform_{budget}_s{seed}', ['--uniform', budget]
        else:
            from ssps_nni.policy import load_policy

            policy = self.search(budget, seed, sequential)['policy']
            if is_uniform(load_policy(policy), budget):
                # e.g. the W2A2 budget with 2 bits the lowest candidate: the search had no choice
                return dict(self.retrain('uniform', budget, seed), same_as_uniform=True)
            name = f'retrain_ssps_{budget}_{"seq" if sequential else "noseq"}_s{seed}'
            mode = ['--policy', policy]
        return self.cache.get(name, self._settings(phase=phase, fp32=fp32['checkpoint'], mode=mode, seed=seed),
                              lambda d: train_run(d, self.config, self.options(phase), seed, mode,
                                                  fp32['checkpoint']))


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'n': len(values)}


def quality(exp: Experiments) -> dict:
    """Section 3: SSPS at the BitOPs of uniform WxAx against uniform WxAx, both retrained."""
    fp32 = exp.fp32()
    rows = []
    for budget in exp.s['budgets']:
        for what in ('uniform', 'ssps'):
            runs = [exp.retrain(what, budget, seed) for seed in exp.s['seeds']]
            searches = [exp.search(budget, seed) for seed in exp.s['seeds']] if what == 'ssps' else []
            rows.append({
                'budget': budget, 'method': what, 'top1': _spread([r['top1'] for r in runs]),
                'top1_runs': [r['top1'] for r in runs], 'bitops': _spread([r['bitops'] for r in runs]),
                'search_cost_ratio': _spread([s['cost_ratio'] for s in searches]) if searches else None,
                'same_as_uniform': [bool(r.get('same_as_uniform')) for r in runs] if what == 'ssps' else None,
            })
    return {'fp32': fp32, 'rows': rows}


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
        q = results['quality']
        lines += header('Quality at equal BitOPs (real CIFAR-10, ResNet-20)', 'quality') + [
                  f'FP32 start: top-1 {q["fp32"]["top1"]:.2f} %, {q["fp32"]["bitops"] / 1e9:.2f} GBitOPs. '
                  f'Mean ± std over seeds {seeds("quality")} (runs in brackets).', '',
                  '| budget | policy | top-1 % | runs | GBitOPs | search cost / target |', '|---|---|---|---|---|---|']
        for r in q['rows']:
            runs = ', '.join(f'{v:.1f}' for v in r['top1_runs'] if v is not None)
            bitops = _pm({k: (v / 1e9 if isinstance(v, float) else v) for k, v in r['bitops'].items()}, '{:.4f}')
            what = 'uniform'
            if r['method'] == 'ssps':
                what = 'SSPS (found the uniform policy)' if all(r.get('same_as_uniform') or [False]) else 'SSPS'
            lines.append(f'| {r["budget"]} | {what} | {_pm(r["top1"])} | '
                         f'[{runs}] | {bitops} | {_pm(r["search_cost_ratio"], "{:.3f}")} |')
        lines.append('')
    return '\n'.join(lines)


# -- command line --------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sections', nargs='*', metavar='SECTION',
                        help=f'any of {", ".join(SECTIONS)} (default: all)')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--quick', action='store_true', help='reduced settings for 2 CPU cores (documented)')
    size.add_argument('--smoke', action='store_true', help='smallest setting: checks the benchmark runs')
    parser.add_argument('--out', help='output folder (default: work_dirs/benchmark_<mode>)')
    parser.add_argument('--seeds', help='comma-separated seeds of the searches and retrainings')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda if available')
    parser.add_argument('--data-root', help='CIFAR-10 folder with train/ and test/ (full mode; '
                                            'default ../shared/data/cifar10)')
    return parser.parse_args(argv)


def resolve(args) -> tuple[str, dict, list[str], str, str | None]:
    import torch

    bad = [s for s in args.sections if s not in SECTIONS and s != 'all']
    if bad:
        raise InputError(f'unknown section {bad[0]!r}; accepted: {", ".join(SECTIONS)} or all')
    sections = [s for s in SECTIONS if not args.sections or 'all' in args.sections or s in args.sections]
    mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
    settings = copy.deepcopy(MODES[mode])
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
    data_root = None
    if mode == 'full' and set(sections) & {'sequential', 'quality'}:
        from ssps_nni.data import shared_data_root
        shared = shared_data_root()
        data_root = args.data_root or (str(shared / 'cifar10') if shared else None)
        if not data_root or not (Path(data_root) / 'train').is_dir() or not (Path(data_root) / 'test').is_dir():
            raise InputError(f'full mode trains on the full CIFAR-10 as JPEG folders: --data-root {data_root!r} '
                             'has no train/ and test/ folders. Give --data-root PATH (as ../shared/data/cifar10), '
                             'or use --quick (the shipped subset)')
        data_root = str(Path(data_root).resolve())
    elif args.data_root:
        raise InputError('--data-root is used only by the sequential and quality sections in full mode; '
                         '--quick and --smoke use the shipped CIFAR-10 subset, step-cost uses no data root')
    return mode, settings, sections, device, data_root


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        mode, settings, sections, device, data_root = resolve(args)
    except InputError as err:
        print(f'benchmark.py: error: {err}', file=sys.stderr)
        return 2
    from ssps_nni.policy import atomic_write

    out = Path(args.out or ROOT / 'work_dirs' / f'benchmark_{mode}').resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / '.write-test'
        probe.write_text('')
        probe.unlink()
    except OSError as err:
        print(f'benchmark.py: error: --out {str(out)!r} is not a writable folder ({err.strerror}); '
              'give a folder that exists or can be created', file=sys.stderr)
        return 2
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
    command = 'python tools/benchmark.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
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
                save(name, run(exp), time.perf_counter() - start)
    text = markdown(results)
    print('\n' + text)
    print(f'results: {out / "results.json"}, {out / "results.md"} ({time.perf_counter() - started:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
