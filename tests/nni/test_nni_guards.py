"""SSPS as an NNI strategy when the run goes wrong or there is nothing to search
(docs/algorithm.md §6-§8): a NaN loss stops the search on its step, a search stopped early
leaves a non-final policy, one candidate per decision trains no step."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("nni")

import pytorch_lightning as pl  # noqa: E402
import ssps_nni.nni as sn  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.space import RawFormatModelSpace  # noqa: E402
from ssps_nni.errors import PolicyNotFinalError, SearchDivergedError  # noqa: E402
from ssps_nni.models import resnet20  # noqa: E402
from ssps_nni.policy import load_policy, require_final  # noqa: E402


class Batches(pl.Callback):
    """Counts training batches; puts a NaN into one layer's weight before batch ``poison_at``."""

    def __init__(self, strategy=None, poison_at: int | None = None, layer: str = "layer2.0.conv1"):
        self.strategy, self.poison_at, self.layer, self.count = strategy, poison_at, layer, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.poison_at is not None and batch_idx == self.poison_at:
            with torch.no_grad():
                self.strategy.search.space.cells[self.layer].weight[0, 0, 0, 0] = float("nan")
        self.count += 1


def _strategy(cifar, make_evaluator, root, candidates=(2, 4, 8), callback=None, max_epochs=1, **options):
    torch.manual_seed(0)
    space = sn.quantization_space(resnet20(), candidates=candidates)
    strategy = sn.SSPS(budget="bitops=W4A4", unit="step", interval=1, **options)
    if callback is not None:
        callback.strategy = callback.strategy or strategy
    evaluator = make_evaluator(cifar, max_epochs=max_epochs, root=root, limit_val_batches=1,
                               callbacks=[callback] if callback is not None else None)
    strategy.initialize(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())
    return strategy


def test_nan_loss_stops_the_search_on_its_step(cifar, tmp_path, make_evaluator):
    batches = Batches(poison_at=2)
    strategy = _strategy(cifar, make_evaluator, tmp_path, callback=batches)
    with pytest.raises(SearchDivergedError) as err:
        strategy.run()
    message = str(err.value)
    assert "diverged at step 3 of 4 (batch 2 of epoch 0): the training loss is nan" in message
    assert "the first layer whose output was not finite is layer2.0.conv1 (QuantConv2d)" in message
    assert strategy.search.step == 2 and not strategy.policy().final
    assert batches.count == 3  # stopped on that batch


def test_a_search_stopped_early_saves_a_non_final_policy(cifar, tmp_path, make_evaluator):
    strategy = _strategy(cifar, make_evaluator, tmp_path, total=8, threshold=None)  # fit ends at step 4 of 8
    strategy.run()
    with pytest.warns(UserWarning, match="is not final, the search is not finished"):
        saved = strategy.save_policy(tmp_path / "policy.json")
    policy = load_policy(tmp_path / "policy.json")
    assert not saved.final and not policy.final and policy.meta["open"]
    with pytest.raises(PolicyNotFinalError, match=r"decisions made at step 4 \(\d+ open\); bitops [\d.]+x its budget"):
        require_final(policy, "policy.json")


def test_one_candidate_per_decision_trains_no_step(cifar, tmp_path, make_evaluator):
    batches = Batches()
    strategy = _strategy(cifar, make_evaluator, tmp_path, candidates=(4,), callback=batches)
    strategy.run()
    assert batches.count == 0
    policy = strategy.policy()
    assert policy.final and policy.meta["settled"].startswith("every decision has one candidate")
    assert {b for n, b in policy.bits().items() if n in strategy.search.space.searched} == {(4, 4)}
    assert set(strategy.oneshot_module.export().values()) == {4}
