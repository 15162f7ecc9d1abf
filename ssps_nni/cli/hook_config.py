"""The config's ``SSPSHook`` entry, and the typed search config built from it once.

Shared by ``ssps search`` (all methods), ``ssps sensitivity``, the early reachability check
(:mod:`ssps_nni.cli.cost_check`) and ``ssps sweep``. The typed
:class:`~ssps_nni.search_config.SearchConfig` is built by :func:`search_config` with the core's
:func:`ssps_nni.driver_config.driver_config`, the function the hook itself calls, so the budget
is parsed and the candidates checked with the core's one rule and messages (docs/algorithm.md
§1, §4). Wrap the run in :func:`ssps_nni.driver_config.shared` with that config, and the hook
the runner builds from the same options takes it instead of parsing again.
"""
from __future__ import annotations

from ..errors import SSPSError
from .common import InputError

SSPS_TYPES = ('SSPSHook', 'ssps_nni.mmengine.SSPSHook')


def ssps_hook_cfg(cfg) -> dict:
    """The config's ``SSPSHook`` entry, appended with defaults when there is none."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    for hook in hooks:
        if hook.get('type') in SSPS_TYPES:
            cfg.custom_hooks = hooks
            return hook
    hooks.append(dict(type='SSPSHook'))
    cfg.custom_hooks = hooks
    return hooks[-1]


def hook_options(cfg) -> dict:
    """The keyword arguments of the config's ``SSPSHook``."""
    return {k: v for k, v in ssps_hook_cfg(cfg).items() if k not in ('type', 'priority')}


def invalid_option(err: BaseException) -> InputError:
    """``invalid SSPS option: `` and the core's message; the core's error is kept as the cause
    (its type chooses the hint, :func:`ssps_nni.cli.search_result.explained`)."""
    wrapped = InputError(f'invalid SSPS option: {err}')
    wrapped.__cause__ = err
    return wrapped


def import_custom(cfg) -> None:
    """Import the config's ``custom_imports`` (``ssps_nni.mmengine`` among them), as ``Config.fromfile`` would."""
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports', None):
        import_modules_from_strings(**cfg.custom_imports)


def search_config(cfg):
    """The typed :class:`~ssps_nni.search_config.SearchConfig` of the config's ``SSPSHook``.

    Built as the hook builds it (:func:`ssps_nni.driver_config.driver_config` of the same
    options): this is where a command's ``--budget`` is parsed. Imports torch (the core), not the
    training stack.

    Raises:
        InputError: ``invalid SSPS option: `` and the core's message (malformed budget, unknown
            cost, bad candidates, unknown option, ...).
    """
    from ssps_nni.driver_config import driver_config

    try:
        return driver_config(hook_options(cfg))
    except (SSPSError, ValueError, TypeError) as err:
        raise invalid_option(err) from err


def build_hook(cfg, config=None):
    """The ``SSPSHook`` of the config, constructed (its options are checked at construction).

    Args:
        config: the config's :func:`search_config`, already built: the hook takes it as is
            (``SSPSHook(config=...)``, nothing parsed again) with its own options; None: the hook
            builds it from the config's options (or takes the one shared for them).

    Raises:
        InputError: an option the hook refuses (the core's message).
    """
    from ssps_nni.driver_config import HOOK_OPTIONS

    import_custom(cfg)
    from ssps_nni.mmengine import SSPSHook  # also when the config does not import it

    options = hook_options(cfg)
    if config is not None:
        options = {k: v for k, v in options.items() if k in HOOK_OPTIONS}
    try:
        return SSPSHook(config=config, **options)
    except (SSPSError, ValueError, TypeError) as err:
        raise invalid_option(err) from err


def search_total_steps(hook) -> int:
    """A search length the hook's warm-up fits in (one-shot methods and the profile take no search step)."""
    warmup = hook.warmup_steps
    return int(warmup) + 1 if isinstance(warmup, int) and not isinstance(warmup, bool) else 1
