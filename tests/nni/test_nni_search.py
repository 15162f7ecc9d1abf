"""SSPS as an NNI strategy on a ResNet-20 space over real CIFAR-10 images."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("nni")

import ssps_nni.nni as sn  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.space import RawFormatModelSpace  # noqa: E402
from ssps_nni.cost import BitOpsCost, profile_layers  # noqa: E402
from ssps_nni.errors import BudgetError, NoQuantizableLayersError  # noqa: E402
from ssps_nni.models import resnet20  # noqa: E402

from ssps_nni.cell import QuantCellMixin  # noqa: E402

CANDIDATES = (2, 4, 8)


def resnet20_space():
    torch.manual_seed(0)
    return sn.quantization_space(resnet20(), candidates=CANDIDATES)


def test_nas_experiment_decides_every_label_within_budget(cifar, tmp_path, make_evaluator):
    space = resnet20_space()
    labels = set(space.simplify())
    profiler = sn.QuantizationProfiler(space, cifar["train"].tensors[0][:8])
    strategy = sn.SSPS(budget="bitops=W4A4", unit="step", interval=1)
    exp = NasExperiment(space, make_evaluator(cifar, root=tmp_path), strategy)
    exp.config.experiment_working_directory = str(tmp_path / "exp")
    try:
        exp.run()
        sample = exp.export_top_models(formatter="dict")[0]
        fixed = exp.export_top_models(formatter="instance")[0]
    finally:
        exp.stop()
    assert set(sample) == labels and all(v in CANDIDATES for v in sample.values())

    policy = strategy.policy()
    totals = policy.meta["totals"]["bitops"]
    assert policy.meta["num_decided"] == policy.meta["num_decisions"] == len(labels)
    assert totals["policy"] <= totals["target"] * (1 + 1e-9)
    assert {f"{n}.{s}_bits": b for n, (w, a) in policy.bits().items() if n in strategy.search.space.searched
            for s, b in (("w", w), ("a", a))} == sample
    assert profiler.profile(sample) == pytest.approx(totals["policy"], rel=1e-9)
    policy_file = strategy.save_policy(tmp_path / "policy.json")
    assert (tmp_path / "policy.json").exists() and policy_file.bits() == policy.bits()

    x = cifar["val"].tensors[0][:16]
    assert fixed(x).shape == (16, 10)
    cells = {n: m for n, m in fixed.model.named_modules() if isinstance(m, QuantCellMixin)}
    assert all(len(c.w_candidates) == 1 for c in cells.values())
    profiles = profile_layers(fixed, cells, lambda: fixed(x), len(x))
    cost = sum(BitOpsCost().layer_cost(profiles[n], c.w_candidates[0], c.a_candidates[0]) for n, c in cells.items())
    assert cost == pytest.approx(totals["policy"], rel=1e-9)


def test_random_one_shot_with_budget_filter_meets_budget(cifar, tmp_path, make_evaluator):
    from nni.nas.oneshot.pytorch.profiler import RangeProfilerFilter
    from nni.nas.strategy import RandomOneShot

    space = resnet20_space()
    profiler = sn.QuantizationProfiler(space, cifar["train"].tensors[0][:8])
    budget = profiler.profile({label: 4 for label in space.simplify()})
    seen = []

    class Recording(RangeProfilerFilter):
        def filter(self, sample):
            ok = super().filter(sample)
            if ok:
                seen.append(dict(sample))
            return ok

    strategy = RandomOneShot(filter=Recording(profiler, max=budget))
    strategy.initialize(RawFormatModelSpace(space, make_evaluator(cifar, max_epochs=1, root=tmp_path)),
                        SequentialExecutionEngine())
    strategy.run()
    assert len(seen) >= 4
    assert all(profiler.profile(s) <= budget for s in seen)


def test_unreachable_budget_fails_before_training(cifar, tmp_path, make_evaluator):
    space = resnet20_space()
    strategy = sn.SSPS(budget="bitops=1e3")
    with pytest.raises(BudgetError, match="unreachable.*Reachable range"):
        strategy.initialize(RawFormatModelSpace(space, make_evaluator(cifar, root=tmp_path)),
                            SequentialExecutionEngine())
    assert strategy.search.step == 0


def test_space_without_mixed_precision_ops_is_refused(cifar, tmp_path, make_evaluator):
    from nni.nas.nn.pytorch import ModelSpace

    class Plain(ModelSpace):
        def __init__(self):
            super().__init__()
            self.model = resnet20()

        def forward(self, x):
            return self.model(x)

    with pytest.raises(NoQuantizableLayersError, match="MixedPrecisionConv2d"):
        sn.SSPS().initialize(RawFormatModelSpace(Plain(), make_evaluator(cifar, root=tmp_path)),
                             SequentialExecutionEngine())


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="accepted"):
        sn.SSPS(budget="bitops=W4A4", no_such_option=1)
    with pytest.raises(ValueError, match="accepted forms"):
        sn.SSPS(budget="bitops")
