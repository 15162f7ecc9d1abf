"""Resume: a search interrupted after its first decision continues with the same decisions."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("nni")

import ssps_nni.nni as sn  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.space import RawFormatModelSpace  # noqa: E402
from ssps_nni.models import resnet20  # noqa: E402

CANDIDATES = (2, 4, 8)


def _run(cifar, make_evaluator, root, max_epochs, state=None):
    torch.manual_seed(0)
    space = sn.quantization_space(resnet20(), candidates=CANDIDATES)
    strategy = sn.SSPS(budget="bitops=W4A4", unit="epoch", total=3, interval=1, threshold=None, seed=3)
    evaluator = make_evaluator(cifar, max_epochs=max_epochs, root=root, limit_val_batches=1)
    strategy.initialize(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())
    if state is not None:
        strategy.load_state_dict(state)
    strategy.run()
    return strategy


@pytest.mark.slow
def test_resume_after_first_decision_makes_the_same_decisions(cifar, tmp_path, make_evaluator):
    full = _run(cifar, make_evaluator, tmp_path / "full", max_epochs=3)
    first = _run(cifar, make_evaluator, tmp_path / "first", max_epochs=1)
    decided_first = dict(first.search.decider.decided)
    assert 0 < len(decided_first) < first.search.space.num_decisions
    state = first.state_dict()
    assert state.get("ckpt_path")

    resumed = _run(cifar, make_evaluator, tmp_path / "resumed", max_epochs=3, state=state)
    expected = {k: (v["step"], v["bits"]) for k, v in full.search.decider.decided.items()}
    got = {k: (v["step"], v["bits"]) for k, v in resumed.search.decider.decided.items()}
    assert got == expected
    assert resumed.oneshot_module.export() == full.oneshot_module.export()
