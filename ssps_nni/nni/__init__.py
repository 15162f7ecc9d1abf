"""NNI driver of SSPS: mutable quantization ops, a model-space builder, the SSPS one-shot
strategy and a cost profiler NNI's filters and penalties accept.

    from nni.nas.experiment import NasExperiment
    from nni.nas.evaluator.pytorch import Classification
    from ssps_nni.nni import SSPS, quantization_space

    space = quantization_space(resnet20(), candidates=(2, 4, 8))
    exp = NasExperiment(space, Classification(train_dataloaders=..., val_dataloaders=...,
                                              max_epochs=2, num_classes=10),
                        SSPS(budget="bitops=W4A4"))
    exp.run()
    sample = exp.export_top_models(formatter="dict")[0]   # {'layer1.0.conv1.w_bits': 4, ...}
    exp.strategy.save_policy("policy.json")
"""
import nni.nas.strategy  # noqa: F401  (before nni.nas.oneshot.pytorch.strategy: otherwise NNI's built-in strategies become placeholders)

from .ops import (FixedQuantConv2d, FixedQuantLinear, MixedPrecisionConv2d, MixedPrecisionLinear,
                  bits_choices, fixed_op)
from .profiler import QuantizationProfiler
from .space import QuantizationSpace, quantization_space
from .strategy import SSPS, build_search_space
from .supermodule import QuantSuperNetModule

__all__ = [
    "SSPS", "QuantizationProfiler", "QuantizationSpace", "quantization_space", "QuantSuperNetModule",
    "MixedPrecisionConv2d", "MixedPrecisionLinear", "FixedQuantConv2d", "FixedQuantLinear",
    "bits_choices", "fixed_op", "build_search_space",
]
