"""``SSPSHook(score_calibration='measured')``: the running scores scaled per operand before the first step
(ssps_nni/calibrate_scores.py, docs/algorithm.md §10.2)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip('mmpretrain')

from ssps_nni.mmengine import SSPSHook  # noqa: E402
from test_hook import toy_runner  # noqa: E402


def hook_of(runner) -> SSPSHook:
    return next(h for h in runner.hooks if isinstance(h, SSPSHook))


def test_measured_calibration_scales_the_scores_and_is_checkpointed(tmp_path):
    runner = toy_runner(tmp_path, max_iters=4, score_calibration='measured', stop_when_done=False)
    runner.train()
    scores = hook_of(runner).search.scores
    assert scores.scale is not None
    for slot in ('w', 'a'):
        factors = scores.scale[slot]
        assert bool((factors > 0).all()) and bool((factors == factors[0]).all())  # one factor per operand
    state = torch.load(tmp_path / 'iter_4.pth', map_location='cpu')['ssps']  # weights_only default
    assert torch.equal(state['scores']['scale']['a'], scores.scale['a'])
    # the same search without the option has no scale
    plain = toy_runner(tmp_path / 'plain', max_iters=4, stop_when_done=False)
    plain.train()
    assert hook_of(plain).search.scores.scale is None


def test_resume_keeps_the_checkpoint_factors(tmp_path, monkeypatch):
    import ssps_nni.calibrate_scores as prior

    runner = toy_runner(tmp_path, max_iters=4, score_calibration='measured', stop_when_done=False)
    runner.train()
    saved = hook_of(runner).search.scores.scale

    def refuse(*args, **kwargs):
        raise AssertionError('a resumed search measured again')

    monkeypatch.setattr(prior, 'calibrate_scores', refuse)
    resumed = toy_runner(tmp_path, max_iters=8, score_calibration='measured', stop_when_done=False)
    resumed.cfg.resume = True
    resumed._resume = True
    resumed.train()
    scale = hook_of(resumed).search.scores.scale
    assert resumed.iter == 8  # trained on from the checkpoint (a finished search's step stays at its end)
    assert all(torch.equal(scale[s], saved[s]) for s in ('w', 'a'))


def test_adapted_calibration_takes_the_short_qat_increase(tmp_path, monkeypatch):
    """The hook's wiring of 'adapted': factors = increase after adaptation / predicted sum at the lowest bits.

    (The untrained toy model's loss falls when adapted, so the QAT itself is replaced by known
    increases here; tests/core/test_proxy.py checks ``adapted_increase`` against a QAT by hand.)
    """
    import ssps_nni.adapted as adapted
    import ssps_nni.sensitivity as sensitivity

    seen = {}
    real_scores = sensitivity.first_order_scores

    def scores(*args, **kwargs):
        seen['fisher'] = real_scores(*args, **kwargs)
        return seen['fisher']

    def fake(search, loss_fn, train_batches, eval_batches, steps=100, **kwargs):
        seen['steps'], seen['train'] = steps, len(train_batches)
        return {'w': 0.1, 'a': 0.3, 'bits': {'w': 2, 'a': 2}, 'base': 1.0, 'seconds': 0.0}

    monkeypatch.setattr(sensitivity, 'first_order_scores', scores)
    monkeypatch.setattr(adapted, 'adapted_increase', fake)
    runner = toy_runner(tmp_path, max_iters=3, score_calibration='adapted', stop_when_done=False)
    runner.train()
    scale = hook_of(runner).search.scores.scale
    assert seen['steps'] == 100 and seen['train'] == 8  # the toy set has 8 batches of 8
    for slot, increase in (('w', 0.1), ('a', 0.3)):
        expected = increase / float(seen['fisher']['squared'][slot][:, 0].sum())
        assert scale[slot].tolist() == pytest.approx([expected] * 3, rel=1e-9)
