"""``ssps train --policy``: continue from the search that found the policy, not from FP32.

A policy that an SSPS search wrote into its work dir (``WORK_DIR/policy.json``) is retrained
from that search's last checkpoint by default (``WORK_DIR/last_checkpoint``, the checkpoint of
the step that made the policy final): the search's weights, and the step sizes it trained for
the chosen bit-widths (``QuantPolicyHook`` takes each layer's row from the supernet's
per-candidate step sizes and calibrates only the layers it finds none for). ``--load-from``, or
``load_from`` in ``--cfg-options``, overrides it (for example the FP32 checkpoint, to retrain
every method from the same start). Only the standard library is imported here.
"""
from __future__ import annotations

from pathlib import Path

from .common import InputError

POLICY_JSON = 'policy.json'


def policy_file(path: str) -> str:
    """``--policy`` as a file: a search's work dir stands for its ``policy.json``.

    Raises:
        InputError: a folder without ``policy.json``.
    """
    if Path(path).is_dir():
        found = Path(path) / POLICY_JSON
        if not found.is_file():
            raise InputError(f'--policy {path} is a folder without {POLICY_JSON}: give the policy.json written by '
                             'ssps search, or the work dir of a finished search')
        return str(found)
    return path


def search_checkpoint(policy_path: str) -> str | None:
    """The checkpoint to continue from: the last one of the SSPS search whose work dir holds ``policy_path``.

    Returns:
        The path that ``last_checkpoint`` next to the policy names, when the policy is a
        search's (``"method": "ssps"`` or none) and that checkpoint is a whole file; else None
        (for example the one-shot methods, which train nothing and save no checkpoint).
    """
    import json

    from .resume import resume_problem

    folder = Path(policy_path).parent
    pointer = folder / 'last_checkpoint'
    try:
        method = json.loads(Path(policy_path).read_text()).get('method', 'ssps')
        named = pointer.read_text().strip() if pointer.is_file() else ''
    except (OSError, ValueError, AttributeError):
        return None
    if method != 'ssps' or not named:
        return None
    path = Path(named)
    if not path.is_file() and (folder / path.name).is_file():
        path = folder / path.name  # the work dir was moved
    return str(path) if path.is_file() and resume_problem(path) is None else None


def continue_from_search(cfg, args) -> str | None:
    """Set ``cfg.load_from`` to the search's checkpoint when nothing else was asked for; returns it.

    Only with ``--policy`` and neither ``--load-from`` nor ``load_from`` in ``--cfg-options``.
    """
    if args.policy is None or args.load_from is not None or 'load_from' in (args.cfg_options or {}):
        return None
    start = search_checkpoint(args.policy)
    if start is not None:
        cfg.load_from = start
    return start
