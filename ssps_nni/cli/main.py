"""``ssps``: the one console command, with a subcommand per job.

    ssps search [CONFIG] [--budget ...]     # find a policy (SSPS, sensitivity or random)
    ssps train [CONFIG] --policy P.json     # retrain it (QAT), or --uniform WxAy, or FP32
    ssps export --policy P.json ...         # ONNX with QuantizeLinear/DequantizeLinear
    ssps report P.json [...] --out DIR      # tables and figures of several policies
    ssps sensitivity [CONFIG] [--checkpoint] # per-layer sensitivity, predicted vs measured
    ssps benchmark [SECTION ...]            # the benchmarks of docs/benchmarks.md
    ssps sweep [CONFIG] [--budgets ...]     # the accuracy-vs-budget frontier against the uniform line

Each subcommand is a module of ``ssps_nni.cli`` with a ``main(argv, prog)``, imported only when
it is run, so ``ssps --help`` and ``ssps COMMAND --help`` load neither torch nor mmengine.
``tools/<command>.py`` calls the same ``main``, for the OpenMMLab habit
``python tools/train.py CONFIG``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module of ssps_nni.cli, one-line help)
COMMANDS = {
    'search': ('search', 'search a mixed-precision policy on an mmengine config (SSPS, sensitivity or random)'),
    'train': ('train', 'retrain a policy with quantization-aware training (or a uniform WxAy, or FP32), then test'),
    'export': ('export', 'export a policy and its checkpoint to ONNX (QuantizeLinear/DequantizeLinear)'),
    'report': ('report', 'compare policies: Markdown and CSV tables of bits and costs, figures'),
    'sensitivity': ('sensitivity', 'per-layer sensitivity: predicted against measured loss increase per candidate'),
    'benchmark': ('benchmark', 'step cost, sequential determination and quality benchmarks (docs/benchmarks.md)'),
    'sweep': ('sweep', 'the accuracy-vs-budget frontier: policies at many budgets against the uniform line'),
}


def main(argv=None) -> int:
    """Dispatch ``ssps COMMAND ARGS...`` to ``ssps_nni.cli.COMMAND.main``; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog='ssps', description='SSPS mixed-precision quantization policy search (ssps-nni). '
                                 'Run "ssps COMMAND --help" for the options of a command.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name, (_, text) in COMMANDS.items():
        # the subcommand parses its own options (and its own --help)
        commands.add_parser(name, help=text, description=text, add_help=False)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(f'ssps_nni.cli.{COMMANDS[args.command][0]}')
    return module.main(rest, prog=f'ssps {args.command}')


if __name__ == '__main__':
    sys.exit(main())
