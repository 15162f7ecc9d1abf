"""The costs a sweep plans with, from the config's layer profile (no run needed).

The profile is ``ssps search``'s own (``ssps_nni.cli.cost_check``: the model built by the
registries, the hook's calibration samples, cached per config), so the budgets checked here are
the ones the searches will check.
"""
from __future__ import annotations

import functools


def space_costs(record: dict, config) -> dict:
    """``{cost name: SpaceCost}`` for every cost a sweep can price (``budgets.SWEEP_COSTS``)."""
    from ssps_nni.cost import SpaceCost, build_cost_model

    from ..cost_check import record_profile
    from .budgets import SWEEP_COSTS

    profiles, searched, pinned = record_profile(record)
    return {name: SpaceCost(build_cost_model(name), profiles, searched, pinned, config.candidates,
                            config.activation_candidates) for name in SWEEP_COSTS}


def test_size(cfg) -> int | None:
    """Samples of the config's test (else val) dataset, built once through the registries; None if unknown.

    A training dataset held in cached arrays (``ssps_nni.mmengine.datasets.ArrayCIFAR10``) is built
    too, so that its cache is filled once here rather than by several parallel runs at once.
    """
    from mmengine.registry import DATASETS, DefaultScope
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)
    from ssps_nni.mmengine.datasets import ArrayCIFAR10

    size = None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', None)):
        for split in ('train_dataloader', 'test_dataloader'):
            loader = cfg.get(split, None) or (cfg.get('val_dataloader', None) if split == 'test_dataloader' else None)
            if not isinstance(loader, dict) or 'dataset' not in loader:
                continue
            try:
                if split == 'train_dataloader':
                    kind = DATASETS.get(loader['dataset'].get('type'))
                    if isinstance(kind, type) and issubclass(kind, ArrayCIFAR10):
                        len(DATASETS.build(dict(loader['dataset'], pipeline=[])))
                else:
                    size = len(DATASETS.build(dict(loader['dataset'], pipeline=[])))
            except Exception:  # noqa: BLE001  (only a number in the report; the runs report real errors)
                pass
    return size


def profile_costs(cfg, config) -> tuple[dict, int | None]:
    """``(space costs, test samples)`` of ``cfg`` with its typed search ``config``.

    Raises:
        InputError: an SSPS option the core refuses (from the profile check).
    """
    from ..cost_check import cached_profile

    return space_costs(cached_profile(cfg, config), config), test_size(cfg)


def pricer(costs: dict):
    """``priced(policy_path) -> {cost: value}``: a trained policy's bits priced in every cost model.

    Each path is read and priced once: the frontier is rebuilt after every run, and a finished
    run's ``qat_policy.json`` does not change during a sweep."""
    from ssps_nni.policy import load_policy

    @functools.lru_cache(maxsize=None)
    def price(path: str) -> dict:
        bits = load_policy(path).bits()
        out = {}
        for name, cost in costs.items():
            try:
                out[name] = cost.of_bits({n: b for n, b in bits.items() if n in cost.profiles})
            except Exception:  # noqa: BLE001  (a layer the profile does not price)
                out[name] = None
        return out

    def priced(path: str) -> dict:
        return dict(price(str(path)))

    return priced
