"""Section ``step-cost`` of ``ssps benchmark``: time per training step and peak memory.

(a) FP32 training, (b) fixed W4A4 QAT, (c0)/(c) the SSPS search (the core ``SSPSSearch``
loop both drivers run; sampled signal only, then the full signal) and (d) NNI's ``DARTS``
supernet over a multi-path space (a ``LayerChoice`` of fixed-bit layers per searched layer,
built from the NNI driver's public :func:`ssps_nni.nni.fixed_op`). Every config of a network is
timed in turns in one process; ratios are to (b).
"""
from __future__ import annotations

import statistics
import time

from .common import CANDIDATE_SETS, MIB

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

    Candidate ``b`` is a fixed-bit layer (:func:`ssps_nni.nni.fixed_op`: ``FixedQuantConv2d``/``Linear``
    from the NNI driver, weights copied from the float layer), so each path has its own weights, as ``LayerChoice``
    candidates do. Pinned layers (stem, classifier) are fixed W8A8 layers.
    """
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace

    from ssps_nni.convert import DEFAULT_PINNED_BITS, select_layers
    from ssps_nni.nni import fixed_op as fixed

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
