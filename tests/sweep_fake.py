"""``ssps sweep`` with its runs faked: ``python tests/sweep_fake.py [ssps sweep options]``.

The sweep's own machinery is real (options, plan, run cache, scheduler, workers, signals,
frontier); only the run functions of ``ssps_nni.cli.sweep.jobs.RUNS`` are replaced, in this
process and in every worker (``--jobs N``), so a sweep takes seconds:

- ``train``: the result of an evaluated model (``accuracy/top1``, ``accuracy/top5``, BitOPs and
  size growing with the uniform bits), nothing trained;
- ``find``: a uniform W2A4 policy of the config's model (a retraining of it reuses the uniform run).

With ``SWEEP_FAKE_HANG=PREFIX[,PREFIX...]`` a run whose name starts with one hangs instead, as ``ssps train``
before its first step: inside ``ssps_nni.cli.stop.GracefulStop`` and mmengine's config formatting,
after writing ``hanging`` into its folder. A signal then ends it in whatever exception mmengine
makes of the ``KeyboardInterrupt`` (a ``SyntaxError`` from its yapf formatting).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _hang_here(folder: Path) -> bool:
    prefixes = [p for p in os.environ.get('SWEEP_FAKE_HANG', '').split(',') if p]
    if not any(folder.name.startswith(p) for p in prefixes):
        return False
    from mmengine.config import Config

    from ssps_nni.cli.stop import GracefulStop

    cfg = Config(dict(layers=[dict(type='Conv', index=i, shape=[i, i + 1]) for i in range(100)]))
    with GracefulStop('ssps train'):
        (folder / 'hanging').write_text(str(os.getpid()))
        while True:  # nearly all the time in yapf, under mmengine's bare except
            cfg.pretty_text


def fake_train(folder: Path, config: str, options: list, seed: int, mode: list, load_from=None, extra=()) -> dict:
    _hang_here(folder)
    w, a = (int(mode[1][1]), int(mode[1][3])) if mode[:1] == ['--uniform'] else (32, 32)
    top1 = 50.0 + w + a / 10 + seed
    return {'top1': top1, 'bitops': w * a * 1e6, 'size': w * 1e5, 'checkpoint': None,
            'metrics': {'accuracy/top1': top1, 'accuracy/top5': top1 + 20}, 'qat_policy': None}


def fake_find(folder: Path, config: str, options: list, seed: int, budget_arg: str, method: str, load_from: str,
              extra=()) -> dict:
    _hang_here(folder)
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401  (registries)
    from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg

    policy = QuantPolicyHook(uniform='W2A4').resolve(build_model_from_cfg(Config.fromfile(config)))
    path = folder / 'policy.json'
    path.write_text(json.dumps(policy.to_dict()))
    return {'policy': str(path), 'cost_ratio': 1.0, 'search_s': 0.0}


def fake_execute(out, name, settings, run, kwargs):
    """``jobs.execute`` with the fake run functions (pickled by reference into the workers)."""
    from ssps_nni.cli.sweep import jobs

    jobs.RUNS.update(train=fake_train, find=fake_find)
    return jobs.execute(out, name, settings, run, kwargs)


if __name__ == '__main__':
    from ssps_nni.cli.sweep import command, scheduler

    scheduler.execute = fake_execute
    sys.exit(command.main(sys.argv[1:]))
