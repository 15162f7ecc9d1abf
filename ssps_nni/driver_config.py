"""The :class:`~ssps_nni.search_config.SearchConfig` a driver runs with, built once per process.

A driver (the mmengine hook, the NNI strategy) is given either a ``SearchConfig`` (``config=``)
or its fields as plain options; :func:`config_or_options` is the one rule for both. Plain options
become a config in :func:`driver_config`, the one place where a driver's budget text is parsed.

``ssps search`` builds the config of the run before the runner exists (to refuse bad input
early), but mmengine's ``Runner`` builds its hooks from the config *dict*, which it deep-copies
and dumps as Python text into the work dir, so no Python object can travel in it. The command
line therefore :func:`shares <shared>` its config for the length of the run, under the canonical
form of the hook's options (:func:`options_key`); the hook the runner builds from the same
options finds it there and parses nothing. Only the standard library and the core are imported
(no mmengine), so the command line reads :data:`HOOK_OPTIONS` without loading the training stack.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator, Mapping

from .convert import DEFAULT_CANDIDATES
from .errors import SSPSError
from .search_config import DEFAULT_BUDGET, PLACEHOLDER_STEPS, SearchConfig

__all__ = ['HOOK_OPTIONS', 'SCHEDULE_OPTIONS', 'config_or_options', 'driver_config', 'hook_fields',
           'options_key', 'shared']

#: The search length options, in optimizer steps or as a fraction of ``total_steps`` (§6).
SCHEDULE_OPTIONS = ('total_steps', 'warmup_steps', 'interval')
#: ``SSPSHook``'s own keyword arguments (no :class:`SearchConfig` field, or read in runner terms).
HOOK_OPTIONS = (*SCHEDULE_OPTIONS, 'calib_batches', 'calib_batch_size', 'stop_when_done', 'plot_interval_s')
#: The hook's defaults of the options that :func:`options_key` reads.
DEFAULTS = dict(budget=DEFAULT_BUDGET, candidates=DEFAULT_CANDIDATES, total_steps=None, warmup_steps=0, interval=1)


class ConfigTypeError(SSPSError, TypeError):
    """``config=`` is no :class:`SearchConfig` (a ``TypeError`` too, as the hook raised before)."""


def hook_fields(options: Mapping) -> tuple[dict, tuple]:
    """The hook's keyword arguments split into ``SearchConfig`` fields and its schedule.

    Returns:
        ``(fields, (total_steps, warmup_steps, interval))``: every option that is no
        :data:`HOOK_OPTIONS` entry, with the hook's default ``budget`` and ``candidates`` filled
        in, and the schedule with the hook's defaults.
    """
    fields = {k: v for k, v in options.items() if k not in HOOK_OPTIONS and k not in ('type', 'priority')}
    fields = dict(fields, budget=fields.get('budget', DEFAULTS['budget']),
                  candidates=fields.get('candidates', DEFAULTS['candidates']))
    return fields, tuple(options.get(k, DEFAULTS[k]) for k in SCHEDULE_OPTIONS)


def _canonical(value):
    """Mappings as sorted plain dicts, sequences as lists (a ConfigDict and a dict, a tuple and a list alike)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def options_key(options: Mapping) -> str:
    """The canonical text of the hook's options (:func:`hook_fields`): equal options, equal key."""
    fields, schedule = hook_fields(options)
    return json.dumps(_canonical(dict(fields, schedule=list(schedule))), sort_keys=True, default=repr)


#: ``{options_key: SearchConfig}``: configs shared by :func:`shared` while their run lasts.
SHARED: dict[str, SearchConfig] = {}


@contextmanager
def shared(config: SearchConfig, options: Mapping) -> Iterator[SearchConfig]:
    """Within the block, :func:`driver_config` of ``options`` returns ``config`` (built from them).

    Args:
        config: the config :func:`driver_config` built from ``options``.
        options: the hook's keyword arguments (as in the mmengine config's ``SSPSHook`` entry).
    """
    key = options_key(options)
    earlier = SHARED.get(key)
    SHARED[key] = config
    try:
        yield config
    finally:
        if earlier is None:
            SHARED.pop(key, None)
        else:
            SHARED[key] = earlier


def driver_config(options: Mapping) -> SearchConfig:
    """The config of the hook's keyword arguments ``options``: the one :func:`shared` for them, or
    built here, the one place a driver's options are parsed (:meth:`SearchConfig.from_options`:
    budget text, candidates and every other field checked; the schedule as in
    :meth:`SearchConfig.with_schedule`, :data:`PLACEHOLDER_STEPS` while ``total_steps`` is None).

    Raises:
        as :class:`SearchConfig`; ValueError for an unknown option.
    """
    found = SHARED.get(options_key(options)) if SHARED else None
    if found is not None:
        return found
    fields, (total, warmup, interval) = hook_fields(options)
    SearchConfig.check_keys(fields, also=HOOK_OPTIONS)  # the message names the hook's own options too
    return SearchConfig.from_options(fields, total, warmup, interval)  # the budget is parsed here


def config_or_options(who: str, config: SearchConfig | None, options: Mapping, given: list,
                      total_steps: int | None = None, warmup_steps: int | float = 0,
                      interval: int | float = 1, own: tuple = HOOK_OPTIONS) -> SearchConfig:
    """A driver's config: ``config`` with this schedule, or :func:`driver_config` of ``options``.

    Args:
        who: the driver, for the messages (``'SSPSHook'``, ``'SSPS'``).
        config: a :class:`SearchConfig`, or None to build one from ``options``.
        options: the ``SearchConfig`` fields the driver was given (its defaults filled in).
        given: the names of the fields given explicitly besides ``config`` (refused with it).
        own: the driver's own options, named with the accepted ones in an unknown-option message.
        total_steps, warmup_steps, interval: the schedule (:meth:`SearchConfig.with_schedule`);
            ``total_steps`` None: :data:`PLACEHOLDER_STEPS` until the driver knows the length.

    Raises:
        ConfigTypeError: ``config`` is no ``SearchConfig``. SSPSError: ``config`` and options
        together. ValueError: an unknown option, or a bad value (as :class:`SearchConfig`).
    """
    schedule = dict(total_steps=total_steps, warmup_steps=warmup_steps, interval=interval)
    if config is None:
        SearchConfig.check_keys(options, also=own)  # driver_config would drop a hook option given as a field
        return driver_config(dict(options, **schedule))
    if not isinstance(config, SearchConfig):
        raise ConfigTypeError(f'{who} config must be a SearchConfig, got {type(config).__name__}; '
                              'in a config file give its fields as keyword arguments instead')
    SearchConfig.check_keys({k: None for k in given}, also=own)
    if given:
        raise SSPSError(f'{who} takes config= or SearchConfig options, not both (got config= and {list(given)})')
    return config.with_schedule(PLACEHOLDER_STEPS if total_steps is None else total_steps, warmup_steps, interval)
