"""Fused against composite fake quantization on one device: forward + backward time per call.

    python tools/quant_speed.py [--device cuda|cpu] [--repeat N]

Times ``quantize_activation`` (4 bits, a ResNet-20 activation of a batch of 128:
``(128, 16, 32, 32)``) and ``quantize_weight`` (4 bits, a ResNet-18 3x3 conv weight
``(512, 512, 3, 3)``), each forward + backward, on the fused path (``LSQFakeQuantize``) and on
the composite (``quant.FUSED = False``), in turns in one process (CUDA synchronised around every
call); prints one JSON line with the medians and the ratio fused / composite. It also checks that
the two paths give the same values. Used by tools/gpu_check.sh.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ssps_nni.quant as quant
from ssps_nni.quant import quantize_activation, quantize_weight


def timed(fn, device: str) -> float:
    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeat', type=int, default=30)
    args = parser.parse_args(argv)
    device = args.device
    gen = torch.Generator().manual_seed(0)
    cases = {
        'activation_128x16x32x32': (torch.randn(128, 16, 32, 32, generator=gen).abs(), torch.tensor(0.07),
                                    lambda v, s: quantize_activation(v, s, 4, False)),
        'weight_512x512x3x3': (torch.randn(512, 512, 3, 3, generator=gen) * 0.05, torch.full((512,), 0.01),
                               lambda v, s: quantize_weight(v, s, 4)),
    }
    out = {'device': device, 'repeat': args.repeat}
    for name, (v0, s0, fn) in cases.items():
        v = v0.to(device).requires_grad_()
        s = s0.to(device).requires_grad_()
        g = torch.randn(v0.shape, generator=gen).to(device)
        values = {}

        def call(fused: bool):
            quant.FUSED = fused
            y = fn(v, s)
            y.backward(g)
            values[fused] = y.detach()

        times = {True: [], False: []}
        for k in range(args.repeat + 3):  # 3 warm-up calls each
            for fused in ((True, False) if k % 2 == 0 else (False, True)):
                t = timed(lambda: call(fused), device)
                if k >= 3:
                    times[fused].append(t)
        quant.FUSED = True
        fused_ms, comp_ms = (1000 * statistics.median(times[f]) for f in (True, False))
        out[name] = {'fused_ms': round(fused_ms, 4), 'composite_ms': round(comp_ms, 4),
                     'ratio': round(fused_ms / comp_ms, 3), 'same_values': bool(torch.equal(values[True], values[False]))}
    print('QUANT_SPEED=' + json.dumps(out))
    return 0 if all(out[n]['same_values'] for n in cases) else 1


if __name__ == '__main__':
    raise SystemExit(main())
