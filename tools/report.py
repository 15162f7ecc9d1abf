"""Compare searched policies: Markdown + CSV tables of bits and costs, and bits figures (docs/algorithm.md §8).

Example::

    python tools/report.py work_dirs/a/policy.json work_dirs/b/policy.json --out work_dirs/report \
        --results work_dirs/qat/train_result.json work_dirs/qat_w4a4/train_result.json

Writes ``report.md``, ``layers.csv``, ``comparison.csv`` and ``<policy>_bits.png`` into ``--out``
(labels are the policy file stems, or the ``--labels`` given); with ``--results`` (the
``train_result.json`` of ``tools/train.py`` runs, labelled by their folder) also ``results.csv`` and
a table of accuracy (or mAP), BitOPs and size next to FP32. Exit status 2 with one ``error:``
line when a policy cannot be read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssps_nni.errors import SSPSError  # noqa: E402


def _read_results(paths) -> dict:
    """``{folder name: train_result.json dict}``; raises ``SSPSError`` for an unreadable file."""
    import json

    from ssps_nni.report import unique_labels

    out = {}
    for label, path in zip(unique_labels([Path(p).parent for p in paths]), paths):
        try:
            out[label] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise SSPSError(f"cannot read train result {path}: {err}") from None
        if not isinstance(out[label], dict):
            raise SSPSError(f"train result {path} is not a JSON object of tools/train.py")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("policies", nargs="+", help="policy.json files")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--labels", nargs="+", default=None, help="column labels, one per policy")
    ap.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    ap.add_argument("--results", nargs="+", default=None, metavar="TRAIN_RESULT_JSON",
                    help="train_result.json files written by tools/train.py")
    args = ap.parse_args(argv)

    from ssps_nni.policy import load_policy
    from ssps_nni.report import unique_labels, write_report

    try:
        if args.labels is not None and len(args.labels) != len(args.policies):
            raise SSPSError(f"--labels has {len(args.labels)} names for {len(args.policies)} policies")
        labels = args.labels or unique_labels(args.policies)
        if len(set(labels)) != len(labels):
            raise SSPSError(f"--labels must be unique, got {labels}")
        policies = {label: load_policy(p) for label, p in zip(labels, args.policies)}
        results = _read_results(args.results or [])
        paths = write_report(policies, args.out, figures=not args.no_figures, results=results)
    except (SSPSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
