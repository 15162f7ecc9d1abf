"""Items (b)-(e) of ``tools/gpu_check.sh``: each a subprocess with its own timeout and log.

    python tools/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR] [--work DIR] [--deadline S]

(normally started by ``tools/gpu_check.sh`` after the offline install). Items, in order:

``data``         unpack ``.gpu/cifar10.tar.gz`` (full CIFAR-10 JPEG folders) into the work dir
``tests``        the device half of the device-parametrised core tests (``-k <device>``: the fused
                 quantizer against the CPU composite, score taps, cell, sampler, a search step
                 under autocast)
``quant_speed``  fused against composite fake quantization, forward + backward (tools/quant_speed.py)
``step_cost``    ``ssps benchmark step-cost`` on the device (FP32, W4A4 QAT, search at 2/4/6
                 candidates; no NNI DARTS rows: NNI does not travel)
``budget``       the 2.5-bit BitOPs budget (midway between uniform W2A2 and W3A3), as ``ssps
                 benchmark --standard`` computes it
``search_bf16``  SSPS search of ResNet-20 on the full CIFAR-10 from the shipped FP32 checkpoint,
                 1 epoch, ``--amp bf16`` (mmengine's AmpOptimWrapper; CUDA only)
``search_fp32``  the same search in fp32 (``--amp none``)
``sensitivity``  ``ssps search --method sensitivity`` at the same budget
``qat_ssps``, ``qat_sensitivity``  1 epoch of QAT of each policy (``ssps train --policy``), with
                 the 10k test top-1

The whole check keeps to ``--deadline`` seconds: an item's timeout is cut to what is left, and
items that no longer fit are skipped. One summary line per item at the end; ``summary.json``,
``summary.txt`` and ``artifacts.tar.gz`` (logs, policies, results; no checkpoints) go to ``--out``.
Standard library only: every item runs in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER_CONFIG = 'mmdet_configs/cifar10_resnet20_ssps_folder.py'
SUBSET_CONFIG = 'mmdet_configs/cifar10_resnet20_ssps_subset.py'
#: item -> timeout in seconds (full run on the GPU, --quick run on 2 CPU cores)
TIMEOUTS = {'data': (60, 60), 'tests': (90, 240), 'quant_speed': (40, 120), 'step_cost': (90, 240), 'budget': (60, 120),
            'search_bf16': (100, 300), 'search_fp32': (100, 300), 'sensitivity': (60, 240),
            'qat_ssps': (75, 240), 'qat_sensitivity': (75, 240)}
MIN_SLOT = 15  # seconds: an item with less than this left is skipped


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    p.add_argument('--device', choices=('cuda', 'cpu'))
    p.add_argument('--quick', action='store_true', help='tiny lengths on the shipped subset (CPU dry run)')
    p.add_argument('--out', help='default: $OUT, else work_dirs/gpu_check')
    p.add_argument('--work', default=os.path.join(os.environ.get('TMPDIR', '/tmp'), 'ssps_gpu_check'))
    p.add_argument('--deadline', type=float,
                   help='seconds for the whole check (default 450; 900 with --quick)')
    p.add_argument('--install-json', help='result line of the install step (tools/gpu_check.sh)')
    p.add_argument('--workers', type=int, help='dataloader workers (default: 8 on cuda, 1 on cpu)')
    p.add_argument('--limit-per-class', type=int, metavar='N',
                   help='full-data path, but only the first N train and N // 5 test images per class '
                        '(CIFAR10Folder limit_per_class; 4 sensitivity batches): checks that path on a CPU')
    return p.parse_args(argv)


class Check:
    """Runs the items in order and keeps their results."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.logs = self.work / 'logs'
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.results: list[dict] = []
        self.state: dict = {}
        self.device = args.device or self.probe_device()
        self.quick = args.quick
        self.workers = args.workers if args.workers is not None else (8 if self.device == 'cuda' else 1)

    @staticmethod
    def probe_device() -> str:
        code = 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")'
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
        return out.stdout.strip() or 'cpu'

    # -- running ------------------------------------------------------------------------------

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.started)

    def run(self, name: str, cmd: list[str], env: dict | None = None) -> tuple[int | None, str]:
        """Run ``cmd`` in its own process group with the item's timeout; ``(rc or None on timeout, log)``."""
        limit = min(TIMEOUTS[name][1 if self.quick else 0], self.left())
        log_path = self.logs / f'{name}.log'
        with open(log_path, 'w') as log:
            log.write('$ ' + ' '.join(cmd) + '\n')
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ, **(env or {})))
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                rc = None
        text = log_path.read_text(errors='replace')
        if rc is None:
            text += f'\n[gpu_check] timeout after {limit:.0f} s\n'
        return rc, text

    def item(self, name: str, fn) -> None:
        """Run item ``name`` (``fn() -> (status, detail, numbers)``), unless the deadline is past."""
        start = time.monotonic()
        if self.left() < MIN_SLOT:
            status, detail, numbers = 'SKIP', f'deadline: {self.left():.0f} s left of {self.args.deadline:.0f}', {}
        else:
            try:
                status, detail, numbers = fn()
            except Exception as err:  # noqa: BLE001  (an item's own failure must not stop the others)
                status, detail, numbers = 'FAIL', f'{type(err).__name__}: {err}', {}
        res = {'item': name, 'status': status, 'seconds': round(time.monotonic() - start, 1), 'detail': detail,
               'numbers': numbers}
        self.results.append(res)
        print(f'[gpu_check {time.monotonic() - self.started:6.0f} s] {line(res)}', flush=True)

    def command(self, name: str, cmd: list[str], **kw) -> tuple[str, str, str]:
        """``(status, detail, log)`` of a command item: PASS on exit 0, else FAIL with the log's last line."""
        rc, text = self.run(name, cmd, **kw)
        if rc == 0:
            return 'PASS', '', text
        tail = [l for l in text.strip().splitlines() if l.strip()][-3:]
        why = 'timeout' if rc is None else f'exit {rc}'
        return 'FAIL', f'{why}: ' + ' | '.join(t.strip()[:300] for t in tail), text

    # -- items --------------------------------------------------------------------------------

    def data(self):
        if self.quick:
            return 'SKIP', 'quick: the shipped CIFAR-10 subset', {}
        target = self.work / 'data'
        root = target / 'cifar10'
        if not (root / 'test').is_dir():
            pack = ROOT / '.gpu' / 'cifar10.tar.gz'
            if not pack.is_file():
                return 'FAIL', f'{pack} is missing (tools/gpu_wheels.sh makes it)', {}
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            with tarfile.open(pack) as tar:
                tar.extractall(target, filter='data')
        counts = {s: sum(1 for _ in (root / s).rglob('*.jpg')) for s in ('train', 'test')}
        self.state['data_root'] = str(root)
        ok = counts['train'] == 50000 and counts['test'] == 10000
        return ('PASS' if ok else 'FAIL'), f'{root}', counts

    def tests(self):
        files = ['tests/core/test_quant.py', 'tests/core/test_device.py']
        status, detail, text = self.command('tests', [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                                                      *files, '-k', self.device])
        found = re.findall(r'(\d+) (passed|failed|skipped|deselected|error)', text)
        numbers = {k: int(v) for v, k in found}
        if status == 'PASS' and not numbers.get('passed'):
            return 'FAIL', 'no test ran', numbers
        return status, detail, numbers

    def quant_speed(self):
        cmd = [sys.executable, 'tools/quant_speed.py', '--device', self.device, '--repeat', '5' if self.quick else '30']
        status, detail, text = self.command('quant_speed', cmd)
        match = re.search(r'^QUANT_SPEED=(.*)$', text, re.M)
        numbers = {}
        if match:
            for name, row in json.loads(match.group(1)).items():
                if isinstance(row, dict):
                    numbers[name] = f'fused {row["fused_ms"]} ms / composite {row["composite_ms"]} ms = ' \
                                    f'{row["ratio"]}, same values {row["same_values"]}'
        return status, detail, numbers

    def step_cost(self):
        out = self.work / 'step_cost'
        cmd = [sys.executable, '-m', 'ssps_nni.cli.main', 'benchmark', 'step-cost', '--device', self.device,
               '--no-darts', '--out', str(out)]
        cmd += ['--smoke'] if self.quick else ['--networks', 'resnet20,resnet18']
        status, detail, _ = self.command('step_cost', cmd)
        numbers = {}
        results = out / 'results.json'
        if results.is_file():
            for r in json.loads(results.read_text()).get('step-cost', []):
                key = f'{r["network"]}/{r["method"]}' + (f'/n{r["candidates"]}' if r.get('candidates') else '')
                numbers[key] = {'ms': round(1000 * r['step_s'], 2), 'x_qat': round(r['time_ratio'], 3),
                                'MiB': round(r['memory_mib'], 1)}
        return status, detail, numbers

    def budget(self):
        config = SUBSET_CONFIG if self.quick else FOLDER_CONFIG
        code = ('import json, sys; from ssps_nni.cli.benchmark.budgets import budget_table; '
                f't = budget_table({config!r}, ["2.5-bit"]); print("BUDGET=" + json.dumps(t["2.5-bit"]))')
        status, detail, text = self.command('budget', [sys.executable, '-c', code])
        match = re.search(r'^BUDGET=(.*)$', text, re.M)
        if status != 'PASS' or not match:
            return 'FAIL', detail or 'no budget printed', {}
        table = json.loads(match.group(1))
        self.state['budget'] = table['arg']
        return 'PASS', table['arg'], {'target_bitops': table['target'], 'uniform': table['uniform']}

    def options(self, epochs: int = 1, lr: float = 0.01) -> list[str]:
        """``--cfg-options`` of every training run: 1 epoch at lr 0.01 (as ``--standard``), data, workers."""
        opts = [f'optim_wrapper.optimizer.lr={lr}', f'train_cfg.max_epochs={epochs}',
                f'train_cfg.val_interval={epochs + 1}', f'param_scheduler.T_max={epochs}',
                'default_hooks.checkpoint.max_keep_ckpts=1', 'default_hooks.logger.interval=50']
        splits = ('train_dataloader', 'val_dataloader', 'test_dataloader')
        persistent = 'True' if self.workers > 0 else 'False'
        opts += [f'{s}.num_workers={self.workers}' for s in splits]
        opts += [f'{s}.persistent_workers={persistent}' for s in splits]
        if self.quick:  # 250 training images (every 20th), 200 test images
            opts += ['train_dataloader.batch_size=32', 'default_hooks.logger.interval=2',
                     'train_dataloader.dataset.indices=[' + ','.join(map(str, range(0, 5000, 20))) + ']']
            opts += [f'{s}.dataset.indices=[' + ','.join(map(str, range(0, 1000, 5))) + ']' for s in splits[1:]]
        else:
            opts += [f'{s}.dataset.data_root={self.state["data_root"]}' for s in splits]
            limit = self.args.limit_per_class
            if limit:
                opts += [f'train_dataloader.dataset.limit_per_class={limit}']
                opts += [f'{s}.dataset.limit_per_class={max(limit // 5, 1)}' for s in splits[1:]]
        return opts

    def config(self) -> str:
        return SUBSET_CONFIG if self.quick else FOLDER_CONFIG

    def search(self, amp: str):
        name = f'search_{amp}'
        if amp != 'fp32' and self.device != 'cuda':
            return 'SKIP', f'--amp {amp} needs CUDA (mmengine AmpOptimWrapper)', {}
        if 'budget' not in self.state or (not self.quick and 'data_root' not in self.state):
            return 'SKIP', 'no budget or no data (an earlier item failed)', {}
        work = self.work / name
        cmd = [sys.executable, '-m', 'ssps_nni.cli.main', 'search', self.config(), '--work-dir', str(work),
               '--seed', '0', '--budget', self.state['budget'], '--device', self.device,
               '--amp', 'none' if amp == 'fp32' else amp, '--cfg-options', *self.options()]
        status, detail, text = self.command(name, cmd)
        numbers = policy_numbers(work / 'policy.json')
        numbers.update(iter_time(text))
        if status == 'PASS':
            self.state.setdefault('ssps_policy', str(work / 'policy.json'))
            if amp == 'fp32':
                self.state['ssps_policy'] = str(work / 'policy.json')
        return status, detail, numbers

    def sensitivity(self):
        if 'budget' not in self.state or (not self.quick and 'data_root' not in self.state):
            return 'SKIP', 'no budget or no data (an earlier item failed)', {}
        work = self.work / 'sensitivity'
        cmd = [sys.executable, '-m', 'ssps_nni.cli.main', 'search', self.config(), '--work-dir', str(work),
               '--seed', '0', '--budget', self.state['budget'], '--method', 'sensitivity', '--device', self.device,
               '--sensitivity-batches', '4' if self.quick or self.args.limit_per_class else '128', '--cfg-options', *self.options()]
        status, detail, _ = self.command('sensitivity', cmd)
        if status == 'PASS':
            self.state['sensitivity_policy'] = str(work / 'policy.json')
        return status, detail, policy_numbers(work / 'policy.json')

    def qat(self, which: str):
        name = f'qat_{which}'
        policy = self.state.get(f'{which}_policy')
        if policy is None:
            return 'SKIP', f'no {which} policy (an earlier item failed)', {}
        work = self.work / name
        cmd = [sys.executable, '-m', 'ssps_nni.cli.main', 'train', self.config(), '--policy', policy,
               '--work-dir', str(work), '--seed', '0', '--device', self.device, '--amp', 'none',
               '--cfg-options', *self.options()]
        status, detail, text = self.command(name, cmd)
        numbers = {'policy': policy}
        result = work / 'train_result.json'
        if result.is_file():
            res = json.loads(result.read_text())
            numbers.update(top1=res['metrics'].get('accuracy/top1'), bitops=res['bitops']['value'])
        numbers.update(iter_time(text))
        return status, detail, numbers


def policy_numbers(path: Path) -> dict:
    """Cost / target, the searched bits and whether the policy is final, from a ``policy.json``."""
    if not path.is_file():
        return {}
    policy = json.loads(path.read_text())
    meta = policy.get('meta', policy)
    totals = (meta.get('totals') or {}).get('bitops') or {}
    out = {'final': meta.get('final')}
    if totals.get('target'):
        out['bitops'] = totals['policy']
        out['cost_ratio'] = round(totals['policy'] / totals['target'], 4)
    layers = policy.get('layers') or {}
    searched = [e for e in layers.values() if isinstance(e, dict) and not e.get('pinned')]
    if searched:
        out['mean_w'] = round(sum(e.get('w', e.get('w_bits', 0)) for e in searched) / len(searched), 3)
        out['mean_a'] = round(sum(e.get('a', e.get('a_bits', 0)) for e in searched) / len(searched), 3)
    return out


def iter_time(log: str) -> dict:
    """The median ``time:`` of mmengine's training log lines (seconds per iteration), and the last epoch/iter."""
    times = [float(t) for t in re.findall(r'Epoch\(train\).*?\stime: ([0-9.]+)', log)]
    if not times:
        return {}
    times.sort()
    return {'iter_s': times[len(times) // 2], 'logged_iters': len(times)}


def line(res: dict) -> str:
    """The one summary line of an item."""
    nums = res.get('numbers') or {}
    shown = ', '.join(f'{k}={v}' for k, v in nums.items() if not isinstance(v, (dict, list)))
    nested = [f'{k}: {v["ms"]} ms x{v["x_qat"]} {v["MiB"]} MiB' for k, v in nums.items()
              if isinstance(v, dict) and 'ms' in v]
    parts = [p for p in (shown, '; '.join(nested), res.get('detail')) if p]
    return f'{res["item"]:<16} {res["status"]:<4} {res["seconds"]:6.1f} s  ' + ' | '.join(parts)


def environment() -> dict:
    code = ('import json, platform, torch; d = torch.cuda.is_available(); print(json.dumps({"python": '
            'platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, '
            '"gpu": torch.cuda.get_device_name(0) if d else None, "cpus": __import__("os").cpu_count()}))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {'error': out.stderr[-500:]}


def write_out(check: Check, out: Path, env: dict) -> None:
    """summary.json, summary.txt and artifacts.tar.gz (logs and results, no checkpoints or data)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {'device': check.device, 'quick': check.quick, 'environment': env, 'state': check.state,
               'total_s': round(time.monotonic() - check.started, 1), 'items': check.results}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    lines = [f'gpu_check on {env.get("gpu") or "cpu"} (torch {env.get("torch")}, python {env.get("python")}), '
             f'device {check.device}{", quick" if check.quick else ""}: {summary["total_s"]:.0f} s']
    lines += [line(r) for r in check.results]
    (out / 'summary.txt').write_text('\n'.join(lines) + '\n')
    keep = ('.log', '.json', '.md', '.py', '.png', '.txt')
    with tarfile.open(out / 'artifacts.tar.gz', 'w:gz') as tar:
        for path in sorted(check.work.rglob('*')):
            rel = path.relative_to(check.work)
            if path.is_file() and path.suffix in keep and rel.parts[0] not in ('data', 'cache', 'mpl'):
                tar.add(path, arcname=str(rel))
    print('\n'.join(['', *lines, f'written: {out}/summary.json, summary.txt, artifacts.tar.gz']), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.deadline is None:
        args.deadline = 900.0 if args.quick else 450.0
    check = Check(args)
    if args.install_json and Path(args.install_json).is_file():
        check.results.append(dict(json.loads(Path(args.install_json).read_text()), numbers={}))
    env = environment()
    print(f'[gpu_check] device {check.device}, quick {check.quick}, deadline {args.deadline:.0f} s, '
          f'work {check.work}: {env}', flush=True)
    check.item('data', check.data)
    check.item('tests', check.tests)
    check.item('quant_speed', check.quant_speed)
    check.item('step_cost', check.step_cost)
    check.item('budget', check.budget)
    check.item('search_bf16', lambda: check.search('bf16'))
    check.item('search_fp32', lambda: check.search('fp32'))
    check.item('sensitivity', check.sensitivity)
    check.item('qat_ssps', lambda: check.qat('ssps'))
    check.item('qat_sensitivity', lambda: check.qat('sensitivity'))
    out = Path(args.out or os.environ.get('OUT') or ROOT / 'work_dirs' / 'gpu_check')
    write_out(check, out, env)
    return 0 if all(r['status'] in ('PASS', 'SKIP') for r in check.results) else 1


if __name__ == '__main__':
    sys.exit(main())
