"""``ssps report``: policies side by side, Markdown + CSV tables of bits and costs, figures (docs/algorithm.md §8).

Example::

    ssps report work_dirs/a/policy.json work_dirs/b/policy.json --out work_dirs/report \\
        --results work_dirs/qat/train_result.json work_dirs/qat_w4a4/train_result.json

Writes ``report.md``, ``layers.csv``, ``comparison.csv`` and ``<policy>_bits.png`` into ``--out``
(labels are the policy file stems, or the ``--labels`` given); with ``--results`` (the
``train_result.json`` of ``ssps train`` runs, labelled by their folder) also ``results.csv`` and
a table of accuracy (or mAP), BitOPs and size next to FP32. Exit status 2 with one
``ssps report: error:`` line when a policy cannot be read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SSPSError
from .common import MIN_FREE_FILES, InputError, check_output_dir, fail

PROG = 'ssps report'


def read_results(paths) -> dict:
    """``{folder name: train_result.json dict}``.

    Raises:
        InputError: a file is unreadable, not JSON or not a JSON object.
    """
    from ssps_nni.report import unique_labels

    out = {}
    for label, path in zip(unique_labels([Path(p).parent for p in paths]), paths):
        try:
            out[label] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read train result {path}: {err}") from None
        if not isinstance(out[label], dict):
            raise InputError(f"train result {path} is not a JSON object of ssps train")
    return out


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The command line; argparse exits with status 2 on a malformed one."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("policies", nargs="+", help="policy.json files")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--labels", nargs="+", default=None, help="column labels, one per policy")
    ap.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    ap.add_argument("--results", nargs="+", default=None, metavar="TRAIN_RESULT_JSON",
                    help="train_result.json files written by ssps train")
    return ap.parse_args(argv)


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps report``; returns the exit status (0 done, 2 bad input)."""
    args = parse_args(argv, prog)
    try:
        if args.labels is not None and len(args.labels) != len(args.policies):
            raise InputError(f"--labels has {len(args.labels)} names for {len(args.policies)} policies")
        check_output_dir(args.out, '--out', MIN_FREE_FILES)
        from ssps_nni.policy import load_policy
        from ssps_nni.report import unique_labels, write_report

        labels = args.labels or unique_labels(args.policies)
        if len(set(labels)) != len(labels):
            raise InputError(f"--labels must be unique, got {labels}")
        policies = {label: load_policy(p) for label, p in zip(labels, args.policies)}
        results = read_results(args.results or [])
        paths = write_report(policies, args.out, figures=not args.no_figures, results=results)
    except (InputError, SSPSError, ValueError) as err:
        return fail(prog, err)
    for path in paths.values():
        print(f"wrote {path}")
    return 0
