"""One owner of validation: the typed ``SearchConfig`` (docs/algorithm.md §1, §4).

A budget string is parsed exactly once on every path that constructs a hook or a strategy
(the hook from plain options or from a ``SearchConfig``, the hook's ``before_run``, the NNI
strategy and its evaluator step, the command line's ``validate()``), and the same bad
candidates get the same error type and message from the command line, the hook and the NNI
strategy's space.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

import ssps_nni.cost as cost_module
from ssps_nni.errors import CandidateError
from ssps_nni.search import SSPSSearch
from ssps_nni.search_config import SearchConfig

pytest.importorskip('mmengine')

from ssps_nni.mmengine import SSPSHook  # noqa: E402


@pytest.fixture
def parse_count(monkeypatch):
    """Counts calls of the core's budget-text parser (``ssps_nni.cost.parse_budget``)."""
    calls = []
    original = cost_module.parse_budget

    def counting(text):
        calls.append(text)
        return original(text)

    monkeypatch.setattr(cost_module, 'parse_budget', counting)
    return calls


def small_model() -> nn.Module:
    """Three convs (the middle one searched; first conv and last linear pinned) and a linear head."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def fake_runner(model: nn.Module):
    """What ``SSPSHook.before_run`` reads of a runner, outside training (no optimizer)."""
    return SimpleNamespace(model=model, optim_wrapper=dict(), param_schedulers=None, cfg={},
                           logger=SimpleNamespace(info=lambda *a, **k: None))


@pytest.mark.parametrize('make', [
    lambda: SSPSHook(budget='bitops=W4A4,size=1MB', candidates=(2, 4, 8), total_steps=20, warmup_steps=0.25),
    lambda: SSPSHook(config=SearchConfig(budget='bitops=W4A4,size=1MB', candidates=(2, 4, 8)), total_steps=20,
                     warmup_steps=0.25),
], ids=['plain options', 'typed config'])
def test_hook_parses_the_budget_once(parse_count, make):
    hook = make()
    assert parse_count == ['bitops=W4A4', 'size=1MB']  # one parse per budget, at construction
    hook.before_run(fake_runner(small_model()))  # the Runner's route: config -> SSPSSearch
    assert parse_count == ['bitops=W4A4', 'size=1MB']
    config = hook.search.config
    assert (config.total_steps, config.warmup_steps, config.interval) == (20, 5, 1)
    assert [b.spec for b in config.budgets] == ['bitops=W4A4', 'size=1MB']
    assert config.budget_spec == 'bitops=W4A4,size=1MB'
    SSPSSearch(small_model(), hook.search_config(40))  # a later length: still no parse
    assert len(parse_count) == 2


def test_mmengine_dict_config_builds_the_hook(parse_count):
    from mmengine.registry import HOOKS

    hook = HOOKS.build(dict(type='SSPSHook', budget='bitops=W4A4', candidates=[4, 2, 8]))
    assert hook.config.candidates == (2, 4, 8) and parse_count == ['bitops=W4A4']


def test_hook_refuses_config_and_options_together():
    with pytest.raises(ValueError, match='not both'):
        SSPSHook(config=SearchConfig(), budget='size=1MB')
    with pytest.raises(ValueError, match=r"unknown SSPS option\(s\) \['budgte'\]"):
        SSPSHook(config=SearchConfig(), budgte='size=1MB')


def test_cli_validate_parses_the_budget_once(parse_count, search_tool, tiny_config, tmp_path):
    args = search_tool.parse_args([str(tiny_config), '--work-dir', str(tmp_path), '--budget', 'bitops=W3A3'])
    search_tool.check_args(args)
    cfg = search_tool.build_config(args)
    config = search_tool.validate(cfg)
    assert parse_count == ['bitops=W3A3']
    assert isinstance(config, SearchConfig) and config.candidates == (2, 4, 8)  # the tiny config's
    assert config.warmup_steps == 2


def test_one_list_of_hook_options():
    """The hook and the command line read one ``HOOK_OPTIONS``: ``ssps_nni.driver_config``'s."""
    import inspect

    from ssps_nni.cli import search
    from ssps_nni.driver_config import HOOK_OPTIONS
    from ssps_nni.mmengine.hook import HOOK_OPTIONS as HOOK_MODULE_OPTIONS

    assert HOOK_MODULE_OPTIONS is HOOK_OPTIONS and not hasattr(search, 'HOOK_OPTIONS')
    own = [p for p in inspect.signature(SSPSHook).parameters if p not in ('budget', 'candidates', 'config', 'options')]
    assert tuple(own) == HOOK_OPTIONS


def test_strategy_parses_the_budget_once(parse_count):
    pytest.importorskip('nni')
    from ssps_nni.nni import SSPS

    for strategy in (SSPS('bitops=W4A4', total=2), SSPS(SearchConfig(budget='bitops=W4A4'), total=2)):
        trainer = SimpleNamespace(limit_train_batches=1.0, max_steps=-1, max_epochs=3)
        config = strategy._search_config(trainer, loader=[0, 1, 2, 3])
        assert (config.total_steps, config.budgets[0].spec) == (8, 'bitops=W4A4')
    assert parse_count == ['bitops=W4A4', 'bitops=W4A4']  # once per strategy


def test_strategy_and_hook_share_the_config_or_options_rule():
    """One rule (``ssps_nni.driver_config.config_or_options``): a config or options, not both; a
    config of another type; options that are no field (a hook option among them)."""
    pytest.importorskip('nni')
    from ssps_nni.errors import SSPSError
    from ssps_nni.nni import SSPS

    for make in (lambda **k: SSPS(**k), lambda **k: SSPSHook(**k)):
        with pytest.raises(SSPSError, match=r"or SearchConfig options, not both \(got config= and \['lam'\]"):
            make(config=SearchConfig(), lam=2.0)
        with pytest.raises(TypeError, match='config must be a SearchConfig, got dict'):
            make(config=dict(budget='size=1MB'))
    with pytest.raises(SSPSError, match=r"not both \(got config= and \['budget'\]"):
        SSPS('size=1MB', config=SearchConfig())
    with pytest.raises(ValueError, match=r"unknown SSPS option\(s\) \['calib_batches'\]"):
        SSPS(calib_batches=2)


def test_unknown_option_messages_name_the_drivers_own_options():
    """The accepted list of a misspelt option names the driver's own keyword arguments too."""
    from ssps_nni.cli.hook_config import search_config
    from ssps_nni.nni import SSPS

    with pytest.raises(ValueError, match=r"\['budgte'\]; accepted: .*calib_batches.*plot_interval_s"):
        SSPSHook(budgte='size=1MB')
    with pytest.raises(ValueError, match=r"\['nope'\]; accepted: .*log_every_n_steps"):
        SSPS(nope=1)
    cfg = SimpleNamespace(get=lambda key, default=None: [dict(type='SSPSHook', warmup_stepz=3)]
                          if key == 'custom_hooks' else default)
    with pytest.raises(Exception, match=r"\['warmup_stepz'\]; accepted: .*calib_batch_size"):
        search_config(cfg)


def test_strategy_refuses_layer_fields_in_a_config():
    pytest.importorskip('nni')
    from ssps_nni.errors import SSPSError
    from ssps_nni.nni import SSPS

    with pytest.raises(SSPSError, match=r"\['candidates'\] are set by the space"):
        SSPS(SearchConfig(candidates=(2, 4)))


@pytest.mark.parametrize('bad', [(1, 4), (2, 40), (), (2, 4.5)], ids=['1', '40', 'empty', 'float'])
def test_one_candidate_rule(bad, search_tool, tiny_config, tmp_path, capsys):
    with pytest.raises(CandidateError) as core:
        SearchConfig(candidates=bad)
    message = str(core.value)
    assert 'weight candidate' in message and '2..32' in message
    with pytest.raises(CandidateError) as hook:  # the hook, as the runner builds it
        SSPSHook(candidates=bad)
    assert str(hook.value) == message
    if bad and all(isinstance(b, int) for b in bad):
        text = ','.join(map(str, bad))
        code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), '--candidates', text])
        assert code == 2
        assert capsys.readouterr().err.strip() == f'ssps search: error: invalid SSPS option: {message}'
    nni_space = pytest.importorskip('ssps_nni.nni')
    with pytest.raises(CandidateError) as space:  # the NNI strategy's candidates come from the space
        nni_space.quantization_space(small_model(), candidates=bad)
    assert str(space.value) == message


@pytest.mark.parametrize('method', ['ssps', 'random'])
def test_one_search_parses_the_budget_once(method, parse_count, search_tool, tiny_config, tmp_path, capsys):
    """``ssps search`` parses ``--budget`` once per process: the runner's hook (or the one-shot
    method's) takes the command line's typed config from ``ssps_nni.driver_config``."""
    code = search_tool.main([str(tiny_config), '--work-dir', str(tmp_path), '--budget', 'bitops=W3A3',
                             '--method', method, '--cfg-options', 'custom_hooks.0.total_steps=3'])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / 'policy.json').is_file()
    assert parse_count == ['bitops=W3A3']
