"""An unreachable budget refused before the runner, and fast from the second time on.

Whether a budget can be met depends on the model's layer profile: the MACs and parameter counts
of every converted layer on the training data, and which layers are searched or pinned
(docs/algorithm.md §4). ``SSPSHook.before_train`` measures it on its calibration samples and
refuses an unreachable budget (``ssps_nni.decider.check_reachable``), but only after the runner
is built, minutes into a large job. ``ssps search`` measures the same profile first, with the
model built by the registries alone and the hook's own calibration samples (same seed, same
count), and refuses with the same check and message.

Building any OpenMMLab model imports mmpretrain/mmdet/torchvision, which takes longer than the
rest of the check together (about 5-10 s on 2 CPU cores), so the profile is kept in a cache
file keyed by everything it depends on: the resolved ``model``, ``data_preprocessor`` and train
dataset configs, the hook's layer-selection and calibration options, the versions of torch and
the OpenMMLab packages, the source of ``ssps_nni`` and the data files' sizes and times. A cached
profile is read with torch alone; the budget, candidates and cost options are applied to it on
every call, so one profile serves every budget.

Cache folder: ``$SSPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ssps-nni``, else ``~/.cache/ssps-nni``
(``profiles/<key>.json``; delete it to measure again). A cache that cannot be written is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from ..errors import SSPSError
from .common import InputError, dataset_paths
from .hook_config import build_hook, hook_options, invalid_option, search_config, search_total_steps

#: Hook options that decide which layers are searched or pinned, and on which samples they are profiled.
PROFILE_OPTIONS = ('include', 'exclude', 'pinned', 'pinned_bits', 'calib_batches', 'calib_batch_size', 'seed')
PACKAGES = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmpretrain', 'mmdet')
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where profiles are kept (see the module docstring)."""
    if os.environ.get('SSPS_CACHE_DIR'):
        return Path(os.environ['SSPS_CACHE_DIR'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'ssps-nni'


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _source_hash() -> str:
    """sha1 of the package's Python source (an editable install keeps its version while its code changes)."""
    digest = hashlib.sha1()
    for path in sorted(PACKAGE_DIR.rglob('*.py')):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _plain(value):
    """ConfigDicts as plain dicts, for a stable JSON key."""
    return value.to_dict() if hasattr(value, 'to_dict') else value


def profile_key(cfg, options: dict) -> str:
    """The cache key of the layer profile of ``cfg``'s model with the hook ``options``."""
    loader = cfg.get('train_dataloader', None) or {}
    data = []
    for _, path in dataset_paths(_plain(loader.get('dataset'))):
        try:
            stat = os.stat(path)
            data.append((path, stat.st_size, stat.st_mtime_ns))
        except OSError:
            data.append((path, None, None))
    parts = {
        'model': _plain(cfg.get('model', None)), 'data_preprocessor': _plain(cfg.get('data_preprocessor', None)),
        'default_scope': cfg.get('default_scope', None),
        'train_dataloader': {k: _plain(loader.get(k)) for k in ('dataset', 'batch_size', 'collate_fn')},
        'options': {k: options.get(k) for k in PROFILE_OPTIONS}, 'data': data,
        'packages': {name: _version(name) for name in PACKAGES}, 'source': _source_hash(),
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def read_profile(key: str) -> dict | None:
    """The cached profile record of ``key``, or None (missing or unreadable)."""
    try:
        record = json.loads((cache_dir() / 'profiles' / f'{key}.json').read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get('key') == key else None


def write_profile(record: dict) -> None:
    """Keep ``record`` in the cache (atomically); a cache that cannot be written is skipped."""
    folder = cache_dir() / 'profiles'
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f'.{record["key"]}.{os.getpid()}.tmp'
        tmp.write_text(json.dumps(record) + '\n')
        os.replace(tmp, folder / f'{record["key"]}.json')
    except OSError:
        pass


def measure_profile(cfg, hook, key: str) -> dict:
    """Profile ``cfg``'s model as ``SSPSHook.before_train`` does, without a runner.

    The model is built through the registries (no weights loaded: they do not change MACs),
    converted with the hook's options, and run in float on the hook's calibration samples
    (``calibration_loader`` with the hook's count, batch size and seed) in the config's scope.

    Returns:
        ``{'key', 'profiles': {layer: LayerProfile fields}, 'searched': [...], 'pinned':
        {layer: [w, a]}, 'samples': int}``.
    """
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from ssps_nni.errors import BudgetError
    from ssps_nni.calibration_data import calibration_loader, forward_fn, preserved_rng
    from ssps_nni.mmengine.qat import build_model_from_cfg
    from ssps_nni.search import SSPSSearch

    loader_cfg = dict(cfg.train_dataloader, num_workers=0, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', None)), preserved_rng():
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        model = build_model_from_cfg(cfg)
        search = SSPSSearch(model, hook.search_config(search_total_steps(hook)))
        run, num_samples = forward_fn(model, calibration_loader(loader, hook.calib_batches, hook.calib_batch_size,
                                                                seed=search.config.seed))
        try:
            search.prepare(run, num_samples, calibrate=False)
        except BudgetError:
            pass  # the profile is measured; check() gives the verdict for any budget
    space = search.space
    return {'key': key, 'profiles': {n: asdict(p) for n, p in search.profiles.items()},
            'searched': list(space.searched), 'pinned': {n: list(b) for n, b in space.pinned.items()},
            'samples': num_samples}


def record_profile(record: dict) -> tuple[dict, list, dict]:
    """``(profiles, searched, pinned)`` of a profile record (:func:`measure_profile`): ``LayerProfile``
    objects, the searched layer names, ``{layer: (w_bits, a_bits)}`` of the pinned ones."""
    from ssps_nni.cost import LayerProfile

    profiles = {n: LayerProfile(**p) for n, p in record['profiles'].items()}
    return profiles, list(record['searched']), {n: tuple(b) for n, b in record['pinned'].items()}


def record_constraints(record: dict, config):
    """The search's costs, targets and constraints (:func:`ssps_nni.constraints.build_constraints`,
    which ``SSPSSearch.build_constraints`` calls too) on a profile record (:func:`measure_profile`).

    Args:
        config: the typed :class:`~ssps_nni.search_config.SearchConfig` of the run
            (:func:`~ssps_nni.cli.hook_config.search_config`): its parsed budgets, checked
            candidates and cost options; nothing is parsed again.

    Raises:
        UnknownCostError, LutMissingError, LutError: a cost model that cannot be built or priced.
    """
    from ssps_nni.constraints import build_constraints

    profiles, searched, pinned = record_profile(record)
    return build_constraints(config, profiles, searched, pinned, config.candidates, config.activation_candidates)


def check(record: dict, config) -> list[str]:
    """The hook's budget check (``ssps_nni.decider.check_reachable``) on a profile record.

    Args:
        record, config: as :func:`record_constraints`.

    Returns:
        A note per budget at or above its all-maximum policy's cost: it constrains nothing.

    Raises:
        InputError: a budget below the cheapest policy (the core's message).
        SSPSError: as :func:`record_constraints`.
    """
    import torch

    from ssps_nni.decider import check_reachable
    from ssps_nni.errors import BudgetError

    built = record_constraints(record, config)
    searched = record['searched']
    masks_w = torch.ones(len(searched), len(built.constraints[0].cost.candidates['w']), dtype=torch.bool)
    masks_a = torch.ones(len(searched), len(built.constraints[0].cost.candidates['a']), dtype=torch.bool)
    try:
        check_reachable(built.constraints, masks_w, masks_a)
    except BudgetError as err:
        raise InputError(str(err)) from None
    notes = []
    for budget in config.budgets:
        cost, target = built.costs[budget.cost], built.targets[budget.cost]
        top = cost.references().get('max')
        if top is not None and target >= top:
            fmt = cost.model.format
            notes.append(f'budget {budget.spec} (target {fmt(target)}) is at or above the cost of the largest '
                         f'candidates everywhere ({fmt(top)}): it constrains nothing')
    return notes


def cached_profile(cfg, config) -> dict:
    """The layer-profile record of ``cfg`` (:func:`measure_profile`): from the cache, or measured
    with the hook of the typed ``config`` and cached."""
    key = profile_key(cfg, hook_options(cfg))
    record = read_profile(key)
    if record is None:
        record = measure_profile(cfg, build_hook(cfg, config), key)
        write_profile(record)
    return record


def check_budget_reachable(cfg, config=None, warn=None) -> None:
    """Refuse an unreachable budget before the runner, with the hook's own check (docs/algorithm.md §4).

    The layer profile comes from the cache (torch only), or is measured as
    ``SSPSHook.before_train`` measures it (the model built by the registries, the hook's
    calibration samples, no runner) and cached.

    Args:
        config: the config's :func:`~ssps_nni.cli.hook_config.search_config` (built here when
            None); its parsed budgets are the ones checked.
        warn: ``warn(text)`` for a budget that constrains nothing (:func:`check`); None: silent.

    Raises:
        InputError: a budget below the cheapest policy (with the reachable range), or an SSPS
            option the core refuses.
    """
    if config is None:
        config = search_config(cfg)
    record = cached_profile(cfg, config)
    try:
        notes = check(record, config)
    except (SSPSError, ValueError, TypeError) as err:
        raise invalid_option(err) from err
    for note in notes if warn is not None else ():
        warn(note)


def main(argv=None) -> int:
    """``python -m ssps_nni.cli.cost_check [CONFIG] [ssps search options]``: store CONFIG's layer profile.

    ``tools/setup_env.sh`` runs it on the default config, so that the first refusal of an
    unreachable budget there is served from the cache. Takes the options of ``ssps search``
    (``--candidates``, ``--cfg-options`` ...); trains nothing and creates no work dir.

    Returns:
        0 stored (or already cached), 2 bad input (one error line).
    """
    from .common import fail
    from .search_args import build_config, check_args, parse_args

    prog = 'python -m ssps_nni.cli.cost_check'
    args = parse_args(argv, prog)
    try:
        check_args(args)
        check_budget_reachable(build_config(args))
    except InputError as err:
        return fail(prog, err)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
