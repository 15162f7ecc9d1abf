"""``ssps benchmark``'s command line: options, their checks (exit status 2), and the sections run in order.

Results of earlier calls in the same mode are kept; each finished section (and every finished
run of the quality section) rewrites ``OUT/results.json`` and ``OUT/results.md`` atomically.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

from ..common import REPO as ROOT
from ..common import InputError, fail
from .budgets import shipped_fp32
from .common import DEFAULT_SECTIONS, MIDPOINT, MMENGINE_SECTIONS, MODES, SECTIONS, STANDARD_FP32, environment
from .experiments import Experiments
from .quality import quality
from .report import markdown
from .sequential import sequential
from .step_cost import NETWORKS, step_cost
from .time_to_model import time_to_model

PROG = 'ssps benchmark'


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The options of ``ssps benchmark`` (argparse exits with status 2 on malformed ones)."""
    doc = importlib.import_module(__package__).__doc__  # the package's: its first line describes the command
    parser = argparse.ArgumentParser(prog=prog, description=doc.split('\n', 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sections', nargs='*', metavar='SECTION',
                        help=f'any of {", ".join(SECTIONS)}, or all (default: {", ".join(DEFAULT_SECTIONS)})')
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
    """``(mode, settings, sections, device, data_root)`` of ``args``; raises ``InputError`` on bad input."""
    import torch

    bad = [s for s in args.sections if s not in SECTIONS and s != 'all']
    if bad:
        raise InputError(f'unknown section {bad[0]!r}; accepted: {", ".join(SECTIONS)} or all')
    sections = [s for s in SECTIONS if (not args.sections and s in DEFAULT_SECTIONS) or 'all' in args.sections
                or s in args.sections]
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
    mmengine_sections = set(sections) & set(MMENGINE_SECTIONS)
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
        raise InputError('--data-root is used only by the sequential, quality and time-to-model sections in full '
                         'and standard modes; --quick and --smoke use the shipped CIFAR-10 subset, step-cost uses no '
                         'data root')
    return mode, settings, sections, device, data_root


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps benchmark``; returns the exit status (0 done, 2 bad input)."""
    args = parse_args(argv, prog)
    try:
        mode, settings, sections, device, data_root = resolve(args)
    except InputError as err:
        return fail(prog, err)
    from ssps_nni.files import atomic_write

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
    if set(sections) & set(MMENGINE_SECTIONS):
        os.chdir(ROOT)  # the configs' relative paths (data/, mmdet_configs/)
        exp = Experiments(settings, out, data_root, log)
        for name, run in (('quality', quality), ('sequential', sequential), ('time-to-model', time_to_model)):
            if name in sections:  # seconds of this call's runs (reused runs cost nothing)
                start = time.perf_counter()
                if name in ('quality', 'time-to-model'):  # partial results after every finished run
                    value = run(exp, lambda partial, t=start: save(name, partial, time.perf_counter() - t))
                else:
                    value = run(exp)
                save(name, value, time.perf_counter() - start)
    text = markdown(results)
    print('\n' + text)
    print(f'results: {out / "results.json"}, {out / "results.md"} ({time.perf_counter() - started:.0f} s)')
    return 0
