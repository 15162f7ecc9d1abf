"""The NNI strategy ends the fit right after the step of its last decision (docs/algorithm.md §6,
"Stopping"): the budget fill at that step, ``trainer.should_stop`` mid-epoch, a checkpoint of it."""
from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("nni")

import ssps_nni.nni as sn  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.space import RawFormatModelSpace  # noqa: E402
from ssps_nni.models import resnet20  # noqa: E402

from test_nni_guards import Batches  # noqa: E402


def test_a_decided_search_stops_the_fit_at_its_step(cifar, tmp_path, make_evaluator, caplog):
    """A 2-step search in a fit of 2 epochs x 4 batches: every decision is fixed at step 2 (the
    schedule requires all by then), so the fit ends after batch 2 of epoch 0, the policy filled."""
    torch.manual_seed(0)
    batches = Batches()
    space = sn.quantization_space(resnet20(), candidates=(2, 4, 8))
    strategy = sn.SSPS(budget="bitops=W4A4", unit="step", total=2, interval=1)
    batches.strategy = strategy
    evaluator = make_evaluator(cifar, max_epochs=2, root=tmp_path, limit_val_batches=1, callbacks=[batches])
    strategy.initialize(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # rank_zero_info's (not propagated)
    logger.addHandler(caplog.handler)
    try:
        strategy.run()
    finally:
        logger.removeHandler(caplog.handler)
    err = caplog.text
    assert batches.count == 2 and strategy.search.step == 2
    policy = strategy.policy()
    assert policy.final and policy.meta["fill"] is not None and policy.meta["step"] == 2
    assert "every decision made at step 2" in err and "6 of 8 planned steps not run" in err, err
    saved = [torch.load(p, map_location="cpu", weights_only=False) for p in tmp_path.rglob("*.ckpt")]
    assert saved and all(c["ssps_search"]["step"] == 2 and c["ssps_search"]["finished"] for c in saved)
