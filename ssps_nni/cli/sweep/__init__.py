"""``ssps sweep``: the accuracy-vs-budget frontier, every mixed point judged against the uniform line.

    ssps sweep --retrain-epochs 0             # a first look in minutes: shipped subset, post-training
    ssps sweep --standard --jobs 8            # the standard frontier (full CIFAR-10; GPU)
    ssps sweep [CONFIG] [--budgets 2.5b,3b,4b,size=2.5b] [--budget-range min:W4A4:5]
        [--methods ssps,sensitivity,random] [--seeds N] [--retrain-epochs E] [--search-epochs E]
        [--jobs N] [--work-dir DIR] [--data-root PATH] [--load-from PTH] [--cfg-options K=V ...]

For every budget and method a policy (``ssps``: one SSPS search per budget; ``sensitivity``:
the scores measured once, solved per budget; ``random``: a random policy within the budget),
the uniform points (every WxAy of the candidates whose cost lies in the swept range, plus the
two that bracket it) and W8A8, each retrained with the config's trainer (``ssps train``) at
seeds 0..N-1, paired: every policy at seed r sees the same data order and quantizer
calibration samples. Each is evaluated with the config's evaluator (top-1, bbox mAP, ...).

Budgets: ``2.5b`` = every searched layer at 2.5 bits per operand (for ``size=``: bits per
weight, activations free), ``W4A4``, or absolute (``1.2G``, ``size=0.05MB``); a budget outside
the reachable range, an empty list or an unknown method is refused before any run (exit 2).

Outputs in the work dir: ``frontier.json`` (every point: costs, metric per seed, mean, paired
differences to the uniform line and between methods with their SE), ``frontier.md`` (a
verdict per mixed point: above / below the uniform line or inside the noise, i.e. within two
paired SEs), ``frontier.png``, ``sensitivity.png``. Every run is cached in ``runs/<name>``:
the same command again reuses them and a killed sweep resumes. Exit status: 0 done, 1 some
runs failed (the others are kept), 2 bad input, 130 / 143 stopped by Ctrl-C (SIGINT) / SIGTERM: the
run(s) under way are cancelled, the finished ones kept, and the same command resumes.

Layout: ``command`` (options, checks), ``budgets`` (budget text, uniform points), ``profile``
(costs from the layer profile), ``plan`` (the runs and their dependencies), ``jobs`` (one run,
in a worker or here), ``scheduler`` (parallel runs, ETA), ``stats`` (uniform line, paired SE),
``frontier`` / ``report`` / ``plots`` (the outputs), ``signals`` (Ctrl-C, SIGTERM), ``run`` (the whole sweep).
"""
from __future__ import annotations


def main(argv=None, prog: str = 'ssps sweep') -> int:
    from .command import main as command_main

    return command_main(argv, prog)


__all__ = ['main']
